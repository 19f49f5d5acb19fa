/*
 * rkllm_standin.c - a host-side stand-in for Rockchip's librkllmrt.so.
 *
 * It exports the C ABI of one runtime line (RKLLM_LINE 13 = 1.3.0,
 * 12 = 1.2.3) and produces scripted "generations" so that a binding can be
 * exercised on machines without an NPU.  Behaviour is configured by a small
 * text "model file" and by [[key=value]] directives inside prompts; every API
 * call can be appended as one JSON object per line to a record file.
 * See lib/README.md for the user-facing description.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "rkllm_standin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Layout checks against rkllm_abi_1_3.json / rkllm_abi_1_2.json            */
/* ------------------------------------------------------------------------ */

#define CHECK_SIZE(T, n) _Static_assert(sizeof(T) == (n), "sizeof " #T " != " #n)
#define CHECK_ALIGN(T, n) _Static_assert(_Alignof(T) == (n), "alignof " #T " != " #n)
#define CHECK_OFF(T, f, n) \
    _Static_assert(offsetof(T, f) == (n), "offsetof(" #T ", " #f ") != " #n)

/* Enums and scalar assumptions shared by both lines. */
_Static_assert(sizeof(LLMCallState) == 4, "LLMCallState must be 4 bytes");
_Static_assert(sizeof(RKLLMInputType) == 4, "RKLLMInputType must be 4 bytes");
_Static_assert(sizeof(RKLLMInferMode) == 4, "RKLLMInferMode must be 4 bytes");
_Static_assert(sizeof(bool) == 1, "bool must be 1 byte");
_Static_assert(sizeof(void *) == 8 && sizeof(size_t) == 8, "LP64 target required");
_Static_assert(RKLLM_RUN_NORMAL == 0 && RKLLM_RUN_WAITING == 1 &&
                   RKLLM_RUN_FINISH == 2 && RKLLM_RUN_ERROR == 3,
               "LLMCallState values");
_Static_assert(RKLLM_INPUT_PROMPT == 0 && RKLLM_INPUT_TOKEN == 1 &&
                   RKLLM_INPUT_EMBED == 2 && RKLLM_INPUT_MULTIMODAL == 3,
               "RKLLMInputType values");
_Static_assert(RKLLM_INFER_GENERATE == 0 && RKLLM_INFER_GET_LAST_HIDDEN_LAYER == 1 &&
                   RKLLM_INFER_GET_LOGITS == 2,
               "RKLLMInferMode values");
_Static_assert(CPU0 == 0x01 && CPU3 == 0x08 && CPU4 == 0x10 && CPU7 == 0x80, "CPU macros");

/* RKLLMExtendParam (identical in both lines) */
CHECK_SIZE(RKLLMExtendParam, 120);
CHECK_ALIGN(RKLLMExtendParam, 4);
CHECK_OFF(RKLLMExtendParam, base_domain_id, 0);
CHECK_OFF(RKLLMExtendParam, embed_flash, 4);
CHECK_OFF(RKLLMExtendParam, enabled_cpus_num, 5);
CHECK_OFF(RKLLMExtendParam, enabled_cpus_mask, 8);
CHECK_OFF(RKLLMExtendParam, n_batch, 12);
CHECK_OFF(RKLLMExtendParam, use_cross_attn, 13);
CHECK_OFF(RKLLMExtendParam, reserved, 14);

/* RKLLMParam: common head */
CHECK_ALIGN(RKLLMParam, 8);
CHECK_OFF(RKLLMParam, model_path, 0);
CHECK_OFF(RKLLMParam, max_context_len, 8);
CHECK_OFF(RKLLMParam, max_new_tokens, 12);
CHECK_OFF(RKLLMParam, top_k, 16);
CHECK_OFF(RKLLMParam, n_keep, 20);
CHECK_OFF(RKLLMParam, top_p, 24);
CHECK_OFF(RKLLMParam, temperature, 28);
CHECK_OFF(RKLLMParam, repeat_penalty, 32);
CHECK_OFF(RKLLMParam, frequency_penalty, 36);
CHECK_OFF(RKLLMParam, presence_penalty, 40);
CHECK_OFF(RKLLMParam, mirostat, 44);
CHECK_OFF(RKLLMParam, mirostat_tau, 48);
CHECK_OFF(RKLLMParam, mirostat_eta, 52);
CHECK_OFF(RKLLMParam, skip_special_token, 56);

CHECK_SIZE(RKLLMLoraAdapter, 24);
CHECK_OFF(RKLLMLoraAdapter, lora_adapter_path, 0);
CHECK_OFF(RKLLMLoraAdapter, lora_adapter_name, 8);
CHECK_OFF(RKLLMLoraAdapter, scale, 16);

CHECK_SIZE(RKLLMEmbedInput, 16);
CHECK_OFF(RKLLMEmbedInput, embed, 0);
CHECK_OFF(RKLLMEmbedInput, n_tokens, 8);

CHECK_SIZE(RKLLMTokenInput, 16);
CHECK_OFF(RKLLMTokenInput, input_ids, 0);
CHECK_OFF(RKLLMTokenInput, n_tokens, 8);

/* RKLLMInput: common head */
CHECK_ALIGN(RKLLMInput, 8);
CHECK_OFF(RKLLMInput, role, 0);
CHECK_OFF(RKLLMInput, enable_thinking, 8);
CHECK_OFF(RKLLMInput, input_type, 12);
CHECK_OFF(RKLLMInput, prompt_input, 16);
CHECK_OFF(RKLLMInput, embed_input, 16);
CHECK_OFF(RKLLMInput, token_input, 16);
CHECK_OFF(RKLLMInput, multimodal_input, 16);

CHECK_SIZE(RKLLMLoraParam, 8);
CHECK_OFF(RKLLMLoraParam, lora_adapter_name, 0);

CHECK_SIZE(RKLLMPromptCacheParam, 16);
CHECK_OFF(RKLLMPromptCacheParam, save_prompt_cache, 0);
CHECK_OFF(RKLLMPromptCacheParam, prompt_cache_path, 8);

CHECK_SIZE(RKLLMCrossAttnParam, 40);
CHECK_OFF(RKLLMCrossAttnParam, encoder_k_cache, 0);
CHECK_OFF(RKLLMCrossAttnParam, encoder_v_cache, 8);
CHECK_OFF(RKLLMCrossAttnParam, encoder_mask, 16);
CHECK_OFF(RKLLMCrossAttnParam, encoder_pos, 24);
CHECK_OFF(RKLLMCrossAttnParam, num_tokens, 32);

/* RKLLMInferParam: common head */
CHECK_ALIGN(RKLLMInferParam, 8);
CHECK_OFF(RKLLMInferParam, mode, 0);
CHECK_OFF(RKLLMInferParam, lora_params, 8);
CHECK_OFF(RKLLMInferParam, prompt_cache_params, 16);

CHECK_SIZE(RKLLMResultLastHiddenLayer, 16);
CHECK_OFF(RKLLMResultLastHiddenLayer, hidden_states, 0);
CHECK_OFF(RKLLMResultLastHiddenLayer, embd_size, 8);
CHECK_OFF(RKLLMResultLastHiddenLayer, num_tokens, 12);

CHECK_SIZE(RKLLMResultLogits, 16);
CHECK_OFF(RKLLMResultLogits, logits, 0);
CHECK_OFF(RKLLMResultLogits, vocab_size, 8);
CHECK_OFF(RKLLMResultLogits, num_tokens, 12);

CHECK_SIZE(RKLLMPerfStat, 20);
CHECK_ALIGN(RKLLMPerfStat, 4);
CHECK_OFF(RKLLMPerfStat, prefill_time_ms, 0);
CHECK_OFF(RKLLMPerfStat, prefill_tokens, 4);
CHECK_OFF(RKLLMPerfStat, generate_time_ms, 8);
CHECK_OFF(RKLLMPerfStat, generate_tokens, 12);
CHECK_OFF(RKLLMPerfStat, memory_usage_mb, 16);

CHECK_SIZE(RKLLMResult, 72);
CHECK_ALIGN(RKLLMResult, 8);
CHECK_OFF(RKLLMResult, text, 0);
CHECK_OFF(RKLLMResult, token_id, 8);
CHECK_OFF(RKLLMResult, last_hidden_layer, 16);
CHECK_OFF(RKLLMResult, logits, 32);
CHECK_OFF(RKLLMResult, perf, 48);

#if RKLLM_LINE >= 13
CHECK_SIZE(RKLLMParam, 184);
CHECK_OFF(RKLLMParam, ignore_eos_token, 57);
CHECK_OFF(RKLLMParam, is_async, 58);
CHECK_OFF(RKLLMParam, extend_param, 60);

CHECK_SIZE(RKLLMMultiModalInput, 144);
CHECK_ALIGN(RKLLMMultiModalInput, 8);
CHECK_OFF(RKLLMMultiModalInput, prompt, 0);
CHECK_OFF(RKLLMMultiModalInput, image, 8);
CHECK_OFF(RKLLMMultiModalInput, video, 72);
CHECK_SIZE(((RKLLMMultiModalInput *)0)->image, 64);
CHECK_OFF(RKLLMMultiModalInput, image.image_embed, 8 + 0);
CHECK_OFF(RKLLMMultiModalInput, image.n_image_tokens, 8 + 8);
CHECK_OFF(RKLLMMultiModalInput, image.n_image, 8 + 16);
CHECK_OFF(RKLLMMultiModalInput, image.image_start, 8 + 24);
CHECK_OFF(RKLLMMultiModalInput, image.image_end, 8 + 32);
CHECK_OFF(RKLLMMultiModalInput, image.image_content, 8 + 40);
CHECK_OFF(RKLLMMultiModalInput, image.image_width, 8 + 48);
CHECK_OFF(RKLLMMultiModalInput, image.image_height, 8 + 56);
CHECK_SIZE(((RKLLMMultiModalInput *)0)->video, 72);
CHECK_OFF(RKLLMMultiModalInput, video.video_embed, 72 + 0);
CHECK_OFF(RKLLMMultiModalInput, video.n_frame_tokens, 72 + 8);
CHECK_OFF(RKLLMMultiModalInput, video.n_frame_per_video, 72 + 16);
CHECK_OFF(RKLLMMultiModalInput, video.n_video, 72 + 24);
CHECK_OFF(RKLLMMultiModalInput, video.video_start, 72 + 32);
CHECK_OFF(RKLLMMultiModalInput, video.video_end, 72 + 40);
CHECK_OFF(RKLLMMultiModalInput, video.video_content, 72 + 48);
CHECK_OFF(RKLLMMultiModalInput, video.frame_width, 72 + 56);
CHECK_OFF(RKLLMMultiModalInput, video.frame_height, 72 + 64);

CHECK_SIZE(RKLLMInput, 160);

CHECK_SIZE(RKLLMSamplingParam, 36);
CHECK_ALIGN(RKLLMSamplingParam, 4);
CHECK_OFF(RKLLMSamplingParam, top_k, 0);
CHECK_OFF(RKLLMSamplingParam, top_p, 4);
CHECK_OFF(RKLLMSamplingParam, temperature, 8);
CHECK_OFF(RKLLMSamplingParam, repeat_penalty, 12);
CHECK_OFF(RKLLMSamplingParam, frequency_penalty, 16);
CHECK_OFF(RKLLMSamplingParam, presence_penalty, 20);
CHECK_OFF(RKLLMSamplingParam, mirostat, 24);
CHECK_OFF(RKLLMSamplingParam, mirostat_tau, 28);
CHECK_OFF(RKLLMSamplingParam, mirostat_eta, 32);

CHECK_SIZE(RKLLMInferParam, 40);
CHECK_OFF(RKLLMInferParam, sampling_params, 24);
CHECK_OFF(RKLLMInferParam, keep_history, 32);
CHECK_OFF(RKLLMInferParam, max_new_tokens, 36);

CHECK_SIZE(RKLLMCallback, 48);
CHECK_OFF(RKLLMCallback, result_callback, 0);
CHECK_OFF(RKLLMCallback, result_userdata, 8);
CHECK_OFF(RKLLMCallback, tokenizer_callback, 16);
CHECK_OFF(RKLLMCallback, tokenizer_userdata, 24);
CHECK_OFF(RKLLMCallback, embed_callback, 32);
CHECK_OFF(RKLLMCallback, embed_userdata, 40);
#else
CHECK_SIZE(RKLLMParam, 208);
CHECK_OFF(RKLLMParam, is_async, 57);
CHECK_OFF(RKLLMParam, img_start, 64);
CHECK_OFF(RKLLMParam, img_end, 72);
CHECK_OFF(RKLLMParam, img_content, 80);
CHECK_OFF(RKLLMParam, extend_param, 88);

CHECK_SIZE(RKLLMMultiModalInput, 48);
CHECK_OFF(RKLLMMultiModalInput, prompt, 0);
CHECK_OFF(RKLLMMultiModalInput, image_embed, 8);
CHECK_OFF(RKLLMMultiModalInput, n_image_tokens, 16);
CHECK_OFF(RKLLMMultiModalInput, n_image, 24);
CHECK_OFF(RKLLMMultiModalInput, image_width, 32);
CHECK_OFF(RKLLMMultiModalInput, image_height, 40);

CHECK_SIZE(RKLLMInput, 64);

CHECK_SIZE(RKLLMInferParam, 32);
CHECK_OFF(RKLLMInferParam, keep_history, 24);
#endif

/* ------------------------------------------------------------------------ */
/* Version text (scanned for in the .so bytes by the Python side)           */
/* ------------------------------------------------------------------------ */

#if RKLLM_LINE >= 13
#define STANDIN_VERSION "1.3.0"
#else
#define STANDIN_VERSION "1.2.3"
#endif

__attribute__((used)) static const char standin_version_tag[] =
    "rkllm-runtime version: " STANDIN_VERSION;
__attribute__((used)) static const char standin_version_suffix[] = " (rkstream stand-in)";

/* ------------------------------------------------------------------------ */
/* Small utilities                                                          */
/* ------------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("E rkllm: stand-in: out of memory\n", stderr);
        abort();
    }
    return q;
}

static char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *d = xrealloc(NULL, n + 1);
    memcpy(d, s, n + 1);
    return d;
}

static char *xstrndup(const char *s, size_t n)
{
    char *d = xrealloc(NULL, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Growable byte buffer, always NUL-terminated when non-empty. */
typedef struct {
    char *p;
    size_t n;
    size_t cap;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->n + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void sb_add(sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_putc(sbuf *b, char c) { sb_add(b, &c, 1); }

static void sb_clear(sbuf *b)
{
    b->n = 0;
    if (b->p)
        b->p[0] = '\0';
}

static void sb_free(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_add(b, tmp, (size_t)n);
        return;
    }
    sb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

/* Peak resident set size (VmHWM) in MB, 0 if unavailable. */
static float peak_memory_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0.0f;
    char line[256];
    float mb = 0.0f;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            long kb = strtol(line + 6, NULL, 10);
            if (kb > 0)
                mb = (float)kb / 1024.0f;
            break;
        }
    }
    fclose(f);
    return mb;
}

/* ------------------------------------------------------------------------ */
/* JSON record writer                                                       */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t record_lock = PTHREAD_MUTEX_INITIALIZER;

static void js_strn(sbuf *b, const char *s, size_t n)
{
    sb_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            sb_puts(b, "\\\"");
        } else if (c == '\\') {
            sb_puts(b, "\\\\");
        } else if (c < 0x20 || c == 0x7f) {
            sb_printf(b, "\\u%04x", c);
        } else {
            sb_putc(b, (char)c);
        }
    }
    sb_putc(b, '"');
}

static void js_str(sbuf *b, const char *s)
{
    if (!s)
        sb_puts(b, "null");
    else
        js_strn(b, s, strlen(s));
}

/* Locale-proof number formatting; non-finite values become null. */
static void js_num(sbuf *b, double v, int precision)
{
    if (!isfinite(v)) {
        sb_puts(b, "null");
        return;
    }
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.*g", precision, v);
    for (char *c = tmp; *c; c++)
        if (*c == ',')
            *c = '.';
    sb_puts(b, tmp);
}

static void jk(sbuf *b, const char *key)
{
    sb_putc(b, ',');
    js_str(b, key);
    sb_putc(b, ':');
}

static void jk_str(sbuf *b, const char *key, const char *s)
{
    jk(b, key);
    js_str(b, s);
}

static void jk_int(sbuf *b, const char *key, long long v)
{
    jk(b, key);
    sb_printf(b, "%lld", v);
}

static void jk_uint(sbuf *b, const char *key, unsigned long long v)
{
    jk(b, key);
    sb_printf(b, "%llu", v);
}

static void jk_f(sbuf *b, const char *key, double v)
{
    jk(b, key);
    js_num(b, v, 6);
}

static void jk_bool(sbuf *b, const char *key, int v)
{
    jk(b, key);
    sb_puts(b, v ? "true" : "false");
}

static void rec_begin(sbuf *b, const char *call, const void *handle)
{
    sb_clear(b);
    sb_puts(b, "{\"call\":");
    js_str(b, call);
    jk_uint(b, "handle", (unsigned long long)(uintptr_t)handle);
    jk_int(b, "tid", (long long)gettid());
    jk_uint(b, "t_ns", (unsigned long long)now_ns());
}

/* Close the object and append it as one line; frees nothing. */
static void rec_commit(sbuf *b, const char *path)
{
    sb_puts(b, "}\n");
    if (!path || !*path)
        return;
    pthread_mutex_lock(&record_lock);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        static int warned;
        if (!warned) {
            fprintf(stderr, "W rkllm: stand-in: cannot open record file %s: %s\n", path,
                    strerror(errno));
            warned = 1;
        }
    } else {
        size_t off = 0;
        while (off < b->n) {
            ssize_t w = write(fd, b->p + off, b->n - off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            off += (size_t)w;
        }
        close(fd);
    }
    pthread_mutex_unlock(&record_lock);
}

/* ------------------------------------------------------------------------ */
/* Behaviour configuration (model file keys and prompt directives)          */
/* ------------------------------------------------------------------------ */

enum { WAIT_CONTINUE = 0, WAIT_REPEAT = 1, WAIT_NONE = 2 };
enum { REPLY_ECHO = 0, REPLY_CONTEXT = 1 };

typedef struct {
    char *reply; /* NULL or "" = echo the prompt */
    long n_tokens;
    long token_bytes;
    long waiting;
    long token_delay_us;
    long prefill_delay_us;
    long prefill_us_per_byte;
    long stamp;
    long fail_init;
    long init_delay_us;
    long fail_run;
    long error_after;
    long finish_on_abort;
    long embed_width;
    long hidden_size;   /* embd_size of RKLLM_INFER_GET_LAST_HIDDEN_LAYER */
    long caller_thread; /* callback_thread: 0 native, 1 caller */
    long reply_mode;    /* REPLY_ECHO or REPLY_CONTEXT */
    long auto_prefix_reuse;
    long kv_keeps_end_of_turn;
    char *end_of_turn;  /* NULL or text appended to the KV after an eos */
    char *record;
    long crash_after;   /* >= 0: SIGSEGV after this many tokens */
    long hang_after;    /* >= 0: hang after this many tokens */
    char *hang_release_file; /* a hang ends once this file exists */
    char *fault_file;   /* control file read at each run start (model file only) */
} sconf;

static void conf_defaults(sconf *c)
{
    memset(c, 0, sizeof *c);
    c->error_after = -1;
    c->finish_on_abort = 1;
    c->embed_width = 16;
    c->hidden_size = 64;
    c->auto_prefix_reuse = 1;
    c->crash_after = -1;
    c->hang_after = -1;
}

static void conf_free(sconf *c)
{
    free(c->reply);
    free(c->end_of_turn);
    free(c->record);
    free(c->hang_release_file);
    free(c->fault_file);
    c->reply = c->end_of_turn = c->record = NULL;
    c->hang_release_file = c->fault_file = NULL;
}

/* K_STR: a char * member taken as given (no escapes), e.g. a path */
enum { K_TEXT, K_STR, K_INT, K_BOOL, K_WAITING, K_PATH, K_THREAD, K_REPLY_MODE };

typedef struct {
    const char *name;
    int kind;
    size_t off;     /* offset of a char * member (K_TEXT) or of a long member */
    long min;       /* smallest accepted value for K_INT */
    int file_only;  /* not accepted as a prompt directive */
} keydef;

#define LONG_KEY(nm, kind, min, fo) {#nm, kind, offsetof(sconf, nm), min, fo}

static const keydef conf_keys[] = {
    {"reply", K_TEXT, offsetof(sconf, reply), 0, 0},
    LONG_KEY(n_tokens, K_INT, LONG_MIN, 0),
    LONG_KEY(token_bytes, K_INT, 0, 0),
    LONG_KEY(waiting, K_WAITING, 0, 0),
    LONG_KEY(token_delay_us, K_INT, 0, 0),
    LONG_KEY(prefill_delay_us, K_INT, 0, 0),
    LONG_KEY(prefill_us_per_byte, K_INT, 0, 0),
    LONG_KEY(stamp, K_BOOL, 0, 0),
    LONG_KEY(fail_init, K_BOOL, 0, 1),
    LONG_KEY(init_delay_us, K_INT, 0, 1),
    LONG_KEY(fail_run, K_BOOL, 0, 0),
    LONG_KEY(error_after, K_INT, LONG_MIN, 0),
    LONG_KEY(finish_on_abort, K_BOOL, 0, 0),
    LONG_KEY(embed_width, K_INT, 0, 0),
    LONG_KEY(hidden_size, K_INT, 1, 0),
    {"reply_mode", K_REPLY_MODE, offsetof(sconf, reply_mode), 0, 0},
    LONG_KEY(auto_prefix_reuse, K_BOOL, 0, 0),
    {"end_of_turn", K_TEXT, offsetof(sconf, end_of_turn), 0, 0},
    LONG_KEY(kv_keeps_end_of_turn, K_BOOL, 0, 0),
    {"record", K_PATH, 0, 0, 1},
    {"callback_thread", K_THREAD, offsetof(sconf, caller_thread), 0, 1},
    LONG_KEY(crash_after, K_INT, LONG_MIN, 0),
    LONG_KEY(hang_after, K_INT, LONG_MIN, 0),
    {"hang_release_file", K_STR, offsetof(sconf, hang_release_file), 0, 0},
    {"fault_file", K_STR, offsetof(sconf, fault_file), 0, 1},
};

/* Decode the reply escapes: \n newline, \t tab, \r CR, \\ backslash. */
static char *unescape(const char *s, size_t n)
{
    char *out = xrealloc(NULL, n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char e = s[i + 1];
            char r = 0;
            if (e == 'n')
                r = '\n';
            else if (e == 't')
                r = '\t';
            else if (e == 'r')
                r = '\r';
            else if (e == '\\')
                r = '\\';
            if (r) {
                out[o++] = r;
                i++;
                continue;
            }
        }
        out[o++] = s[i];
    }
    out[o] = '\0';
    return out;
}

static int parse_long(const char *s, long *out)
{
    while (is_ws((unsigned char)*s))
        s++;
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s)
        return -1;
    while (is_ws((unsigned char)*end))
        end++;
    if (*end)
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, long *out)
{
    if (!strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(s, "0") || !strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")) {
        *out = 0;
        return 0;
    }
    return -1;
}

enum { SET_OK = 0, SET_UNKNOWN = 1, SET_BAD_VALUE = 2, SET_NOT_HERE = 3 };

/* Apply key=value (value is NUL-terminated, key has length klen). */
static int conf_set(sconf *c, const char *key, size_t klen, const char *value, int from_prompt)
{
    const keydef *kd = NULL;
    for (size_t i = 0; i < sizeof conf_keys / sizeof conf_keys[0]; i++) {
        if (strlen(conf_keys[i].name) == klen && !memcmp(conf_keys[i].name, key, klen)) {
            kd = &conf_keys[i];
            break;
        }
    }
    if (!kd)
        return SET_UNKNOWN;
    if (from_prompt && kd->file_only)
        return SET_NOT_HERE;

    long v = 0;
    long *slot = (long *)((char *)c + kd->off);
    switch (kd->kind) {
    case K_TEXT: {
        char **text = (char **)((char *)c + kd->off);
        free(*text);
        *text = unescape(value, strlen(value));
        return SET_OK;
    }
    case K_STR: {
        char **text = (char **)((char *)c + kd->off);
        free(*text);
        *text = xstrdup(value);
        return SET_OK;
    }
    case K_PATH:
        free(c->record);
        c->record = xstrdup(value);
        return SET_OK;
    case K_INT:
        if (parse_long(value, &v) || v < kd->min)
            return SET_BAD_VALUE;
        *slot = v;
        return SET_OK;
    case K_BOOL:
        if (parse_bool(value, &v))
            return SET_BAD_VALUE;
        *slot = v;
        return SET_OK;
    case K_WAITING:
        if (!strcmp(value, "continue"))
            *slot = WAIT_CONTINUE;
        else if (!strcmp(value, "repeat"))
            *slot = WAIT_REPEAT;
        else if (!strcmp(value, "none"))
            *slot = WAIT_NONE;
        else
            return SET_BAD_VALUE;
        return SET_OK;
    case K_REPLY_MODE:
        if (!strcmp(value, "echo"))
            *slot = REPLY_ECHO;
        else if (!strcmp(value, "context"))
            *slot = REPLY_CONTEXT;
        else
            return SET_BAD_VALUE;
        return SET_OK;
    case K_THREAD:
        if (!strcmp(value, "native"))
            *slot = 0;
        else if (!strcmp(value, "caller"))
            *slot = 1;
        else
            return SET_BAD_VALUE;
        return SET_OK;
    }
    return SET_BAD_VALUE;
}

static void warn_set(int rc, const char *where, const char *key, size_t klen, const char *value)
{
    if (rc == SET_UNKNOWN)
        fprintf(stderr, "W rkllm: stand-in: %s: unknown key '%.*s' ignored\n", where, (int)klen,
                key);
    else if (rc == SET_NOT_HERE)
        fprintf(stderr, "W rkllm: stand-in: %s: key '%.*s' is only valid in the model file\n",
                where, (int)klen, key);
    else if (rc == SET_BAD_VALUE)
        fprintf(stderr, "W rkllm: stand-in: %s: bad value '%s' for key '%.*s' ignored\n", where,
                value, (int)klen, key);
}

static const char standin_magic_line[] = "#rkstream-standin";

/*
 * Open and interpret the model file.  Returns 0 on success, -1 on failure
 * (message already printed).  Files that are not stand-in descriptions are
 * accepted and give the defaults.
 */
static int load_model_file(const char *path, sconf *c)
{
    if (!path) {
        fprintf(stderr, "E rkllm: failed to open model file (null)\n");
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "E rkllm: failed to open model file %s\n", path);
        return -1;
    }
    char head[64];
    size_t got = fread(head, 1, sizeof head, f);
    if (ferror(f)) {
        fclose(f);
        fprintf(stderr, "E rkllm: failed to open model file %s\n", path);
        return -1;
    }
    if (got >= 4 && !memcmp(head, "RKNN", 4)) {
        fclose(f);
        fprintf(stderr, "E rkllm: invalid rkllm model!\n");
        return -1;
    }
    size_t ml = sizeof standin_magic_line - 1;
    int is_standin = got >= ml && !memcmp(head, standin_magic_line, ml);
    if (is_standin) {
        /* the magic must be the whole first line (trailing blanks allowed) */
        for (size_t i = ml; i < got && head[i] != '\n'; i++)
            if (!is_ws((unsigned char)head[i]))
                is_standin = 0;
    }
    if (!is_standin) {
        fclose(f);
        return 0;
    }

    sbuf text = {0};
    sb_add(&text, head, got);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_add(&text, chunk, n);
    fclose(f);

    char *line = text.p;
    int lineno = 0;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        lineno++;
        if (lineno > 1) {
            char *s = line;
            while (is_ws((unsigned char)*s))
                s++;
            char *e = s + strlen(s);
            while (e > s && is_ws((unsigned char)e[-1]))
                *--e = '\0';
            if (*s && *s != '#') {
                char *eq = strchr(s, '=');
                char where[64];
                snprintf(where, sizeof where, "model file line %d", lineno);
                if (!eq) {
                    fprintf(stderr, "W rkllm: stand-in: %s: expected 'key = value', ignored\n",
                            where);
                } else {
                    char *ke = eq;
                    while (ke > s && is_ws((unsigned char)ke[-1]))
                        ke--;
                    char *v = eq + 1;
                    while (is_ws((unsigned char)*v))
                        v++;
                    size_t vl = strlen(v);
                    if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
                        v[vl - 1] = '\0'; /* "quoted" keeps edge blanks */
                        v++;
                    }
                    int rc = conf_set(c, s, (size_t)(ke - s), v, 0);
                    warn_set(rc, where, s, (size_t)(ke - s), v);
                }
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    sb_free(&text);
    return 0;
}

/*
 * Remove [[key=value]] directives from a prompt, applying them to c.
 * A directive needs an identifier key, '=' and a closing "]]"; anything
 * else is left in the text untouched.  Returns the remaining text.
 */
static char *apply_directives(const char *prompt, sconf *c)
{
    sbuf out = {0};
    sb_add(&out, "", 0);
    if (!prompt)
        return out.p;
    size_t i = 0;
    while (prompt[i]) {
        if (prompt[i] == '[' && prompt[i + 1] == '[') {
            size_t k = i + 2, j = k;
            unsigned char ch = (unsigned char)prompt[j];
            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_') {
                for (;;) {
                    ch = (unsigned char)prompt[j];
                    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                        (ch >= '0' && ch <= '9') || ch == '_')
                        j++;
                    else
                        break;
                }
                if (prompt[j] == '=') {
                    const char *close = strstr(prompt + j + 1, "]]");
                    if (close) {
                        char *value = xstrndup(prompt + j + 1, (size_t)(close - (prompt + j + 1)));
                        int rc = conf_set(c, prompt + k, j - k, value, 1);
                        warn_set(rc, "prompt directive", prompt + k, j - k, value);
                        free(value);
                        i = (size_t)(close - prompt) + 2;
                        continue;
                    }
                }
            }
        }
        sb_putc(&out, prompt[i]);
        i++;
    }
    return out.p;
}

/* Collapse whitespace runs to one space and trim both ends. */
static void collapse_ws(sbuf *out, const char *s)
{
    int pending_space = 0;
    int any = 0;
    for (; *s; s++) {
        if (is_ws((unsigned char)*s)) {
            pending_space = any;
            continue;
        }
        if (pending_space)
            sb_putc(out, ' ');
        pending_space = 0;
        sb_putc(out, *s);
        any = 1;
    }
}

/* ------------------------------------------------------------------------ */
/* Tokenising and UTF-8                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    size_t off;
    size_t len;
} span;

/*
 * Word tokens: a maximal run of non-blank bytes plus the blanks after it;
 * blanks at the very start belong to the first token.  With chunk > 0 the
 * text is cut every `chunk` bytes instead.
 */
static span *tokenize(const char *s, size_t n, long chunk, size_t *count)
{
    span *v = NULL;
    size_t cnt = 0, cap = 0;
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        if (chunk > 0) {
            i = (n - i > (size_t)chunk) ? i + (size_t)chunk : n;
        } else {
            while (i < n && is_ws((unsigned char)s[i]))
                i++;
            while (i < n && !is_ws((unsigned char)s[i]))
                i++;
            while (i < n && is_ws((unsigned char)s[i]))
                i++;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            v = xrealloc(v, cap * sizeof *v);
        }
        v[cnt].off = start;
        v[cnt].len = i - start;
        cnt++;
    }
    *count = cnt;
    return v;
}

/* 1 if the bytes end in the middle of a (well-formed so far) UTF-8 character. */
static int utf8_cut_at_end(const unsigned char *b, size_t n)
{
    if (n == 0)
        return 0;
    size_t j = n - 1;
    size_t back = 0;
    while ((b[j] & 0xC0) == 0x80) {
        if (j == 0 || back == 3)
            return 0; /* stray continuation bytes: invalid, not incomplete */
        j--;
        back++;
    }
    unsigned char lead = b[j];
    size_t need;
    if (lead < 0x80)
        need = 1;
    else if ((lead & 0xE0) == 0xC0)
        need = 2;
    else if ((lead & 0xF0) == 0xE0)
        need = 3;
    else if ((lead & 0xF8) == 0xF0)
        need = 4;
    else
        need = 1; /* invalid lead byte: deliver as is */
    return n - j < need;
}

/* ------------------------------------------------------------------------ */
/* The KV cache model                                                       */
/* ------------------------------------------------------------------------ */

/*
 * A KV cache is modelled as the bytes it holds, in order, with one class
 * byte per text byte: KV_START where a token begins, KV_TEMPLATE for bytes
 * the runtime's own chat template added (they hold no tokens).  Image and
 * video tokens have no bytes; each `media` entry puts its tokens just before
 * the byte at `off`.  The same structure holds a run's effective input and
 * its generated text before they join the cache.
 */
#define KV_START 0x01
#define KV_TEMPLATE 0x02

typedef struct {
    size_t off;
    long tokens;
} kv_media;

typedef struct {
    sbuf text;
    sbuf cls;
    kv_media *media;
    size_t n_media, cap_media;
} kvbuf;

/* What kind of bytes kv_add appends. */
enum {
    SEG_WORDS,    /* caller text: a token starts at the first byte of every word */
    SEG_TEMPLATE, /* template text: no tokens */
    SEG_TOKEN     /* one token (generated): it starts at the first byte */
};

/* The built-in chat template in force until rkllm_set_chat_template. */
static const char default_prefix[] = "<|im_start|>user\n";
static const char default_postfix[] = "<|im_end|>\n<|im_start|>assistant\n";

static uint64_t fnv1a64(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void kv_free(kvbuf *k)
{
    sb_free(&k->text);
    sb_free(&k->cls);
    free(k->media);
    k->media = NULL;
    k->n_media = k->cap_media = 0;
}

/* Words are judged within the appended bytes alone, so the token count of
 * a cache is the sum of what went into it. */
static void kv_add(kvbuf *k, const char *s, size_t n, int seg)
{
    sb_add(&k->text, s, n);
    sb_reserve(&k->cls, n);
    for (size_t i = 0; i < n; i++) {
        char f = 0;
        if (seg == SEG_TEMPLATE)
            f = KV_TEMPLATE;
        else if (seg == SEG_TOKEN)
            f = i == 0 ? KV_START : 0;
        else if (!is_ws((unsigned char)s[i]) && (i == 0 || is_ws((unsigned char)s[i - 1])))
            f = KV_START;
        k->cls.p[k->cls.n++] = f;
    }
    k->cls.p[k->cls.n] = '\0';
}

static void kv_add_media(kvbuf *k, size_t off, long tokens)
{
    if (tokens <= 0)
        return;
    if (k->n_media == k->cap_media) {
        k->cap_media = k->cap_media ? k->cap_media * 2 : 4;
        k->media = xrealloc(k->media, k->cap_media * sizeof *k->media);
    }
    k->media[k->n_media].off = off;
    k->media[k->n_media].tokens = tokens;
    k->n_media++;
}

/* Keep the first `len` bytes; media at or after `len` goes too. */
static void kv_truncate(kvbuf *k, size_t len)
{
    if (len < k->text.n) {
        k->text.n = len;
        k->cls.n = len;
        k->text.p[len] = '\0';
        k->cls.p[len] = '\0';
    }
    size_t o = 0;
    for (size_t i = 0; i < k->n_media; i++)
        if (k->media[i].off < len)
            k->media[o++] = k->media[i];
    k->n_media = o;
}

/* Remove the bytes [from, to) and the media attached inside them. */
static void kv_remove(kvbuf *k, size_t from, size_t to)
{
    if (to > k->text.n)
        to = k->text.n;
    if (from >= to)
        return;
    size_t tail = k->text.n - to;
    memmove(k->text.p + from, k->text.p + to, tail + 1); /* with the NUL */
    memmove(k->cls.p + from, k->cls.p + to, tail + 1);
    k->text.n -= to - from;
    k->cls.n -= to - from;
    size_t o = 0;
    for (size_t i = 0; i < k->n_media; i++) {
        kv_media m = k->media[i];
        if (m.off >= from && m.off < to)
            continue;
        if (m.off >= to)
            m.off -= to - from;
        k->media[o++] = m;
    }
    k->n_media = o;
}

/* Append src from byte `from` on (with its media from there on). */
static void kv_append(kvbuf *dst, const kvbuf *src, size_t from)
{
    size_t base = dst->text.n;
    if (from > src->text.n)
        from = src->text.n;
    sb_add(&dst->text, src->text.p ? src->text.p + from : "", src->text.n - from);
    sb_add(&dst->cls, src->cls.p ? src->cls.p + from : "", src->cls.n - from);
    for (size_t i = 0; i < src->n_media; i++)
        if (src->media[i].off >= from)
            kv_add_media(dst, base + src->media[i].off - from, src->media[i].tokens);
}

static long kv_starts(const kvbuf *k, size_t from, size_t to)
{
    long n = 0;
    for (size_t i = from; i < to && i < k->cls.n; i++)
        if (k->cls.p[i] & KV_START)
            n++;
    return n;
}

static long kv_media_tokens(const kvbuf *k)
{
    long n = 0;
    for (size_t i = 0; i < k->n_media; i++)
        n += k->media[i].tokens;
    return n;
}

static long kv_tokens(const kvbuf *k)
{
    return kv_starts(k, 0, k->cls.n) + kv_media_tokens(k);
}

/* Byte offset at which token position `pos` begins (the length if past the end). */
static size_t kv_pos_to_byte(const kvbuf *k, long pos)
{
    long count = 0;
    if (pos <= 0)
        return 0;
    for (size_t i = 0; i <= k->text.n; i++) {
        for (size_t m = 0; m < k->n_media; m++) {
            if (k->media[m].off != i)
                continue;
            if (pos < count + k->media[m].tokens)
                return i;
            count += k->media[m].tokens;
        }
        if (i < k->text.n && (k->cls.p[i] & KV_START)) {
            if (count == pos)
                return i;
            count++;
        }
    }
    return k->text.n;
}

/*
 * How many leading bytes of `kv` a keep_history == 0 run on `eff` reuses:
 * the longest common prefix (bytes and template class equal), but never
 * the start of the input's last token (a run computes at least that) and
 * never past an image or video position of either side.
 */
static size_t kv_reuse_point(const kvbuf *kv, const kvbuf *eff)
{
    size_t n = kv->text.n < eff->text.n ? kv->text.n : eff->text.n;
    size_t l = 0;
    while (l < n && kv->text.p[l] == eff->text.p[l] &&
           !((kv->cls.p[l] ^ eff->cls.p[l]) & KV_TEMPLATE))
        l++;
    size_t last = eff->text.n ? eff->text.n - 1 : 0;
    for (size_t i = eff->text.n; i-- > 0;) {
        if (eff->cls.p[i] & KV_START) {
            last = i;
            break;
        }
    }
    if (l > last)
        l = last;
    for (size_t i = 0; i < kv->n_media; i++)
        if (kv->media[i].off < l)
            l = kv->media[i].off;
    for (size_t i = 0; i < eff->n_media; i++)
        if (eff->media[i].off < l)
            l = eff->media[i].off;
    return l;
}

/*
 * Prompt cache files: the stand-in's own format, so a saved prefix can be
 * loaded again with the token classes it was prefilled with.
 *
 *     #rkllm-standin-prompt-cache 1\n
 *     <bytes> <tokens>\n
 *     <bytes text bytes><bytes class bytes (bit 0: a token starts, bit 1: template text)>
 */
static const char pc_magic[] = "#rkllm-standin-prompt-cache 1\n";
static const char pc_default_path[] = "./prompt_cache.bin";

/* Write `k` to `path` through a temporary file and a rename, so a reader (or
 * another process saving the same file) never sees half a file. */
static int pc_write(const char *path, const kvbuf *k)
{
    static atomic_uint seq;
    sbuf tmp = {0};
    sb_printf(&tmp, "%s.%ld.%u.tmp", path, (long)getpid(), atomic_fetch_add(&seq, 1u));
    int err = 0;
    FILE *f = fopen(tmp.p, "wb");
    if (!f) {
        err = errno;
    } else {
        int ok = fputs(pc_magic, f) >= 0 &&
                 fprintf(f, "%zu %ld\n", k->text.n, kv_tokens(k)) > 0 &&
                 fwrite(k->text.p ? k->text.p : "", 1, k->text.n, f) == k->text.n &&
                 fwrite(k->cls.p ? k->cls.p : "", 1, k->cls.n, f) == k->cls.n;
        if (!ok)
            err = errno ? errno : EIO;
        if (fclose(f) != 0 && !err)
            err = errno ? errno : EIO;
        if (!err && rename(tmp.p, path) != 0)
            err = errno;
        if (err)
            unlink(tmp.p);
    }
    if (err)
        fprintf(stderr, "E rkllm: cannot save the prompt cache to %s: %s\n", path,
                strerror(err));
    sb_free(&tmp);
    return err ? -1 : 0;
}

/* Read a prompt cache file into `out` (empty on entry).  -1 with a message
 * on stderr for a missing or malformed file. */
static int pc_read(const char *path, kvbuf *out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "E rkllm: cannot open prompt cache %s: %s\n", path, strerror(errno));
        return -1;
    }
    sbuf data = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_add(&data, chunk, n);
    int read_error = ferror(f);
    fclose(f);

    const char *why = NULL;
    const size_t magic_n = sizeof pc_magic - 1;
    unsigned long long nbytes = 0;
    long long ntok = -1;
    const char *body = NULL;
    if (read_error) {
        why = "read error";
    } else if (data.n < magic_n || memcmp(data.p, pc_magic, magic_n) != 0) {
        why = "not a prompt cache file of this runtime";
    } else {
        const char *line = data.p + magic_n;
        const char *nl = memchr(line, '\n', data.n - magic_n);
        char end = 0;
        if (!nl || line[0] < '0' || line[0] > '9' ||
            sscanf(line, "%llu %lld%c", &nbytes, &ntok, &end) != 3 || end != '\n' || ntok < 0) {
            why = "bad size line";
        } else {
            body = nl + 1;
            size_t rest = data.n - (size_t)(body - data.p);
            if (nbytes > rest / 2 || rest != 2 * nbytes)
                why = "its length does not match its size line";
        }
    }
    if (!why) {
        const unsigned char *cls = (const unsigned char *)body + nbytes;
        for (size_t i = 0; i < nbytes && !why; i++)
            if (cls[i] & ~(unsigned)(KV_START | KV_TEMPLATE))
                why = "bad class byte";
    }
    if (!why) {
        sb_add(&out->text, body, (size_t)nbytes);
        sb_add(&out->cls, body + nbytes, (size_t)nbytes);
        if (kv_tokens(out) != ntok) {
            why = "its token count does not match its bytes";
            kv_free(out);
        }
    }
    sb_free(&data);
    if (why) {
        fprintf(stderr, "E rkllm: invalid prompt cache %s: %s\n", path, why);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Handles and runs                                                         */
/* ------------------------------------------------------------------------ */

#define HANDLE_MAGIC 0x524b5354u /* "RKST" */

typedef struct standin_handle {
    uint32_t magic;
    pthread_mutex_t mu;
    pthread_cond_t idle_cv;
    pthread_mutex_t sleep_mu;  /* with abort_cv: sleeps that an abort cuts short */
    pthread_cond_t abort_cv;
    atomic_int abort_flag;
    atomic_int active; /* number of runs in progress */
    atomic_int hanging;    /* runs inside an injected hang (abort is ignored) */
    atomic_int destroying; /* rkllm_destroy is waiting: injected hangs end */
    kvbuf kv;          /* what the KV cache holds (guarded by mu) */
    size_t kv_sys;     /* leading bytes of kv that are the template's system prompt */
    kvbuf pc;          /* the loaded prompt cache (guarded by mu) */
    int pc_loaded;
    int tpl_set;       /* rkllm_set_chat_template has been called */
    char *tpl_system, *tpl_prefix, *tpl_postfix;
    sconf base;
    char *record;      /* resolved record path, NULL = none */
    char *fault_file;  /* resolved fault control file, NULL = none */
    LLMResultCallback cb;
    void *cb_userdata; /* 1.3: RKLLMCallback.result_userdata */
    int32_t max_new_tokens;
    int n_batch;
    int ignore_eos;
    char *img_start, *img_end, *img_content; /* 1.2: copied from RKLLMParam */
} standin_handle;

/* Handle whose callback is running on this thread (to refuse destroy). */
static _Thread_local standin_handle *tl_in_callback;

static standin_handle *get_handle(LLMHandle hnd)
{
    standin_handle *h = (standin_handle *)hnd;
    if (!h || h->magic != HANDLE_MAGIC)
        return NULL;
    return h;
}

typedef struct {
    standin_handle *h;
    sconf cf;           /* effective settings for this run (cf.reply owned) */
    char *reply;        /* bytes to generate */
    size_t reply_len;
    long prefill_tokens;/* tokens of the bytes (and media) actually prefilled */
    unsigned long long prompt_bytes; /* bytes actually prefilled */
    int kv_applied;     /* the input went into the KV cache; generated text follows it */
    int prefilled;      /* the prefill ended without an abort */
    char *pc_save_path; /* save_prompt_cache: where the effective input goes, else NULL */
    kvbuf pc_save;      /* that input (bytes before any image) */
    long long pc_saved; /* bytes written, -1 on failure */
    kvbuf gen;          /* generated bytes, one SEG_TOKEN per token */
    long limit;         /* <= 0: unlimited */
    int keep_history;
    int ignore_eos;
    int invalid;
    int is_async;
    LLMResultCallback cb;
    void *userdata;
    /* injected fault, armed when the run starts */
    int fault;          /* FAULT_NONE, FAULT_CRASH or FAULT_HANG */
    long fault_after;   /* tokens before it fires */
    int fault_from_file;/* armed by the fault control file */
    int fault_fired;
    /* outcome */
    int ret;
    const char *finish;
    long generated;
    /* RKLLM_INFER_GET_LAST_HIDDEN_LAYER */
    int hidden;          /* the run returns hidden states, it generates nothing */
    char *hidden_text;   /* the prompt, directives removed: its words are the tokens */
    long hidden_tokens;  /* num_tokens of the callback (-1: no hidden callback made) */
    int hidden_rv;       /* what the callback returned */
    int hidden_released; /* the buffer was freed as the callback returned (1.3, rv 2) */
} run_job;

/* Sleep up to `us` microseconds on a condition variable that rkllm_abort
 * signals, so an abort ends the sleep at once without busy waking.
 * Returns 1 when interrupted by an abort. */
static int sleep_abortable(standin_handle *h, unsigned long long us)
{
    uint64_t deadline = now_ns() + us * 1000ull;
    struct timespec ts = {(time_t)(deadline / 1000000000ull),
                          (long)(deadline % 1000000000ull)};
    pthread_mutex_lock(&h->sleep_mu);
    while (!atomic_load(&h->abort_flag)) {
        if (pthread_cond_timedwait(&h->abort_cv, &h->sleep_mu, &ts) == ETIMEDOUT)
            break;
    }
    int aborted = atomic_load(&h->abort_flag);
    pthread_mutex_unlock(&h->sleep_mu);
    return aborted;
}

static void wake_sleepers(standin_handle *h)
{
    pthread_mutex_lock(&h->sleep_mu);
    pthread_cond_broadcast(&h->abort_cv);
    pthread_mutex_unlock(&h->sleep_mu);
}

static int emit(run_job *j, const char *text, int32_t id, LLMCallState state,
                const RKLLMPerfStat *perf)
{
    if (!j->cb)
        return 0;
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    r.text = text;
    r.token_id = id;
    if (perf)
        r.perf = *perf;
    standin_handle *prev = tl_in_callback;
    tl_in_callback = j->h;
    int rv = j->cb(&r, j->userdata, state);
    tl_in_callback = prev;
    return rv;
}

/* Benchmark step: the text is the monotonic clock read just before the call. */
static int emit_stamp(run_job *j, int32_t id)
{
    char buf[48];
    RKLLMResult r;
    if (!j->cb)
        return 0;
    memset(&r, 0, sizeof r);
    r.text = buf;
    r.token_id = id;
    standin_handle *prev = tl_in_callback;
    tl_in_callback = j->h;
    snprintf(buf, sizeof buf, "[%llu]", (unsigned long long)now_ns());
    int rv = j->cb(&r, j->userdata, RKLLM_RUN_NORMAL);
    tl_in_callback = prev;
    return rv;
}

static unsigned long long sat_add_mul(unsigned long long a, unsigned long long b,
                                      unsigned long long c)
{
    const unsigned long long cap = 1000000000000ull; /* ~11.6 days, in us */
    if (c && b > cap / c)
        return cap;
    unsigned long long v = a + b * c;
    return v > cap ? cap : v;
}

/* ------------------------------------------------------------------------ */
/* Injected faults: crash_after, hang_after, the fault control file         */
/* ------------------------------------------------------------------------ */

enum { FAULT_NONE = 0, FAULT_CRASH = 1, FAULT_HANG = 2 };

static const char *fault_name(int fault)
{
    return fault == FAULT_CRASH ? "crash" : fault == FAULT_HANG ? "hang" : NULL;
}

/*
 * Read the fault control file: "crash N", "hang N" (or "crash:N", "hang:N"),
 * "none" or nothing, blanks around the words ignored.  A missing file means
 * no fault.  Anything else means no fault and, with `warn`, a warning.
 * Returns FAULT_* and sets *after.
 */
static int read_fault_file(const char *path, long *after, int warn)
{
    *after = -1;
    if (!path || !*path)
        return FAULT_NONE;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (warn && errno != ENOENT)
            fprintf(stderr, "W rkllm: stand-in: cannot read fault file %s: %s\n", path,
                    strerror(errno));
        return FAULT_NONE;
    }
    char text[128];
    size_t got = 0;
    while (got < sizeof text - 1) {
        ssize_t r = read(fd, text + got, sizeof text - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    char extra;
    int too_long = got == sizeof text - 1 && read(fd, &extra, 1) > 0;
    close(fd);
    text[got] = '\0';

    char *s = text;
    while (is_ws((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && is_ws((unsigned char)e[-1]))
        *--e = '\0';
    if (!too_long && (!*s || !strcmp(s, "none")))
        return FAULT_NONE;

    int fault = FAULT_NONE;
    const char *rest = NULL;
    if (!too_long && !strncmp(s, "crash", 5)) {
        fault = FAULT_CRASH;
        rest = s + 5;
    } else if (!too_long && !strncmp(s, "hang", 4)) {
        fault = FAULT_HANG;
        rest = s + 4;
    }
    long n = -1;
    if (rest) {
        const char *r = rest;
        int sep = 0;
        while (is_ws((unsigned char)*r)) {
            r++;
            sep = 1;
        }
        if (*r == ':') {
            r++;
            sep = 1;
        }
        if (!sep || parse_long(r, &n) || n < 0)
            fault = FAULT_NONE;
    }
    if (fault == FAULT_NONE) {
        if (warn)
            fprintf(stderr,
                    "W rkllm: stand-in: fault file %s: expected 'crash N', 'hang N' or "
                    "nothing, got '%.40s'; no fault\n",
                    path, s);
        return FAULT_NONE;
    }
    *after = n;
    return fault;
}

/* A "fault" record: the injected fault fires now. */
static void rec_fault(const run_job *j)
{
    sbuf rec = {0};
    rec_begin(&rec, "fault", j->h);
    jk_str(&rec, "kind", fault_name(j->fault));
    jk_int(&rec, "after", j->fault_after);
    jk_str(&rec, "source", j->fault_from_file ? "fault_file" : "settings");
    rec_commit(&rec, j->h->record);
    sb_free(&rec);
}

/*
 * crash_after: a genuine invalid memory access on the thread that makes the
 * callbacks.  The pointer is read through a volatile object, so the compiler
 * cannot prove it NULL and must emit the store (no UB-based elision, no trap
 * instruction instead of the access).  Should the store not fault (page 0
 * mapped) or a handler return, raise(SIGSEGV) follows, then SIGSEGV with the
 * default action and unblocked; abort() is the very last resort.
 */
__attribute__((noreturn, noinline)) static void fault_crash(const run_job *j)
{
    rec_fault(j);
    fflush(stdout);
    fprintf(stderr, "E rkllm: stand-in: injected crash after %ld tokens\n", j->fault_after);
    fflush(stderr);

    static int *volatile null_target; /* always NULL, but the compiler cannot know */
    volatile int *p = null_target;
    *p = 0x5e6f;

    raise(SIGSEGV);
    signal(SIGSEGV, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGSEGV);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(SIGSEGV);
    abort();
}

/*
 * hang_after: no callbacks, rkllm_abort ignored, the thread sleeps in 2 ms
 * steps without looking at the abort flag.  It ends only when released:
 * hang_release_file exists, the fault control file that armed the hang no
 * longer says "hang", or rkllm_destroy is waiting for the run.  Then the run
 * goes on where it stopped (an abort that came meanwhile takes effect).
 */
static void fault_hang(run_job *j)
{
    standin_handle *h = j->h;
    rec_fault(j);
    fprintf(stderr, "W rkllm: stand-in: injected hang after %ld tokens\n", j->fault_after);
    fflush(stderr);
    atomic_fetch_add(&h->hanging, 1);
    uint64_t t0 = now_ns();
    const char *release_file = j->cf.hang_release_file;
    const char *by = NULL;
    while (!by) {
        long n;
        if (atomic_load(&h->destroying))
            by = "destroy";
        else if (release_file && *release_file && access(release_file, F_OK) == 0)
            by = "release_file";
        else if (j->fault_from_file && read_fault_file(h->fault_file, &n, 0) != FAULT_HANG)
            by = "fault_file";
        else {
            struct timespec ts = {0, 2000000L};
            nanosleep(&ts, NULL);
        }
    }
    atomic_fetch_sub(&h->hanging, 1);

    sbuf rec = {0};
    rec_begin(&rec, "hang_end", h);
    jk_str(&rec, "released_by", by);
    jk_f(&rec, "hung_ms", (double)(now_ns() - t0) / 1e6);
    jk_bool(&rec, "abort_pending", atomic_load(&h->abort_flag));
    rec_commit(&rec, h->record);
    sb_free(&rec);
}

/* One value of the stand-in's hidden states: row seed `seed` (the FNV-1a 64
 * state after the row's words, see hidden_states), column `col`, in [-1, 1). */
static float hidden_value(uint64_t seed, long col)
{
    uint64_t x = seed + (uint64_t)(col + 1) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (float)((double)(x >> 40) / 16777216.0 * 2.0 - 1.0);
}

/* num_tokens x width floats: row i is seeded by the FNV-1a 64 digest of words
 * 0..i of `text`, each followed by one space (so row i depends on every token
 * up to it, as a causal model's does).  Returns NULL when there is no word. */
static float *hidden_states(const char *text, long width, long *num_tokens)
{
    size_t n = text ? strlen(text) : 0, cap = 0;
    float *out = NULL;
    long rows = 0;
    uint64_t hsh = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n;) {
        if (is_ws((unsigned char)text[i])) {
            i++;
            continue;
        }
        while (i < n && !is_ws((unsigned char)text[i])) {
            hsh ^= (unsigned char)text[i++];
            hsh *= 0x100000001b3ull;
        }
        hsh ^= (unsigned char)' ';
        hsh *= 0x100000001b3ull;
        if ((size_t)(rows + 1) * (size_t)width > cap) {
            cap = cap ? cap * 2 : (size_t)width * 8;
            out = xrealloc(out, cap * sizeof(float));
        }
        for (long c = 0; c < width; c++)
            out[(size_t)rows * (size_t)width + (size_t)c] = hidden_value(hsh, c);
        rows++;
    }
    *num_tokens = rows;
    return out;
}

/* RKLLM_INFER_GET_LAST_HIDDEN_LAYER: after the prefill, one NORMAL callback
 * (text NULL) with the hidden states of every prompt token, then FINISH. */
static void job_hidden(run_job *j, uint64_t t0, uint64_t t1)
{
    standin_handle *h = j->h;
    long rows = 0;
    float *states = hidden_states(j->hidden_text, j->cf.hidden_size, &rows);
    if (rows == 0) {
        fprintf(stderr, j->hidden_text ? "E rkllm: the input has no tokens\n"
                                       : "E rkllm: stand-in: the last hidden layer mode takes "
                                         "prompt input only\n");
        emit(j, NULL, 0, RKLLM_RUN_ERROR, NULL);
        j->ret = -1;
        j->finish = "error";
        free(states);
        return;
    }
    if (j->fault != FAULT_NONE && j->fault_after == 0) { /* after the prefill */
        j->fault_fired = 1;
        if (j->fault == FAULT_CRASH)
            fault_crash(j);
        fault_hang(j);
    }
    if (atomic_load(&h->abort_flag)) {
        free(states);
        j->finish = "abort";
        if (j->cf.finish_on_abort)
            emit(j, NULL, 0, RKLLM_RUN_FINISH, NULL);
        return;
    }
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    r.last_hidden_layer.hidden_states = states;
    r.last_hidden_layer.embd_size = (int)j->cf.hidden_size;
    r.last_hidden_layer.num_tokens = (int)rows;
    j->hidden_tokens = rows;
    if (j->cb) {
        standin_handle *prev = tl_in_callback;
        tl_in_callback = h;
        j->hidden_rv = j->cb(&r, j->userdata, RKLLM_RUN_NORMAL);
        tl_in_callback = prev;
    }
#if RKLLM_LINE >= 13
    j->hidden_released = j->hidden_rv == 2;
#endif
    /* valid until the callback returned; 1.2 holds it to the end of the run */
    free(states);
    uint64_t t2 = now_ns();
    RKLLMPerfStat perf;
    memset(&perf, 0, sizeof perf);
    perf.prefill_tokens = (int)(j->prefill_tokens > INT_MAX ? INT_MAX : j->prefill_tokens);
    perf.prefill_time_ms = (float)((double)(t1 - t0) / 1e6);
    perf.generate_time_ms = (float)((double)(t2 - t1) / 1e6);
    perf.memory_usage_mb = peak_memory_mb();
    emit(j, NULL, 0, RKLLM_RUN_FINISH, &perf);
}

/* The generation itself: callbacks, timing, FINISH/ERROR. */
static void job_generate(run_job *j)
{
    standin_handle *h = j->h;
    const sconf *cf = &j->cf;
    uint64_t t0 = now_ns(), t1 = t0;
    int aborted = 0, errored = 0;
    j->generated = 0;
    j->ret = 0;
    j->finish = "eos";

    sbuf pend = {0}, step = {0};
    span *toks = NULL;

    if (j->invalid || cf->fail_run) {
        emit(j, NULL, 0, RKLLM_RUN_ERROR, NULL);
        j->ret = -1;
        j->finish = "error";
        return;
    }

    unsigned long long pre_us = sat_add_mul((unsigned long long)cf->prefill_delay_us,
                                            j->prompt_bytes,
                                            (unsigned long long)cf->prefill_us_per_byte);
    if (pre_us && sleep_abortable(h, pre_us))
        aborted = 1;
    if (atomic_load(&h->abort_flag))
        aborted = 1;
    j->prefilled = !aborted;
    t1 = now_ns();
    if (j->hidden && !aborted) {
        job_hidden(j, t0, t1);
        return;
    }

    size_t ntok = 0;
    if (!aborted)
        toks = tokenize(j->reply, j->reply_len, cf->token_bytes, &ntok);
    long planned = cf->n_tokens > 0 ? cf->n_tokens : (long)ntok;
    if (cf->n_tokens <= 0 && j->ignore_eos && j->limit > 0)
        planned = j->limit; /* keep going past "EOS" up to the cap */
    if (ntok == 0)
        planned = 0;

    for (long i = 0; !aborted; i++) {
        /* an injected fault fires once N token steps are out, before whatever
         * would come next (a token, the end of the run, the abort check) */
        if (j->fault != FAULT_NONE && !j->fault_fired && j->generated >= j->fault_after) {
            j->fault_fired = 1;
            if (j->fault == FAULT_CRASH)
                fault_crash(j);
            fault_hang(j);
            if (atomic_load(&h->abort_flag)) { /* aborted before or during the hang */
                aborted = 1;
                break;
            }
        }
        if (i >= planned) {
            j->finish = "eos";
            break;
        }
        if (j->limit > 0 && j->generated >= j->limit) {
            j->finish = "length";
            break;
        }
        if (cf->error_after >= 0 && j->generated >= cf->error_after) {
            errored = 1;
            break;
        }
        if (atomic_load(&h->abort_flag) ||
            (cf->token_delay_us > 0 &&
             sleep_abortable(h, (unsigned long long)cf->token_delay_us))) {
            aborted = 1;
            break;
        }
        const span *t = &toks[(size_t)i % ntok];
        const char *tb = j->reply + t->off;
        int32_t id = (int32_t)(j->generated & 0x7fffffff);
        int rv;
        if (cf->stamp) {
            rv = emit_stamp(j, id);
        } else if (cf->waiting == WAIT_NONE) {
            sb_clear(&step);
            sb_add(&step, tb, t->len);
            rv = emit(j, step.p, id, RKLLM_RUN_NORMAL, NULL);
        } else {
            sb_add(&pend, tb, t->len); /* pend = P + T */
            int cut = utf8_cut_at_end((const unsigned char *)pend.p, pend.n);
            sb_clear(&step);
            if (cf->waiting == WAIT_REPEAT)
                sb_add(&step, pend.p, pend.n);
            else
                sb_add(&step, tb, t->len);
            rv = emit(j, step.p, id, cut ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL, NULL);
            if (!cut)
                sb_clear(&pend);
        }
        j->generated++;
        kv_add(&j->gen, tb, t->len, SEG_TOKEN);
        if (rv == 1) {
            j->finish = "pause";
            break;
        }
    }

    if (aborted) {
        j->finish = "abort";
    } else if (errored) {
        j->finish = "error";
    } else if (pend.n > 0 && (!strcmp(j->finish, "eos") || !strcmp(j->finish, "length"))) {
        /* bytes still held back at the end: hand them over as a NORMAL step */
        sb_clear(&step);
        sb_add(&step, pend.p, pend.n);
        emit(j, step.p, (int32_t)(j->generated & 0x7fffffff), RKLLM_RUN_NORMAL, NULL);
        j->generated++;
    }
    uint64_t t2 = now_ns();

    if (errored) {
        emit(j, NULL, (int32_t)(j->generated & 0x7fffffff), RKLLM_RUN_ERROR, NULL);
        j->ret = -1;
    } else if (!aborted || cf->finish_on_abort) {
        RKLLMPerfStat perf;
        memset(&perf, 0, sizeof perf);
        perf.prefill_tokens = (int)(j->prefill_tokens > INT_MAX ? INT_MAX : j->prefill_tokens);
        perf.prefill_time_ms = (float)((double)(t1 - t0) / 1e6);
        perf.generate_tokens = (int)(j->generated > INT_MAX ? INT_MAX : j->generated);
        perf.generate_time_ms = (float)((double)(t2 - t1) / 1e6);
        perf.memory_usage_mb = peak_memory_mb();
        emit(j, NULL, 0, RKLLM_RUN_FINISH, &perf);
    }

    free(toks);
    sb_free(&pend);
    sb_free(&step);
}

static void job_free(run_job *j)
{
    free(j->hidden_text);
    free(j->pc_save_path);
    kv_free(&j->pc_save);
    free(j->reply);
    conf_free(&j->cf);
    kv_free(&j->gen);
    free(j);
}

/* Put the generated text into the KV cache, record the end of the run, drop
 * the running count.  The handle must not be touched after this returns. */
static void job_finish(run_job *j)
{
    standin_handle *h = j->h;
    pthread_mutex_lock(&h->mu);
    if (j->kv_applied) {
        kv_append(&h->kv, &j->gen, 0);
        const char *eot = j->cf.end_of_turn;
        if (!strcmp(j->finish, "eos") && j->cf.kv_keeps_end_of_turn && eot && *eot)
            kv_add(&h->kv, eot, strlen(eot), SEG_TOKEN);
    }
    size_t kv_after = h->kv.text.n;
    long kv_tokens_after = kv_tokens(&h->kv);
    pthread_mutex_unlock(&h->mu);
    /* save_prompt_cache: at the end of a run whose prefill completed */
    if (j->pc_save_path && j->kv_applied && j->prefilled)
        j->pc_saved = pc_write(j->pc_save_path, &j->pc_save) == 0
                          ? (long long)j->pc_save.text.n
                          : -1;

    sbuf rec = {0};
    rec_begin(&rec, "run_end", h);
    jk_int(&rec, "ret", j->ret);
    jk_int(&rec, "generated", j->generated);
    jk_str(&rec, "finish", j->finish);
    jk_int(&rec, "prefill_tokens", j->prefill_tokens);
    jk_bool(&rec, "async", j->is_async);
    jk_uint(&rec, "kv_after", kv_after);
    jk_int(&rec, "kv_tokens_after", kv_tokens_after);
    if (j->hidden) {
        jk_int(&rec, "hidden_tokens", j->hidden_tokens);
        jk_int(&rec, "hidden_embd_size", j->cf.hidden_size);
        jk(&rec, "hidden_callback_ret");
        if (j->hidden_tokens >= 0)
            sb_printf(&rec, "%d", j->hidden_rv);
        else
            sb_puts(&rec, "null");
        jk_bool(&rec, "hidden_released", j->hidden_released);
    }
    jk(&rec, "prompt_cache_saved");
    if (j->pc_save_path && j->kv_applied && j->prefilled)
        sb_printf(&rec, "%lld", j->pc_saved);
    else
        sb_puts(&rec, "null");
    rec_commit(&rec, h->record);
    sb_free(&rec);

    pthread_mutex_lock(&h->mu);
    atomic_fetch_sub(&h->active, 1);
    pthread_cond_broadcast(&h->idle_cv);
    pthread_mutex_unlock(&h->mu);
    job_free(j);
}

static const char *input_type_name(int t)
{
    switch (t) {
    case RKLLM_INPUT_PROMPT:
        return "prompt";
    case RKLLM_INPUT_TOKEN:
        return "token";
    case RKLLM_INPUT_EMBED:
        return "embed";
    case RKLLM_INPUT_MULTIMODAL:
        return "multimodal";
    default:
        return NULL;
    }
}

static double sum_floats(const float *p, unsigned long long n)
{
    double s = 0.0;
    if (!p)
        return 0.0;
    for (unsigned long long i = 0; i < n; i++)
        s += (double)p[i];
    return s;
}

static void rec_embed(sbuf *rec, const float *p, unsigned long long n)
{
    jk_uint(rec, "embed_floats", n);
    jk(rec, "embed_sum");
    js_num(rec, sum_floats(p, n), 17);
}

/*
 * Put a run's input into the handle's KV cache (h->mu held).  The effective
 * input is the caller's text wrapped by the chat template in force (text
 * and multimodal input only), with the system prompt in front when the run
 * starts an empty cache.  keep_history = 1 appends all of it; otherwise the
 * cache keeps the prefix it shares with the input (auto_prefix_reuse) or
 * nothing, and the rest of the input replaces the rest of the cache.  Where
 * the input starts at position 0 and begins with the loaded prompt cache,
 * the cached bytes go in without a prefill.  Writes the KV fields of the
 * run record.
 */
static void kv_apply_input(standin_handle *h, run_job *j, const sbuf *input, int templated,
                           long media_at, long media_tokens, sbuf *rec)
{
    kvbuf *kv = &h->kv;
    size_t kv_before = kv->text.n;
    const char *sys = "", *pre = "", *post = "";
    if (templated && h->tpl_set) {
        sys = h->tpl_system;
        pre = h->tpl_prefix;
        post = h->tpl_postfix;
    } else if (templated) {
        pre = default_prefix;
        post = default_postfix;
    }
    int with_sys = *sys && (!j->keep_history || kv_before == 0);

    kvbuf eff = {0};
    if (with_sys)
        kv_add(&eff, sys, strlen(sys), SEG_TEMPLATE);
    kv_add(&eff, pre, strlen(pre), SEG_TEMPLATE);
    size_t input_at = eff.text.n;
    kv_add(&eff, input->p ? input->p : "", input->n, SEG_WORDS);
    kv_add(&eff, post, strlen(post), SEG_TEMPLATE);
    size_t media_off = input_at + (size_t)(media_at > 0 ? media_at : 0);
    kv_add_media(&eff, media_off, media_tokens);

    if (j->pc_save_path) { /* what a prompt cache file gets: the input up to any image */
        size_t keep = media_tokens > 0 ? media_off : eff.text.n;
        sb_add(&j->pc_save.text, eff.text.p, keep);
        sb_add(&j->pc_save.cls, eff.cls.p, keep);
    }

    size_t from = 0; /* bytes of eff that the cache already holds */
    if (!j->keep_history) {
        from = j->cf.auto_prefix_reuse ? kv_reuse_point(kv, &eff) : 0;
        kv_truncate(kv, from);
        h->kv_sys = with_sys ? strlen(sys) : 0;
    } else if (with_sys) {
        h->kv_sys = strlen(sys);
    }
    /* The prompt cache: only where the input starts the cache, and only as a
     * whole prefix of it, as the runtime matches it from the start. */
    size_t pc_reused = 0;
    if (h->pc_loaded && kv->text.n == from) {
        size_t pcn = h->pc.text.n;
        if (pcn > from && kv_reuse_point(&h->pc, &eff) == pcn) {
            sb_add(&kv->text, h->pc.text.p + from, pcn - from);
            sb_add(&kv->cls, h->pc.cls.p + from, pcn - from);
            pc_reused = pcn - from;
            from = pcn;
        }
    }
    /* the first new byte inside a word: that partial word is a token */
    if (from > 0 && from < eff.text.n) {
        unsigned char c = (unsigned char)eff.text.p[from];
        unsigned char b = (unsigned char)eff.text.p[from - 1];
        if (!(eff.cls.p[from] & (KV_START | KV_TEMPLATE)) && !is_ws(c) &&
            !(eff.cls.p[from - 1] & KV_TEMPLATE) && !is_ws(b))
            eff.cls.p[from] |= KV_START;
    }
    size_t reused = kv->text.n;
    long hist = kv_tokens(kv);
    j->prefill_tokens = kv_starts(&eff, from, eff.text.n) + kv_media_tokens(&eff);
    j->prompt_bytes = eff.text.n - from;
    kv_append(kv, &eff, from);
    j->kv_applied = 1;

    jk_int(rec, "history_tokens", hist);
    jk_uint(rec, "kv_before", kv_before);
    jk_uint(rec, "kv_reused", reused);
    jk_uint(rec, "prompt_cache_reused", pc_reused);
    jk_uint(rec, "prefill_bytes", eff.text.n - from);
    jk(rec, "kv_text_new");
    js_strn(rec, eff.text.p ? eff.text.p + from : "", eff.text.n - from);
    kv_free(&eff);
}

/*
 * Everything that reads the caller's input happens here, on the caller's
 * thread, so asynchronous runs never touch caller memory afterwards.
 * Marks the run active, puts the input into the KV cache and writes the
 * "run" record.
 */
static run_job *job_prepare(standin_handle *h, RKLLMInput *in, RKLLMInferParam *inf,
                            void *userdata, int is_async)
{
    run_job *j = xrealloc(NULL, sizeof *j);
    memset(j, 0, sizeof *j);
    j->h = h;
    j->is_async = is_async;
    j->cf = h->base;
    j->cf.reply = xstrdup(h->base.reply);
    j->cf.end_of_turn = xstrdup(h->base.end_of_turn);
    j->cf.hang_release_file = xstrdup(h->base.hang_release_file);
    j->cf.record = NULL;
    j->cf.fault_file = NULL; /* the handle's resolved h->fault_file is used */
    j->cb = h->cb;
    j->userdata = userdata;
#if RKLLM_LINE >= 13
    if (!j->userdata)
        j->userdata = h->cb_userdata;
#endif
    j->keep_history = inf ? inf->keep_history != 0 : 0;
    j->limit = h->max_new_tokens;
#if RKLLM_LINE >= 13
    if (inf && inf->max_new_tokens > 0)
        j->limit = inf->max_new_tokens;
#endif
    j->ignore_eos = h->ignore_eos;
    j->finish = "eos";
    j->hidden = inf && inf->mode == RKLLM_INFER_GET_LAST_HIDDEN_LAYER;
    j->hidden_tokens = -1;
    const RKLLMPromptCacheParam *pcp = inf ? inf->prompt_cache_params : NULL;
    if (pcp && pcp->save_prompt_cache)
        j->pc_save_path = xstrdup(pcp->prompt_cache_path && *pcp->prompt_cache_path
                                      ? pcp->prompt_cache_path
                                      : pc_default_path);

    /* concurrency bookkeeping */
    pthread_mutex_lock(&h->mu);
    int prev = atomic_fetch_add(&h->active, 1);
    atomic_store(&h->abort_flag, 0);
    pthread_mutex_unlock(&h->mu);
    if (prev > 0)
        fprintf(stderr,
                "W rkllm: stand-in: run started while another run is active on handle %p "
                "(concurrent use of one instance)\n",
                (void *)h);

    sbuf rec = {0};
    rec_begin(&rec, "run", h);
    jk_str(&rec, "role", in ? in->role : NULL);
    jk_bool(&rec, "enable_thinking", in ? in->enable_thinking : 0);
    const char *tname = in ? input_type_name((int)in->input_type) : NULL;
    jk_str(&rec, "input_type", tname);
    if (in && !tname)
        jk_int(&rec, "input_type_value", (long long)in->input_type);

    char *clean = NULL;      /* prompt with directives removed */
    sbuf input = {0};        /* the caller's part of the effective input */
    int templated = 0;       /* text input: the chat template applies */
    long media_at = -1;      /* offset in `input` of the image tokens */
    long media_tokens = 0;   /* image and video tokens of a multimodal input */
    unsigned long long n_in = 0; /* token/embed input: n_tokens */
    if (!in || !tname) {
        j->invalid = 1;
        fprintf(stderr, "E rkllm: %s\n", in ? "unsupported input type" : "input is NULL");
    } else if (in->input_type == RKLLM_INPUT_PROMPT ||
               in->input_type == RKLLM_INPUT_MULTIMODAL) {
        const char *raw = in->input_type == RKLLM_INPUT_PROMPT ? in->prompt_input
                                                               : in->multimodal_input.prompt;
        jk_str(&rec, "prompt", raw);
        clean = apply_directives(raw, &j->cf);
        if (j->hidden)
            j->hidden_text = xstrdup(clean);
        sb_puts(&input, clean);
        templated = 1;
        if (in->input_type == RKLLM_INPUT_MULTIMODAL) {
            const RKLLMMultiModalInput *mm = &in->multimodal_input;
#if RKLLM_LINE >= 13
            unsigned long long n_img = mm->image.n_image, n_img_tok = mm->image.n_image_tokens;
            jk_uint(&rec, "n_image", n_img);
            jk_uint(&rec, "n_image_tokens", n_img_tok);
            jk_uint(&rec, "image_width", mm->image.image_width);
            jk_uint(&rec, "image_height", mm->image.image_height);
            jk_str(&rec, "image_start", mm->image.image_start);
            jk_str(&rec, "image_end", mm->image.image_end);
            jk_str(&rec, "image_content", mm->image.image_content);
            unsigned long long vid_tok =
                (unsigned long long)mm->video.n_video * mm->video.n_frame_per_video *
                mm->video.n_frame_tokens;
            jk_uint(&rec, "n_video", mm->video.n_video);
            jk_uint(&rec, "n_frame_per_video", mm->video.n_frame_per_video);
            jk_uint(&rec, "n_frame_tokens", mm->video.n_frame_tokens);
            media_tokens = (long)(n_img * n_img_tok + vid_tok);
            rec_embed(&rec, mm->image.image_embed,
                      n_img * n_img_tok * (unsigned long long)j->cf.embed_width);
#else
            unsigned long long n_img = mm->n_image, n_img_tok = mm->n_image_tokens;
            jk_uint(&rec, "n_image", n_img);
            jk_uint(&rec, "n_image_tokens", n_img_tok);
            jk_uint(&rec, "image_width", mm->image_width);
            jk_uint(&rec, "image_height", mm->image_height);
            jk_str(&rec, "image_start", h->img_start);
            jk_str(&rec, "image_end", h->img_end);
            jk_str(&rec, "image_content", h->img_content);
            media_tokens = (long)(n_img * n_img_tok);
            rec_embed(&rec, mm->image_embed,
                      n_img * n_img_tok * (unsigned long long)j->cf.embed_width);
#endif
            const char *ph = strstr(clean, "<image>");
            media_at = ph ? (long)(ph - clean) : 0;
        }
    } else if (in->input_type == RKLLM_INPUT_TOKEN) {
        n_in = in->token_input.n_tokens;
        jk_uint(&rec, "n_tokens", n_in);
        long long idsum = 0;
        const int32_t *ids = in->token_input.input_ids;
        for (unsigned long long i = 0; i < n_in; i++) {
            int32_t id = ids ? ids[i] : 0;
            idsum += id;
            sb_printf(&input, "<t:%d> ", (int)id);
        }
        jk_int(&rec, "input_ids_sum", idsum);
    } else { /* RKLLM_INPUT_EMBED */
        n_in = in->embed_input.n_tokens;
        jk_uint(&rec, "n_tokens", n_in);
        const float *emb = in->embed_input.embed;
        size_t row = (size_t)j->cf.embed_width * sizeof(float);
        for (unsigned long long i = 0; i < n_in; i++) {
            uint64_t d = emb ? fnv1a64((const char *)emb + i * row, row) : fnv1a64("", 0);
            sb_printf(&input, "<e:%016llx> ", (unsigned long long)d);
        }
        rec_embed(&rec, emb, n_in * (unsigned long long)j->cf.embed_width);
    }

    /* the KV cache: nothing happens to it for a run that never starts */
    pthread_mutex_lock(&h->mu);
    if (!j->invalid && !j->cf.fail_run) {
        kv_apply_input(h, j, &input, templated, media_at, media_tokens, &rec);
    } else {
        jk_int(&rec, "history_tokens", kv_tokens(&h->kv));
        jk_uint(&rec, "kv_before", h->kv.text.n);
        jk_uint(&rec, "kv_reused", h->kv.text.n);
        jk_uint(&rec, "prompt_cache_reused", 0);
        jk_uint(&rec, "prefill_bytes", 0);
        jk_str(&rec, "kv_text_new", "");
    }
    uint64_t kv_digest = fnv1a64(h->kv.text.p ? h->kv.text.p : "", h->kv.text.n);
    size_t kv_len = h->kv.text.n;
    pthread_mutex_unlock(&h->mu);

    sbuf reply = {0};
    if (j->invalid) {
        /* no reply */
    } else if (j->cf.reply_mode == REPLY_CONTEXT) {
        sb_printf(&reply, "ctx:%016llx len:%zu", (unsigned long long)kv_digest, kv_len);
    } else if (j->cf.reply && *j->cf.reply) {
        sb_puts(&reply, j->cf.reply);
    } else if (clean) {
        sb_puts(&reply, "Echo: ");
        collapse_ws(&reply, clean);
    } else if (in->input_type == RKLLM_INPUT_TOKEN) {
        sb_printf(&reply, "Echo: [%llu tokens]", n_in);
    } else {
        sb_printf(&reply, "Echo: [%llu embeddings]", n_in);
    }
    free(clean);
    sb_free(&input);
    if (!reply.p)
        sb_add(&reply, "", 0);
    j->reply = reply.p;
    j->reply_len = reply.n;

    if (!inf) {
        jk(&rec, "infer");
        sb_puts(&rec, "null");
    } else {
        jk(&rec, "infer");
        sb_puts(&rec, "{\"mode\":");
        sb_printf(&rec, "%d", (int)inf->mode);
        jk_int(&rec, "keep_history", inf->keep_history);
#if RKLLM_LINE >= 13
        jk_int(&rec, "max_new_tokens", inf->max_new_tokens);
        jk(&rec, "sampling");
        const RKLLMSamplingParam *sp = inf->sampling_params;
        if (!sp) {
            sb_puts(&rec, "null");
        } else {
            sb_puts(&rec, "{\"top_k\":");
            sb_printf(&rec, "%d", (int)sp->top_k);
            jk_f(&rec, "top_p", sp->top_p);
            jk_f(&rec, "temperature", sp->temperature);
            jk_f(&rec, "repeat_penalty", sp->repeat_penalty);
            jk_f(&rec, "frequency_penalty", sp->frequency_penalty);
            jk_f(&rec, "presence_penalty", sp->presence_penalty);
            jk_int(&rec, "mirostat", sp->mirostat);
            jk_f(&rec, "mirostat_tau", sp->mirostat_tau);
            jk_f(&rec, "mirostat_eta", sp->mirostat_eta);
            sb_putc(&rec, '}');
        }
#endif
        jk_str(&rec, "lora", inf->lora_params ? inf->lora_params->lora_adapter_name : NULL);
        jk(&rec, "prompt_cache");
        if (!inf->prompt_cache_params) {
            sb_puts(&rec, "null");
        } else {
            sb_puts(&rec, "{\"save_prompt_cache\":");
            sb_printf(&rec, "%d", inf->prompt_cache_params->save_prompt_cache);
            jk_str(&rec, "prompt_cache_path", inf->prompt_cache_params->prompt_cache_path);
            sb_putc(&rec, '}');
        }
        sb_putc(&rec, '}');
    }
    jk_int(&rec, "max_new_tokens_effective", j->limit);
    jk_bool(&rec, "concurrent", prev > 0);
    jk_bool(&rec, "async", is_async);

    /* the injected fault: the control file, read now, wins over the settings */
    long file_after = -1;
    int file_fault = read_fault_file(h->fault_file, &file_after, 1);
    if (file_fault != FAULT_NONE) {
        j->fault = file_fault;
        j->fault_after = file_after;
        j->fault_from_file = 1;
    } else if (j->cf.crash_after >= 0 &&
               (j->cf.hang_after < 0 || j->cf.crash_after <= j->cf.hang_after)) {
        j->fault = FAULT_CRASH;
        j->fault_after = j->cf.crash_after;
    } else if (j->cf.hang_after >= 0) {
        j->fault = FAULT_HANG;
        j->fault_after = j->cf.hang_after;
    }
    jk(&rec, "fault");
    if (j->fault == FAULT_NONE)
        sb_puts(&rec, "null");
    else
        sb_printf(&rec, "\"%s:%ld\"", fault_name(j->fault), j->fault_after);
    jk_str(&rec, "fault_source",
           j->fault == FAULT_NONE ? NULL : j->fault_from_file ? "fault_file" : "settings");
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return j;
}

static void *native_run_thread(void *arg)
{
    job_generate((run_job *)arg);
    return NULL;
}

static void *async_run_thread(void *arg)
{
    run_job *j = arg;
    job_generate(j);
    job_finish(j);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Exported API                                                             */
/* ------------------------------------------------------------------------ */

RKLLM_API RKLLMParam rkllm_createDefaultParam(void)
{
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.model_path = NULL;
    p.max_context_len = 4096;
    p.max_new_tokens = 512;
    p.top_k = 40;
    p.n_keep = -1;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = false;
    p.is_async = false;
    p.extend_param.base_domain_id = 0;
    p.extend_param.enabled_cpus_num = 4;
    p.extend_param.n_batch = 1;
    return p;
}

static void rec_init(const char *path, standin_handle *h, const RKLLMParam *p, int ret)
{
    if (!path || !*path)
        return;
    sbuf rec = {0};
    rec_begin(&rec, "init", h);
    jk_int(&rec, "ret", ret);
    jk_str(&rec, "model_path", p->model_path);
    jk_int(&rec, "max_context_len", p->max_context_len);
    jk_int(&rec, "max_new_tokens", p->max_new_tokens);
    jk_int(&rec, "top_k", p->top_k);
    jk_int(&rec, "n_keep", p->n_keep);
    jk_f(&rec, "top_p", p->top_p);
    jk_f(&rec, "temperature", p->temperature);
    jk_f(&rec, "repeat_penalty", p->repeat_penalty);
    jk_f(&rec, "frequency_penalty", p->frequency_penalty);
    jk_f(&rec, "presence_penalty", p->presence_penalty);
    jk_int(&rec, "mirostat", p->mirostat);
    jk_f(&rec, "mirostat_tau", p->mirostat_tau);
    jk_f(&rec, "mirostat_eta", p->mirostat_eta);
    jk_bool(&rec, "skip_special_token", p->skip_special_token);
#if RKLLM_LINE >= 13
    jk_bool(&rec, "ignore_eos_token", p->ignore_eos_token);
#endif
    jk_bool(&rec, "is_async", p->is_async);
#if RKLLM_LINE == 12
    jk_str(&rec, "img_start", p->img_start);
    jk_str(&rec, "img_end", p->img_end);
    jk_str(&rec, "img_content", p->img_content);
#endif
    const RKLLMExtendParam *e = &p->extend_param;
    jk(&rec, "extend_param");
    sb_puts(&rec, "{\"base_domain_id\":");
    sb_printf(&rec, "%d", (int)e->base_domain_id);
    jk_int(&rec, "embed_flash", e->embed_flash);
    jk_int(&rec, "enabled_cpus_num", e->enabled_cpus_num);
    jk_uint(&rec, "enabled_cpus_mask", e->enabled_cpus_mask);
    jk_int(&rec, "n_batch", e->n_batch);
    jk_int(&rec, "use_cross_attn", e->use_cross_attn);
    sb_putc(&rec, '}');
    rec_commit(&rec, path);
    sb_free(&rec);
}

#if RKLLM_LINE >= 13
RKLLM_API int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMCallback *callback)
#else
RKLLM_API int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback)
#endif
{
    if (handle)
        *handle = NULL;
    if (!handle || !param) {
        fprintf(stderr, "E rkllm: rkllm_init: handle or param is NULL\n");
        return -1;
    }
    const char *env = getenv("RKLLM_STANDIN_RECORD");
    const char *fault_env = getenv("RKLLM_STANDIN_FAULT_FILE");
    sconf cf;
    conf_defaults(&cf);
    int rc = load_model_file(param->model_path, &cf);
    const char *rec_path = (env && *env) ? env : cf.record;
    if (rc == 0 && cf.fail_init) {
        fprintf(stderr, "E rkllm: injected init failure\n");
        rc = -1;
    }
    if (rc != 0) {
        rec_init(rec_path, NULL, param, -1);
        conf_free(&cf);
        return -1;
    }
    if (cf.init_delay_us > 0) { /* a model load that takes time (a restart) */
        struct timespec ts = {cf.init_delay_us / 1000000L, (cf.init_delay_us % 1000000L) * 1000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }

    standin_handle *h = xrealloc(NULL, sizeof *h);
    memset(h, 0, sizeof *h);
    h->magic = HANDLE_MAGIC;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->idle_cv, NULL);
    pthread_mutex_init(&h->sleep_mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&h->abort_cv, &attr);
    pthread_condattr_destroy(&attr);
    atomic_init(&h->abort_flag, 0);
    atomic_init(&h->active, 0);
    h->base = cf;
    h->record = (rec_path && *rec_path) ? xstrdup(rec_path) : NULL;
    const char *fault_path = (fault_env && *fault_env) ? fault_env : cf.fault_file;
    h->fault_file = (fault_path && *fault_path) ? xstrdup(fault_path) : NULL;
    atomic_init(&h->hanging, 0);
    atomic_init(&h->destroying, 0);
#if RKLLM_LINE >= 13
    h->cb = callback ? callback->result_callback : NULL;
    h->cb_userdata = callback ? callback->result_userdata : NULL;
    h->ignore_eos = param->ignore_eos_token;
#else
    h->cb = callback;
    h->img_start = xstrdup(param->img_start);
    h->img_end = xstrdup(param->img_end);
    h->img_content = xstrdup(param->img_content);
#endif
    h->max_new_tokens = param->max_new_tokens;
    h->n_batch = param->extend_param.n_batch > 0 ? param->extend_param.n_batch : 1;

    fprintf(stdout, "I rkllm: %s%s, platform: host\n", standin_version_tag,
            standin_version_suffix);
    fflush(stdout);
    rec_init(h->record, h, param, 0);
    *handle = h;
    return 0;
}

RKLLM_API int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input,
                        RKLLMInferParam *rkllm_infer_params, void *userdata)
{
    standin_handle *h = get_handle(handle);
    if (!h) {
        fprintf(stderr, "E rkllm: rkllm_run: invalid handle\n");
        return -1;
    }
    run_job *j = job_prepare(h, rkllm_input, rkllm_infer_params, userdata, 0);
    if (j->cf.caller_thread) {
        job_generate(j);
    } else {
        pthread_t t;
        if (pthread_create(&t, NULL, native_run_thread, j) == 0)
            pthread_join(t, NULL);
        else
            job_generate(j); /* could not start a thread: do it here */
    }
    int ret = j->ret;
    job_finish(j);
    return ret;
}

RKLLM_API int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input,
                              RKLLMInferParam *rkllm_infer_params, void *userdata)
{
    standin_handle *h = get_handle(handle);
    if (!h) {
        fprintf(stderr, "E rkllm: rkllm_run_async: invalid handle\n");
        return -1;
    }
    run_job *j = job_prepare(h, rkllm_input, rkllm_infer_params, userdata, 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, async_run_thread, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        fprintf(stderr, "E rkllm: rkllm_run_async: cannot start thread: %s\n", strerror(rc));
        j->ret = -1;
        j->finish = "error";
        job_finish(j);
        return -1;
    }
    return 0;
}

RKLLM_API int rkllm_abort(LLMHandle handle)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    /* Record first, then stop the run: once woken it may end (and write its
     * run_end) at once, and readers expect the abort before that. */
    int running = atomic_load(&h->active) > 0;
    int ignored = atomic_load(&h->hanging) > 0; /* an injected hang does not look */
    sbuf rec = {0};
    rec_begin(&rec, "abort", h);
    jk_bool(&rec, "running", running);
    jk_bool(&rec, "ignored", ignored);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    atomic_store(&h->abort_flag, 1);
    wake_sleepers(h);
    return 0;
}

RKLLM_API int rkllm_is_running(LLMHandle handle)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return 0;
    return atomic_load(&h->active) > 0 ? 1 : 0;
}

RKLLM_API int rkllm_destroy(LLMHandle handle)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    if (tl_in_callback == h) {
        fprintf(stderr, "E rkllm: rkllm_destroy called from inside its own callback\n");
        return -1;
    }
    pthread_mutex_lock(&h->mu);
    int was_running = atomic_load(&h->active) > 0;
    if (was_running) {
        atomic_store(&h->destroying, 1); /* releases an injected hang */
        atomic_store(&h->abort_flag, 1);
        wake_sleepers(h);
    }
    while (atomic_load(&h->active) > 0)
        pthread_cond_wait(&h->idle_cv, &h->mu);
    pthread_mutex_unlock(&h->mu);

    sbuf rec = {0};
    rec_begin(&rec, "destroy", h);
    jk_bool(&rec, "was_running", was_running);
    rec_commit(&rec, h->record);
    sb_free(&rec);

    h->magic = 0;
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->idle_cv);
    pthread_cond_destroy(&h->abort_cv);
    pthread_mutex_destroy(&h->sleep_mu);
    conf_free(&h->base);
    kv_free(&h->kv);
    kv_free(&h->pc);
    free(h->tpl_system);
    free(h->tpl_prefix);
    free(h->tpl_postfix);
    free(h->record);
    free(h->fault_file);
    free(h->img_start);
    free(h->img_end);
    free(h->img_content);
    free(h);
    return 0;
}

RKLLM_API int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    int ret = lora_adapter ? 0 : -1;
    sbuf rec = {0};
    rec_begin(&rec, "load_lora", h);
    jk_int(&rec, "ret", ret);
    jk_str(&rec, "path", lora_adapter ? lora_adapter->lora_adapter_path : NULL);
    jk_str(&rec, "name", lora_adapter ? lora_adapter->lora_adapter_name : NULL);
    if (lora_adapter)
        jk_f(&rec, "scale", lora_adapter->scale);
    else
        jk_str(&rec, "scale", NULL);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return ret;
}

RKLLM_API int rkllm_load_prompt_cache(LLMHandle handle, const char *prompt_cache_path)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    kvbuf loaded = {0};
    int ret = -1;
    if (!prompt_cache_path)
        fprintf(stderr, "E rkllm: rkllm_load_prompt_cache: path is NULL\n");
    else
        ret = pc_read(prompt_cache_path, &loaded);
    size_t bytes = loaded.text.n;
    long tokens = kv_tokens(&loaded);
    if (ret == 0) { /* replaces a loaded one; a failed load leaves it as it was */
        pthread_mutex_lock(&h->mu);
        kv_free(&h->pc);
        h->pc = loaded;
        h->pc_loaded = 1;
        pthread_mutex_unlock(&h->mu);
    } else {
        kv_free(&loaded);
        bytes = 0;
        tokens = 0;
    }
    sbuf rec = {0};
    rec_begin(&rec, "load_prompt_cache", h);
    jk_int(&rec, "ret", ret);
    jk_str(&rec, "path", prompt_cache_path);
    jk_uint(&rec, "bytes", bytes);
    jk_int(&rec, "tokens", tokens);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return ret;
}

RKLLM_API int rkllm_release_prompt_cache(LLMHandle handle)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    pthread_mutex_lock(&h->mu);
    int was_loaded = h->pc_loaded;
    kv_free(&h->pc);
    h->pc_loaded = 0;
    pthread_mutex_unlock(&h->mu);
    sbuf rec = {0};
    rec_begin(&rec, "release_prompt_cache", h);
    jk_int(&rec, "ret", 0);
    jk_bool(&rec, "was_loaded", was_loaded);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return 0;
}

RKLLM_API int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos,
                                   int *end_pos)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    int ranged = start_pos && end_pos;
    pthread_mutex_lock(&h->mu);
    if (ranged) {
        /* only batch row 0 is modelled: drop token positions [start, end) */
        size_t from = kv_pos_to_byte(&h->kv, start_pos[0]);
        size_t to = kv_pos_to_byte(&h->kv, end_pos[0]);
        kv_remove(&h->kv, from, to);
        if (h->kv_sys > from)
            h->kv_sys = from;
    } else {
        size_t keep = keep_system_prompt ? h->kv_sys : 0;
        kv_truncate(&h->kv, keep);
        h->kv_sys = keep;
    }
    size_t kv_after = h->kv.text.n;
    pthread_mutex_unlock(&h->mu);

    sbuf rec = {0};
    rec_begin(&rec, "clear_kv_cache", h);
    jk_int(&rec, "ret", 0);
    jk_int(&rec, "keep_system_prompt", keep_system_prompt);
    if (ranged) {
        jk_int(&rec, "start_pos", start_pos[0]);
        jk_int(&rec, "end_pos", end_pos[0]);
    } else {
        jk_str(&rec, "start_pos", NULL);
        jk_str(&rec, "end_pos", NULL);
    }
    jk_uint(&rec, "kv_after", kv_after);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return 0;
}

RKLLM_API int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    pthread_mutex_lock(&h->mu);
    long hist = kv_tokens(&h->kv);
    pthread_mutex_unlock(&h->mu);
    int v = hist > INT_MAX ? INT_MAX : (int)hist;
    int ret = cache_sizes ? 0 : -1;
    if (cache_sizes)
        for (int i = 0; i < h->n_batch; i++)
            cache_sizes[i] = v;
    sbuf rec = {0};
    rec_begin(&rec, "get_kv_cache_size", h);
    jk_int(&rec, "ret", ret);
    jk_int(&rec, "size", v);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return ret;
}

RKLLM_API int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt,
                                      const char *prompt_prefix, const char *prompt_postfix)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    /* takes effect at once and clears the whole cache (maintainer, rknn-llm #377) */
    pthread_mutex_lock(&h->mu);
    free(h->tpl_system);
    free(h->tpl_prefix);
    free(h->tpl_postfix);
    h->tpl_system = xstrdup(system_prompt ? system_prompt : "");
    h->tpl_prefix = xstrdup(prompt_prefix ? prompt_prefix : "");
    h->tpl_postfix = xstrdup(prompt_postfix ? prompt_postfix : "");
    h->tpl_set = 1;
    kv_truncate(&h->kv, 0);
    h->kv_sys = 0;
    pthread_mutex_unlock(&h->mu);
    sbuf rec = {0};
    rec_begin(&rec, "set_chat_template", h);
    jk_int(&rec, "ret", 0);
    jk_str(&rec, "system_prompt", system_prompt);
    jk_str(&rec, "prompt_prefix", prompt_prefix);
    jk_str(&rec, "prompt_postfix", prompt_postfix);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return 0;
}

RKLLM_API int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt,
                                       const char *tools, const char *tool_response_str)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    sbuf rec = {0};
    rec_begin(&rec, "set_function_tools", h);
    jk_int(&rec, "ret", 0);
    jk_str(&rec, "system_prompt", system_prompt);
    jk_str(&rec, "tools", tools);
    jk_str(&rec, "tool_response_str", tool_response_str);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return 0;
}

RKLLM_API int rkllm_set_cross_attn_params(LLMHandle handle,
                                          RKLLMCrossAttnParam *cross_attn_params)
{
    standin_handle *h = get_handle(handle);
    if (!h)
        return -1;
    int ret = cross_attn_params ? 0 : -1;
    sbuf rec = {0};
    rec_begin(&rec, "set_cross_attn_params", h);
    jk_int(&rec, "ret", ret);
    if (cross_attn_params)
        jk_int(&rec, "num_tokens", cross_attn_params->num_tokens);
    else
        jk_str(&rec, "num_tokens", NULL);
    rec_commit(&rec, h->record);
    sb_free(&rec);
    return ret;
}
