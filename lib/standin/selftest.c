/*
 * selftest.c - exercises the stand-in runtime through its public C API.
 * Built once per runtime line (-DRKLLM_LINE=13 / 12) and linked against the
 * matching library.  Last line of output: "N passed, N failed".
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "rkllm_standin.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int n_pass, n_fail;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (cond) {                                             \
            n_pass++;                                           \
        } else {                                                \
            n_fail++;                                           \
            printf("FAIL line %d: %s -- ", __LINE__, #cond);    \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
        }                                                       \
    } while (0)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- text accumulation ------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static const char *buf_str(buf *b) { return b->p ? b->p : ""; }

/* Strict UTF-8 check (no overlongs/surrogates needed for this test). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

/* ---- callback collector ------------------------------------------------ */

typedef struct {
    pthread_mutex_t mu;
    buf all;          /* WAITING + NORMAL texts in order */
    buf normal;       /* NORMAL texts only */
    buf held;         /* continue-mode consumer: WAITING bytes not yet used */
    int n_normal, n_waiting, n_finish, n_error;
    int after_end;    /* callbacks after FINISH/ERROR */
    int cont_bad;     /* continue consumer produced invalid UTF-8 */
    int normal_bad;   /* a NORMAL text on its own was invalid UTF-8 */
    int null_text;    /* NORMAL/WAITING with text NULL */
    int error_text_nonnull;
    int stamps_bad;
    unsigned long long last_stamp;
    int pause_after;  /* return 1 after this many NORMAL steps */
    pid_t tid;
    int tids_mixed;
    int notify_fd;    /* > 0: one byte per callback (N, W, F, E) goes here */
    RKLLMPerfStat perf;
    /* RKLLM_INFER_GET_LAST_HIDDEN_LAYER */
    float *hidden;    /* a copy of the last hidden states seen */
    int hidden_rows, hidden_cols, n_hidden;
    int hidden_ret;   /* what to return from a hidden-states callback */
} collector;

static void col_init(collector *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
}

static void col_free(collector *c)
{
    free(c->all.p);
    free(c->normal.p);
    free(c->held.p);
    free(c->hidden);
    pthread_mutex_destroy(&c->mu);
}

static int col_count(collector *c, int which)
{
    pthread_mutex_lock(&c->mu);
    int v = which == 0 ? c->n_normal : which == 2 ? c->n_finish : c->n_error;
    pthread_mutex_unlock(&c->mu);
    return v;
}

static int on_result(RKLLMResult *r, void *userdata, LLMCallState st)
{
    collector *c = userdata;
    if (!c)
        return 0;
    int ret = 0;
    pthread_mutex_lock(&c->mu);
    pid_t me = gettid();
    if (c->tid && c->tid != me)
        c->tids_mixed = 1;
    c->tid = me;
    if (c->n_finish || c->n_error)
        c->after_end++;
    if (c->notify_fd > 0) {
        char tag = st == RKLLM_RUN_NORMAL ? 'N' : st == RKLLM_RUN_WAITING ? 'W'
                 : st == RKLLM_RUN_FINISH ? 'F' : 'E';
        if (write(c->notify_fd, &tag, 1) != 1)
            c->notify_fd = 0;
    }
    switch (st) {
    case RKLLM_RUN_NORMAL:
    case RKLLM_RUN_WAITING:
        if (r->last_hidden_layer.hidden_states) {
            const RKLLMResultLastHiddenLayer *hl = &r->last_hidden_layer;
            size_t n = (size_t)hl->num_tokens * (size_t)hl->embd_size;
            free(c->hidden);
            c->hidden = malloc(n * sizeof(float) + 1);
            memcpy(c->hidden, hl->hidden_states, n * sizeof(float));
            c->hidden_rows = hl->num_tokens;
            c->hidden_cols = hl->embd_size;
            c->n_hidden++;
            ret = c->hidden_ret;
            break;
        }
        if (!r->text) {
            c->null_text++;
            break;
        }
        {
            size_t n = strlen(r->text);
            buf_add(&c->all, r->text, n);
            if (st == RKLLM_RUN_WAITING) {
                c->n_waiting++;
                buf_add(&c->held, r->text, n);
            } else {
                c->n_normal++;
                buf_add(&c->normal, r->text, n);
                if (!utf8_valid((const unsigned char *)r->text, n))
                    c->normal_bad++;
                buf_add(&c->held, r->text, n);
                if (!utf8_valid((const unsigned char *)c->held.p, c->held.n))
                    c->cont_bad++;
                c->held.n = 0;
                if (r->text[0] == '[') {
                    char *end;
                    unsigned long long v = strtoull(r->text + 1, &end, 10);
                    if (*end != ']' || end[1] || v < c->last_stamp)
                        c->stamps_bad++;
                    c->last_stamp = v;
                } else {
                    c->stamps_bad++;
                }
                if (c->pause_after && c->n_normal >= c->pause_after)
                    ret = 1;
            }
        }
        break;
    case RKLLM_RUN_FINISH:
        c->n_finish++;
        c->perf = r->perf;
        break;
    case RKLLM_RUN_ERROR:
        c->n_error++;
        if (r->text)
            c->error_text_nonnull++;
        break;
    }
    pthread_mutex_unlock(&c->mu);
    return ret;
}

/* ---- helpers ----------------------------------------------------------- */

static char tmpdir[256];
static char record_path[300];

static char *write_model(const char *name, const char *body)
{
    static char paths[40][320];
    static int used;
    char *p = paths[used++ % 40];
    snprintf(p, 320, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        perror(p);
        exit(2);
    }
    fputs(body, f);
    fclose(f);
    return p;
}

/* model file with the shared record key and extra lines */
static char *standin_model(const char *name, const char *extra)
{
    char body[2048];
    snprintf(body, sizeof body, "#rkstream-standin\n# test model\nrecord = %s\n%s\n",
             record_path, extra);
    return write_model(name, body);
}

#if RKLLM_LINE >= 13
static collector *fallback_userdata; /* RKLLMCallback.result_userdata */
#endif

static int init_with(LLMHandle *h, const char *path, int max_new_tokens)
{
    RKLLMParam p = rkllm_createDefaultParam();
    p.model_path = path;
    p.max_new_tokens = max_new_tokens;
    p.extend_param.enabled_cpus_mask = CPU4 | CPU5 | CPU6 | CPU7;
#if RKLLM_LINE >= 13
    RKLLMCallback cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.result_callback = on_result;
    cbs.result_userdata = fallback_userdata;
    return rkllm_init(h, &p, &cbs);
#else
    p.img_start = "<|vision_start|>";
    p.img_end = "<|vision_end|>";
    p.img_content = "<|image_pad|>";
    return rkllm_init(h, &p, on_result);
#endif
}

static int run_text(LLMHandle h, const char *prompt, collector *c, int keep_history,
                    int max_new)
{
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = prompt;
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = RKLLM_INFER_GENERATE;
    ip.keep_history = keep_history;
#if RKLLM_LINE >= 13
    ip.max_new_tokens = max_new;
#else
    (void)max_new;
#endif
    return rkllm_run(h, &in, &ip, c);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_add(&b, chunk, n);
    fclose(f);
    if (!b.p)
        buf_add(&b, "", 0);
    return b.p;
}

/* ---- tests ------------------------------------------------------------- */

static void test_defaults(void)
{
    RKLLMParam p = rkllm_createDefaultParam();
    CHECK(p.top_k == 40, "top_k %d", p.top_k);
    CHECK(fabsf(p.top_p - 0.9f) < 1e-6f, "top_p %g", p.top_p);
    CHECK(fabsf(p.temperature - 0.8f) < 1e-6f, "temperature %g", p.temperature);
    CHECK(fabsf(p.repeat_penalty - 1.1f) < 1e-6f, "repeat_penalty %g", p.repeat_penalty);
    CHECK(p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f, "penalties");
    CHECK(p.mirostat == 0 && p.mirostat_tau == 5.0f && fabsf(p.mirostat_eta - 0.1f) < 1e-6f,
          "mirostat");
    CHECK(p.max_context_len == 4096 && p.max_new_tokens == 512 && p.n_keep == -1,
          "ctx %d new %d keep %d", p.max_context_len, p.max_new_tokens, p.n_keep);
    CHECK(p.extend_param.base_domain_id == 0 && p.extend_param.enabled_cpus_num == 4 &&
              p.extend_param.n_batch == 1 && p.extend_param.enabled_cpus_mask == 0 &&
              p.extend_param.embed_flash == 0 && p.extend_param.use_cross_attn == 0,
          "extend_param");
    CHECK(p.model_path == NULL && !p.skip_special_token && !p.is_async, "misc defaults");
}

static void test_init_failures(void)
{
    LLMHandle h = (LLMHandle)0x1;
    char missing[320];
    snprintf(missing, sizeof missing, "%s/does-not-exist.rkllm", tmpdir);
    CHECK(init_with(&h, missing, 0) == -1 && h == NULL, "missing model file must fail");
    h = (LLMHandle)0x1;
    CHECK(init_with(&h, write_model("rknn.rkllm", "RKNN\x01\x02garbage"), 0) == -1 && h == NULL,
          "RKNN file must fail");
    CHECK(init_with(&h, standin_model("failinit.rkllm", "fail_init = 1"), 0) == -1,
          "fail_init must fail");
    /* any other content: accepted with defaults */
    collector c;
    col_init(&c);
    CHECK(init_with(&h, write_model("opaque.rkllm", "\x7f" "ELF not a standin model\n"), 0) == 0 &&
              h != NULL,
          "opaque file must load");
    if (h) {
        CHECK(run_text(h, "ping", &c, 0, 0) == 0, "run on opaque model");
        CHECK(strcmp(buf_str(&c.normal), "Echo: ping") == 0, "got '%s'", buf_str(&c.normal));
        rkllm_destroy(h);
    }
    col_free(&c);
}

static void test_echo(LLMHandle h)
{
    collector c;
    col_init(&c);
    pid_t me = gettid();
    int rc = run_text(h, "  hello \n\t world  [[prefill_delay_us=20000]] ", &c, 0, 0);
    CHECK(rc == 0, "rc %d", rc);
    CHECK(strcmp(buf_str(&c.normal), "Echo: hello world") == 0, "got '%s'", buf_str(&c.normal));
    CHECK(c.n_normal == 3 && c.n_waiting == 0, "normal %d waiting %d", c.n_normal, c.n_waiting);
    CHECK(c.n_finish == 1 && c.n_error == 0 && c.after_end == 0, "finish %d error %d after %d",
          c.n_finish, c.n_error, c.after_end);
    CHECK(c.perf.prefill_tokens == 2, "prefill_tokens %d", c.perf.prefill_tokens);
    CHECK(c.perf.generate_tokens == 3, "generate_tokens %d", c.perf.generate_tokens);
    CHECK(c.perf.prefill_time_ms >= 19.0f && c.perf.prefill_time_ms < 2000.0f,
          "prefill_time_ms %g", c.perf.prefill_time_ms);
    CHECK(c.perf.generate_time_ms >= 0.0f && c.perf.generate_time_ms < 2000.0f,
          "generate_time_ms %g", c.perf.generate_time_ms);
    CHECK(c.perf.memory_usage_mb > 0.0f, "memory_usage_mb %g", c.perf.memory_usage_mb);
    CHECK(c.tid != 0 && c.tid != me && !c.tids_mixed,
          "native callbacks must come from another (single) thread: %d vs caller %d", c.tid, me);
    CHECK(rkllm_is_running(h) == 0, "idle after run");
    col_free(&c);
}

static const char utf8_reply[] = "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89";

static void test_utf8(LLMHandle h)
{
    const size_t nbytes = sizeof utf8_reply - 1; /* 18 */
    const char *modes[] = {"continue", "repeat", "none"};
    for (int m = 0; m < 3; m++) {
        collector c;
        col_init(&c);
        char prompt[256];
        snprintf(prompt, sizeof prompt,
                 "hi [[reply=h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89]] "
                 "[[token_bytes=1]] [[waiting=%s]]",
                 modes[m]);
        int rc = run_text(h, prompt, &c, 0, 0);
        CHECK(rc == 0 && c.n_finish == 1, "%s: rc %d finish %d", modes[m], rc, c.n_finish);
        CHECK(c.perf.generate_tokens == (int)nbytes, "%s: generate_tokens %d", modes[m],
              c.perf.generate_tokens);
        CHECK(c.n_normal + c.n_waiting == (int)nbytes, "%s: steps %d", modes[m],
              c.n_normal + c.n_waiting);
        CHECK(c.perf.prefill_tokens == 1, "%s: prefill_tokens %d", modes[m],
              c.perf.prefill_tokens);
        if (m == 0) {
            CHECK(strcmp(buf_str(&c.all), utf8_reply) == 0, "continue: all steps joined");
            CHECK(c.n_waiting == 8, "continue: waiting %d", c.n_waiting);
            CHECK(c.cont_bad == 0, "continue: held+T not valid UTF-8 %d times", c.cont_bad);
            CHECK(c.normal_bad > 0, "continue: NORMAL text alone should be partial");
        } else if (m == 1) {
            CHECK(strcmp(buf_str(&c.normal), utf8_reply) == 0, "repeat: NORMAL texts joined");
            CHECK(c.n_waiting == 8, "repeat: waiting %d", c.n_waiting);
            CHECK(c.normal_bad == 0, "repeat: NORMAL text invalid %d times", c.normal_bad);
        } else {
            CHECK(strcmp(buf_str(&c.normal), utf8_reply) == 0, "none: NORMAL texts joined");
            CHECK(c.n_waiting == 0, "none: waiting %d", c.n_waiting);
            CHECK(c.normal_bad > 0, "none: raw bytes should split characters");
        }
        col_free(&c);
    }

    /* word tokens keep characters whole */
    collector c;
    col_init(&c);
    run_text(h, "[[reply=h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89]]", &c, 0, 0);
    CHECK(strcmp(buf_str(&c.normal), utf8_reply) == 0 && c.n_normal == 3 && c.n_waiting == 0,
          "word tokens: normal %d", c.n_normal);
    col_free(&c);

    /* cut inside a character at the length limit: held bytes are flushed */
    col_init(&c);
    run_text(h, "[[reply=\xc3\xa9]] [[token_bytes=1]] [[n_tokens=1]]", &c, 0, 0);
    CHECK(c.n_waiting == 1 && c.n_normal == 1 && c.n_finish == 1 &&
              strcmp(buf_str(&c.normal), "\xc3") == 0,
          "flush: waiting %d normal %d", c.n_waiting, c.n_normal);
    col_free(&c);
}

static void test_length(const char *model_path)
{
    LLMHandle h = NULL;
    CHECK(init_with(&h, model_path, 7) == 0, "init length model");
    if (!h)
        return;
    collector c;
    col_init(&c);
    int rc = run_text(h, "go", &c, 0, 0);
    CHECK(rc == 0 && c.n_normal == 7 && c.n_finish == 1 && c.perf.generate_tokens == 7,
          "init cap: rc %d normal %d gen %d", rc, c.n_normal, c.perf.generate_tokens);
    CHECK(strcmp(buf_str(&c.normal), "w w w w w w w ") == 0, "cycled text '%s'",
          buf_str(&c.normal));
    col_free(&c);
#if RKLLM_LINE >= 13
    col_init(&c);
    rc = run_text(h, "go", &c, 0, 3);
    CHECK(rc == 0 && c.n_normal == 3 && c.perf.generate_tokens == 3,
          "per-run cap: rc %d normal %d", rc, c.n_normal);
    col_free(&c);
#endif
    /* n_tokens shorter than the cap: exactly n_tokens */
    col_init(&c);
    rc = run_text(h, "go [[n_tokens=4]]", &c, 0, 0);
    CHECK(rc == 0 && c.n_normal == 4, "n_tokens=4: normal %d", c.n_normal);
    col_free(&c);
    rkllm_destroy(h);
}

typedef struct {
    LLMHandle h;
    const char *prompt;
    collector *c;
    int rc;
    uint64_t t_end;
} run_arg;

static void *run_thread(void *p)
{
    run_arg *a = p;
    a->rc = run_text(a->h, a->prompt, a->c, 0, 0);
    a->t_end = now_ns();
    return NULL;
}

static void abort_case(LLMHandle h, const char *prompt, int wait_tokens, int expect_finish,
                       const char *label)
{
    collector c;
    col_init(&c);
    run_arg a = {h, prompt, &c, 99, 0};
    pthread_t t;
    pthread_create(&t, NULL, run_thread, &a);
    uint64_t deadline = now_ns() + 3000000000ull;
    if (wait_tokens > 0) {
        while (col_count(&c, 0) < wait_tokens && now_ns() < deadline)
            sleep_ms(1);
    } else {
        sleep_ms(30);
    }
    CHECK(rkllm_is_running(h) == 1, "%s: is_running during run", label);
    uint64_t t_abort = now_ns();
    CHECK(rkllm_abort(h) == 0, "%s: abort ret", label);
    pthread_join(t, NULL);
    double ms = (double)(a.t_end - t_abort) / 1e6;
    CHECK(a.rc == 0, "%s: rc %d", label, a.rc);
    CHECK(ms < 25.0, "%s: run returned %.3f ms after abort", label, ms);
    CHECK(c.n_finish == expect_finish && c.n_error == 0, "%s: finish %d error %d", label,
          c.n_finish, c.n_error);
    CHECK(rkllm_is_running(h) == 0, "%s: idle after abort", label);
    printf("  %s: stopped %.3f ms after rkllm_abort\n", label, ms);
    col_free(&c);
}

static void test_abort(LLMHandle h)
{
    abort_case(h, "go [[token_delay_us=2000]] [[n_tokens=100000]]", 3, 1, "abort mid-stream");
    abort_case(h, "go [[token_delay_us=2000]] [[n_tokens=100000]] [[finish_on_abort=0]]", 3, 0,
               "abort without FINISH");
    abort_case(h, "go [[prefill_delay_us=10000000]]", 0, 1, "abort in prefill");
}

static void test_errors(LLMHandle h)
{
    collector c;
    col_init(&c);
    int rc = run_text(h, "[[reply=a b c d e]] [[error_after=2]]", &c, 0, 0);
    CHECK(rc == -1 && c.n_normal == 2 && c.n_error == 1 && c.n_finish == 0 &&
              c.error_text_nonnull == 0,
          "error_after: rc %d normal %d error %d finish %d", rc, c.n_normal, c.n_error,
          c.n_finish);
    col_free(&c);

    col_init(&c);
    rc = run_text(h, "x [[fail_run=1]]", &c, 0, 0);
    CHECK(rc == -1 && c.n_normal == 0 && c.n_error == 1 && c.n_finish == 0 &&
              c.error_text_nonnull == 0,
          "fail_run: rc %d normal %d error %d", rc, c.n_normal, c.n_error);
    col_free(&c);

    /* a NULL input is refused with an ERROR step as well */
    col_init(&c);
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    rc = rkllm_run(h, NULL, &ip, &c);
    CHECK(rc == -1 && c.n_error == 1, "NULL input: rc %d error %d", rc, c.n_error);
    col_free(&c);
}

static void test_pause_and_stamp(LLMHandle h)
{
    collector c;
    col_init(&c);
    c.pause_after = 2;
    int rc = run_text(h, "[[reply=a b c d e]]", &c, 0, 0);
    CHECK(rc == 0 && c.n_normal == 2 && c.n_finish == 1 && c.perf.generate_tokens == 2,
          "pause: rc %d normal %d gen %d", rc, c.n_normal, c.perf.generate_tokens);
    col_free(&c);

    col_init(&c);
    rc = run_text(h, "[[reply=a b c d e]] [[stamp=1]] [[token_bytes=1]]", &c, 0, 0);
    CHECK(rc == 0 && c.n_normal == 9 && c.stamps_bad == 0 && c.last_stamp > 0,
          "stamp: normal %d bad %d", c.n_normal, c.stamps_bad);
    col_free(&c);
}

static void test_history(LLMHandle h)
{
    collector c;
    int sizes[4] = {-1, -1, -1, -1};
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0, "clear before history test");
    col_init(&c);
    run_text(h, "a b c [[reply=x y]]", &c, 1, 0);
    CHECK(c.perf.prefill_tokens == 3, "first prefill %d", c.perf.prefill_tokens);
    col_free(&c);
    col_init(&c);
    run_text(h, "d e [[reply=x y]]", &c, 1, 0);
    CHECK(c.perf.prefill_tokens == 2, "second prefill %d (only the new turn)",
          c.perf.prefill_tokens);
    col_free(&c);
    CHECK(rkllm_get_kv_cache_size(h, sizes) == 0 && sizes[0] == 9, "kv size %d", sizes[0]);
    CHECK(rkllm_clear_kv_cache(h, 1, NULL, NULL) == 0, "clear");
    rkllm_get_kv_cache_size(h, sizes);
    CHECK(sizes[0] == 0, "kv size after clear %d", sizes[0]);
    col_init(&c);
    run_text(h, "d e [[reply=x y]]", &c, 1, 0);
    run_text(h, "d e [[reply=x y]]", &c, 0, 0);
    CHECK(c.perf.prefill_tokens == 1, "keep_history=0 repeat prefill %d (last word again)",
          c.perf.prefill_tokens);
    col_free(&c);
    col_init(&c);
    run_text(h, "d e [[reply=x y]] [[auto_prefix_reuse=0]]", &c, 0, 0);
    CHECK(c.perf.prefill_tokens == 2, "no reuse: prefill %d", c.perf.prefill_tokens);
    col_free(&c);
}

/* ---- KV cache model ---------------------------------------------------- */

static uint64_t fnv1a64(const char *s, size_t n)
{
    uint64_t v = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        v ^= (unsigned char)s[i];
        v *= 0x100000001b3ull;
    }
    return v;
}

/* The last record line of `call` (malloc'd), NULL if none. */
static char *last_record(const char *call)
{
    char *text = slurp(record_path);
    if (!text)
        return NULL;
    char want[64];
    snprintf(want, sizeof want, "{\"call\":\"%s\",", call);
    char *found = NULL;
    size_t found_n = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        if (!strncmp(line, want, strlen(want))) {
            found = line;
            found_n = n;
        }
        line = nl ? nl + 1 : line + n;
    }
    char *out = NULL;
    if (found) {
        out = malloc(found_n + 1);
        if (!out)
            abort();
        memcpy(out, found, found_n);
        out[found_n] = '\0';
    }
    free(text);
    return out;
}

/* An integer field of a record line, -999999 if missing. */
static long long rec_int(const char *line, const char *key)
{
    char want[64];
    snprintf(want, sizeof want, "\"%s\":", key);
    const char *p = line ? strstr(line, want) : NULL;
    if (!p)
        return -999999;
    return strtoll(p + strlen(want), NULL, 10);
}

/* 1 if a string field of a record line holds exactly `escaped` (JSON-escaped). */
static int rec_str_is(const char *line, const char *key, const char *escaped)
{
    char want[1024];
    snprintf(want, sizeof want, "\"%s\":\"%s\"", key, escaped);
    return line && strstr(line, want) != NULL;
}

typedef struct {
    long long kv_before, kv_reused, prefill_bytes, history_tokens;
    long long kv_after, kv_tokens_after, prefill_tokens;
    char *run, *end;
} kv_rec;

static void kv_rec_load(kv_rec *r)
{
    r->run = last_record("run");
    r->end = last_record("run_end");
    r->kv_before = rec_int(r->run, "kv_before");
    r->kv_reused = rec_int(r->run, "kv_reused");
    r->prefill_bytes = rec_int(r->run, "prefill_bytes");
    r->history_tokens = rec_int(r->run, "history_tokens");
    r->kv_after = rec_int(r->end, "kv_after");
    r->kv_tokens_after = rec_int(r->end, "kv_tokens_after");
    r->prefill_tokens = rec_int(r->end, "prefill_tokens");
}

static void kv_rec_free(kv_rec *r)
{
    free(r->run);
    free(r->end);
}

/* One text run; fills the collector and the records of the run. */
static int kv_run(LLMHandle h, const char *prompt, int keep_history, collector *c, kv_rec *r)
{
    col_init(c);
    int rc = run_text(h, prompt, c, keep_history, 0);
    kv_rec_load(r);
    return rc;
}

static void kv_done(collector *c, kv_rec *r)
{
    col_free(c);
    kv_rec_free(r);
}

static int kv_size(LLMHandle h)
{
    int sizes[1] = {-1};
    rkllm_get_kv_cache_size(h, sizes);
    return sizes[0];
}

static LLMHandle kv_handle(const char *name, const char *extra, int pass_through)
{
    LLMHandle h = NULL;
    CHECK(init_with(&h, standin_model(name, extra), 0) == 0 && h, "init %s", name);
    if (h && pass_through)
        CHECK(rkllm_set_chat_template(h, "", "", "") == 0, "pass-through template");
    return h;
}

static void test_kv_append(void)
{
    LLMHandle h = kv_handle("kv-append.rkllm", "", 1);
    if (!h)
        return;
    collector c;
    kv_rec r;
    /* turn 1: 40 new bytes at 2 ms each */
    kv_run(h, "[[reply=x y]][[prefill_us_per_byte=2000]]one two three four five six seven eighty",
           1, &c, &r);
    CHECK(r.kv_before == 0 && r.kv_reused == 0 && r.prefill_bytes == 40, "turn 1: %lld %lld %lld",
          r.kv_before, r.kv_reused, r.prefill_bytes);
    CHECK(c.perf.prefill_tokens == 8 && r.prefill_tokens == 8, "turn 1 prefill tokens %d",
          c.perf.prefill_tokens);
    CHECK(c.perf.prefill_time_ms >= 79.0f, "turn 1 prefill %.3f ms", c.perf.prefill_time_ms);
    CHECK(r.kv_after == 43 && r.kv_tokens_after == 10, "turn 1 kv %lld bytes %lld tokens",
          r.kv_after, r.kv_tokens_after);
    CHECK(rec_str_is(r.run, "kv_text_new", "one two three four five six seven eighty"),
          "turn 1 kv_text_new: %s", r.run);
    kv_done(&c, &r);
    /* turn 2: only its 3 new bytes are prefilled */
    kv_run(h, "[[reply=z]][[prefill_us_per_byte=2000]] ok", 1, &c, &r);
    CHECK(r.kv_before == 43 && r.kv_reused == 43 && r.prefill_bytes == 3,
          "turn 2: %lld %lld %lld", r.kv_before, r.kv_reused, r.prefill_bytes);
    CHECK(c.perf.prefill_tokens == 1 && r.history_tokens == 10, "turn 2 prefill %d history %lld",
          c.perf.prefill_tokens, r.history_tokens);
    CHECK(c.perf.prefill_time_ms < 60.0f, "turn 2 prefill %.3f ms", c.perf.prefill_time_ms);
    CHECK(rec_str_is(r.run, "kv_text_new", " ok"), "turn 2 kv_text_new: %s", r.run);
    CHECK(r.kv_after == 47 && r.kv_tokens_after == 12 && kv_size(h) == 12,
          "turn 2 kv %lld bytes %lld tokens, size %d", r.kv_after, r.kv_tokens_after,
          kv_size(h));
    kv_done(&c, &r);
    /* ranged clear of token positions [1, 3) ("two three ") */
    int s = 1, e = 3;
    CHECK(rkllm_clear_kv_cache(h, 0, &s, &e) == 0 && kv_size(h) == 10, "ranged clear: size %d",
          kv_size(h));
    char *cl = last_record("clear_kv_cache");
    CHECK(rec_int(cl, "kv_after") == 37, "ranged clear kv_after %lld", rec_int(cl, "kv_after"));
    free(cl);
    CHECK(rkllm_clear_kv_cache(h, 1, NULL, NULL) == 0 && kv_size(h) == 0, "clear: size %d",
          kv_size(h));
    kv_run(h, "[[reply=z]]again", 1, &c, &r);
    CHECK(r.kv_before == 0 && r.prefill_bytes == 5, "after clear: %lld %lld", r.kv_before,
          r.prefill_bytes);
    kv_done(&c, &r);
    rkllm_destroy(h);
}

static void test_kv_prefix_reuse(void)
{
    LLMHandle h = kv_handle("kv-reuse.rkllm", "reply = ok", 1);
    if (!h)
        return;
    collector c;
    kv_rec r;
    kv_run(h, "alpha beta gamma delta", 0, &c, &r);
    CHECK(r.prefill_bytes == 22 && c.perf.prefill_tokens == 4 && r.kv_after == 24,
          "first: %lld bytes %d tokens kv %lld", r.prefill_bytes, c.perf.prefill_tokens,
          r.kv_after);
    kv_done(&c, &r);
    /* a changed middle: only "alpha " is reused */
    kv_run(h, "alpha BETA gamma delta", 0, &c, &r);
    CHECK(r.kv_before == 24 && r.kv_reused == 6 && r.prefill_bytes == 16,
          "changed middle: %lld %lld %lld", r.kv_before, r.kv_reused, r.prefill_bytes);
    CHECK(c.perf.prefill_tokens == 3 && r.history_tokens == 1, "changed middle: %d tokens %lld",
          c.perf.prefill_tokens, r.history_tokens);
    CHECK(rec_str_is(r.run, "kv_text_new", "BETA gamma delta"), "changed middle: %s", r.run);
    CHECK(r.kv_after == 24 && r.kv_tokens_after == 5, "changed middle kv %lld / %lld",
          r.kv_after, r.kv_tokens_after);
    kv_done(&c, &r);
    /* the whole cache plus more: everything before is reused */
    kv_run(h, "alpha BETA gamma deltaok more", 0, &c, &r);
    CHECK(r.kv_reused == 24 && r.prefill_bytes == 5 && c.perf.prefill_tokens == 1 &&
              r.history_tokens == 5,
          "extension: %lld %lld %d %lld", r.kv_reused, r.prefill_bytes, c.perf.prefill_tokens,
          r.history_tokens);
    kv_done(&c, &r);
    /* a cut inside a word: the partial word counts as a token */
    kv_run(h, "alpha BETA gamma deltaOK more", 0, &c, &r);
    CHECK(r.kv_reused == 22 && r.prefill_bytes == 7 && c.perf.prefill_tokens == 2,
          "mid-word: %lld %lld %d", r.kv_reused, r.prefill_bytes, c.perf.prefill_tokens);
    CHECK(r.kv_tokens_after == 7, "mid-word kv tokens %lld", r.kv_tokens_after);
    kv_done(&c, &r);
    /* the same input again: its last word is computed again */
    kv_run(h, "alpha BETA gamma deltaOK more", 0, &c, &r);
    CHECK(r.kv_reused == 25 && r.prefill_bytes == 4 && c.perf.prefill_tokens == 1,
          "repeat: %lld %lld %d", r.kv_reused, r.prefill_bytes, c.perf.prefill_tokens);
    kv_done(&c, &r);
    /* auto_prefix_reuse off: keep_history=0 clears and prefills everything */
    kv_run(h, "alpha BETA gamma deltaOK more [[auto_prefix_reuse=0]]", 0, &c, &r);
    CHECK(r.kv_reused == 0 && r.prefill_bytes == 30 && c.perf.prefill_tokens == 5,
          "reuse off: %lld %lld %d", r.kv_reused, r.prefill_bytes, c.perf.prefill_tokens);
    kv_done(&c, &r);
    /* token input: the ids are compared too */
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_TOKEN;
    int32_t ids[4] = {7, 8, 9, 10};
    in.token_input.input_ids = ids;
    in.token_input.n_tokens = 3;
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    CHECK(c.perf.prefill_tokens == 3, "tokens: prefill %d", c.perf.prefill_tokens);
    col_free(&c);
    in.token_input.n_tokens = 4;
    col_init(&c);
    rkllm_run(h, &in, &ip, &c);
    kv_rec_load(&r);
    CHECK(c.perf.prefill_tokens == 1 && rec_str_is(r.run, "kv_text_new", "<t:10> "),
          "tokens again: prefill %d %s", c.perf.prefill_tokens, r.run);
    kv_done(&c, &r);
    rkllm_destroy(h);
}

static void test_kv_templates(void)
{
    LLMHandle h = kv_handle("kv-template.rkllm", "reply = ok", 0);
    if (!h)
        return;
    collector c;
    kv_rec r;
    /* the built-in template wraps the input; its text holds no tokens */
    kv_run(h, "hi there", 0, &c, &r);
    CHECK(rec_str_is(r.run, "kv_text_new",
                     "<|im_start|>user\\u000ahi there<|im_end|>\\u000a<|im_start|>assistant"
                     "\\u000a"),
          "default template: %s", r.run);
    CHECK(r.prefill_bytes == 58 && c.perf.prefill_tokens == 2 && r.kv_tokens_after == 3,
          "default template: %lld bytes %d tokens kv %lld", r.prefill_bytes,
          c.perf.prefill_tokens, r.kv_tokens_after);
    CHECK(strcmp(buf_str(&c.normal), "ok") == 0, "reply '%s'", buf_str(&c.normal));
    kv_done(&c, &r);
    /* setting a template clears the cache; empty parts pass the text through */
    CHECK(rkllm_set_chat_template(h, "", "", "") == 0 && kv_size(h) == 0, "cleared: %d",
          kv_size(h));
    kv_run(h, "hi there", 0, &c, &r);
    CHECK(r.kv_before == 0 && r.prefill_bytes == 8 && rec_str_is(r.run, "kv_text_new", "hi there"),
          "pass-through: %s", r.run);
    kv_done(&c, &r);
    /* prefix and postfix wrap every run; the system prompt goes in once */
    CHECK(rkllm_set_chat_template(h, "SYS ", "<u>", "</u>") == 0 && kv_size(h) == 0,
          "cleared again");
    kv_run(h, "hi", 1, &c, &r);
    CHECK(rec_str_is(r.run, "kv_text_new", "SYS <u>hi</u>") && c.perf.prefill_tokens == 1,
          "wrapped: %s", r.run);
    CHECK(r.kv_after == 15 && r.kv_tokens_after == 2, "wrapped kv %lld %lld", r.kv_after,
          r.kv_tokens_after);
    kv_done(&c, &r);
    kv_run(h, "yo", 1, &c, &r);
    CHECK(rec_str_is(r.run, "kv_text_new", "<u>yo</u>") && r.kv_reused == 15,
          "second turn: %s", r.run);
    kv_done(&c, &r);
    /* keep_system_prompt keeps "SYS " */
    CHECK(rkllm_clear_kv_cache(h, 1, NULL, NULL) == 0, "clear keeping the system prompt");
    char *cl = last_record("clear_kv_cache");
    CHECK(rec_int(cl, "kv_after") == 4 && kv_size(h) == 0, "kept %lld", rec_int(cl, "kv_after"));
    free(cl);
    kv_run(h, "yo", 1, &c, &r);
    CHECK(r.kv_before == 4 && rec_str_is(r.run, "kv_text_new", "<u>yo</u>"), "after keep: %s",
          r.run);
    kv_done(&c, &r);
    /* keep_history = 0 sends the system prompt again and reuses it */
    kv_run(h, "yo", 0, &c, &r);
    CHECK(r.kv_reused == 7 && rec_str_is(r.run, "kv_text_new", "yo</u>"), "reuse with system: %s",
          r.run);
    kv_done(&c, &r);
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0 && kv_size(h) == 0, "clear all");
    kv_run(h, "yo", 1, &c, &r);
    CHECK(r.kv_before == 0 && rec_str_is(r.run, "kv_text_new", "SYS <u>yo</u>"),
          "system prompt again: %s", r.run);
    kv_done(&c, &r);
    rkllm_destroy(h);
}

static void *kv_run_thread(void *p)
{
    run_arg *a = p;
    a->rc = run_text(a->h, a->prompt, a->c, 1, 0);
    return NULL;
}

static void test_kv_end_of_turn(void)
{
    LLMHandle h = kv_handle("kv-eot.rkllm", "reply = a b c\nend_of_turn = <|im_end|>", 1);
    if (!h)
        return;
    collector c;
    kv_rec r;
    kv_run(h, "q", 1, &c, &r);
    CHECK(r.kv_after == 6 && r.kv_tokens_after == 4, "eos, not kept: %lld %lld", r.kv_after,
          r.kv_tokens_after);
    kv_done(&c, &r);
    kv_run(h, "q [[kv_keeps_end_of_turn=1]]", 1, &c, &r);
    CHECK(r.kv_after == 6 + 2 + 5 + 10 && r.kv_tokens_after == 9, "eos, kept: %lld %lld",
          r.kv_after, r.kv_tokens_after);
    kv_done(&c, &r);
    /* cuts keep only what was generated */
    col_init(&c);
    c.pause_after = 1;
    run_text(h, "q [[kv_keeps_end_of_turn=1]]", &c, 1, 0);
    kv_rec_load(&r);
    CHECK(r.kv_after == r.kv_before + r.prefill_bytes + 2 && strstr(r.end, "\"pause\""),
          "pause: %lld vs %lld + %lld", r.kv_after, r.kv_before, r.prefill_bytes);
    kv_done(&c, &r);
    kv_run(h, "q [[kv_keeps_end_of_turn=1]] [[error_after=2]]", 1, &c, &r);
    CHECK(r.kv_after == r.kv_before + r.prefill_bytes + 4 && strstr(r.end, "\"error\""),
          "error: %lld vs %lld + %lld", r.kv_after, r.kv_before, r.prefill_bytes);
    kv_done(&c, &r);
    kv_run(h, "q [[kv_keeps_end_of_turn=1]] [[n_tokens=2]]", 1, &c, &r);
    CHECK(r.kv_after == r.kv_before + r.prefill_bytes + 4 + 10, "n_tokens eos: %lld", r.kv_after);
    kv_done(&c, &r);
    /* aborted in prefill: the input is in, nothing generated */
    col_init(&c);
    run_arg a = {h, "q [[kv_keeps_end_of_turn=1]] [[prefill_delay_us=10000000]]", &c, 99, 0};
    pthread_t t;
    pthread_create(&t, NULL, kv_run_thread, &a);
    sleep_ms(30);
    rkllm_abort(h);
    pthread_join(t, NULL);
    kv_rec_load(&r);
    CHECK(r.kv_after == r.kv_before + r.prefill_bytes && strstr(r.end, "\"abort\""),
          "abort in prefill: %lld vs %lld + %lld", r.kv_after, r.kv_before, r.prefill_bytes);
    kv_done(&c, &r);
    /* failed runs leave the cache alone */
    long long before = r.kv_after;
    kv_run(h, "q [[fail_run=1]]", 1, &c, &r);
    CHECK(r.kv_after == before && r.prefill_bytes == 0, "fail_run: %lld", r.kv_after);
    kv_done(&c, &r);
    rkllm_destroy(h);
}

static void test_kv_context_reply(void)
{
    LLMHandle h = kv_handle("kv-ctx.rkllm", "reply_mode = context", 1);
    if (!h)
        return;
    collector c;
    kv_rec r;
    char want[128], kv[512];
    kv_run(h, "hello", 1, &c, &r);
    snprintf(want, sizeof want, "ctx:%016llx len:5",
             (unsigned long long)fnv1a64("hello", 5));
    CHECK(strcmp(buf_str(&c.normal), want) == 0, "context '%s' want '%s'", buf_str(&c.normal),
          want);
    snprintf(kv, sizeof kv, "hello%s world", buf_str(&c.normal));
    kv_done(&c, &r);
    kv_run(h, " world", 1, &c, &r);
    snprintf(want, sizeof want, "ctx:%016llx len:%zu",
             (unsigned long long)fnv1a64(kv, strlen(kv)), strlen(kv));
    CHECK(strcmp(buf_str(&c.normal), want) == 0, "context 2 '%s' want '%s'", buf_str(&c.normal),
          want);
    kv_done(&c, &r);
    /* echo stays the directive-free prompt of the run, not the cache */
    kv_run(h, " more [[reply_mode=echo]]", 1, &c, &r);
    CHECK(strcmp(buf_str(&c.normal), "Echo: more") == 0, "echo '%s'", buf_str(&c.normal));
    kv_done(&c, &r);
    rkllm_destroy(h);
}

/* ---- prompt cache ------------------------------------------------------ */

/* One text run with prompt_cache_params (NULL `path` with save = 1: the default path). */
static void pc_run(LLMHandle h, const char *prompt, int keep_history, int save, const char *path,
                   collector *c, kv_rec *r)
{
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = prompt;
    RKLLMPromptCacheParam pcp;
    memset(&pcp, 0, sizeof pcp);
    pcp.save_prompt_cache = save;
    pcp.prompt_cache_path = path;
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = RKLLM_INFER_GENERATE;
    ip.keep_history = keep_history;
    ip.prompt_cache_params = &pcp;
    col_init(c);
    CHECK(rkllm_run(h, &in, &ip, c) == 0, "prompt cache run '%s'", prompt);
    kv_rec_load(r);
}

static void test_prompt_cache(void)
{
    LLMHandle h = kv_handle("pc.rkllm", "reply = x y\nprefill_us_per_byte = 2000", 1);
    if (!h)
        return;
    collector c;
    kv_rec r;
    char path[400], bad[400], cwd[512];
    snprintf(path, sizeof path, "%s/system.cache", tmpdir);
    /* save: the run's effective input goes to the file when the run ends */
    pc_run(h, "SYS one two.\n", 1, 1, path, &c, &r);
    CHECK(rec_int(r.end, "prompt_cache_saved") == 13, "saved %s", r.end);
    char *file = slurp(path);
    CHECK(file && !memcmp(file, "#rkllm-standin-prompt-cache 1\n13 3\nSYS one two.\n\x01", 50),
          "cache file '%s'", file ? file : "(none)");
    free(file);
    kv_done(&c, &r);
    /* save_prompt_cache = 0 writes nothing */
    pc_run(h, "more", 1, 0, path, &c, &r);
    CHECK(strstr(r.end, "\"prompt_cache_saved\":null") != NULL, "no save: %s", r.end);
    kv_done(&c, &r);
    /* missing and malformed files */
    snprintf(bad, sizeof bad, "%s/missing.cache", tmpdir);
    CHECK(rkllm_load_prompt_cache(h, bad) == -1, "missing file loads");
    char *lr = last_record("load_prompt_cache");
    CHECK(rec_int(lr, "ret") == -1 && rec_int(lr, "bytes") == 0, "missing: %s", lr);
    free(lr);
    CHECK(rkllm_load_prompt_cache(h, write_model("bad1.cache", "not a cache")) == -1, "bad magic");
    CHECK(rkllm_load_prompt_cache(h, write_model("bad2.cache",
                                                 "#rkllm-standin-prompt-cache 1\n5 1\nabc")) == -1,
          "short file");
    CHECK(rkllm_load_prompt_cache(h, write_model("bad3.cache",
                                                 "#rkllm-standin-prompt-cache 1\n2 1\nab\x01\x01")) == -1,
          "wrong token count");
    CHECK(rkllm_load_prompt_cache(h, write_model("ok.cache",
                                                 "#rkllm-standin-prompt-cache 1\n2 1\nab\x01\x02")) == 0,
          "hand-written cache");
    /* load: a first turn that starts with the cached bytes prefills only the rest */
    CHECK(rkllm_load_prompt_cache(h, path) == 0, "load the saved cache");
    lr = last_record("load_prompt_cache");
    CHECK(rec_int(lr, "bytes") == 13 && rec_int(lr, "tokens") == 3, "loaded: %s", lr);
    free(lr);
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0 && kv_size(h) == 0, "clear");
    kv_run(h, "SYS one two.\nhello there", 1, &c, &r);
    CHECK(r.kv_before == 0 && r.kv_reused == 13 && rec_int(r.run, "prompt_cache_reused") == 13,
          "first turn: %s", r.run);
    CHECK(r.prefill_bytes == 11 && rec_str_is(r.run, "kv_text_new", "hello there") &&
              c.perf.prefill_tokens == 2 && r.history_tokens == 3,
          "first turn: %lld bytes %d tokens history %lld", r.prefill_bytes,
          c.perf.prefill_tokens, r.history_tokens);
    CHECK(c.perf.prefill_time_ms >= 21.0f && c.perf.prefill_time_ms < 40.0f,
          "first turn prefill %.3f ms (22 expected, 48 without the cache)",
          c.perf.prefill_time_ms);
    CHECK(r.kv_after == 27 && kv_size(h) == 7, "first turn kv %lld bytes %d tokens", r.kv_after,
          kv_size(h));
    kv_done(&c, &r);
    /* keep_history = 1 on a cache that holds something: not at position 0 */
    kv_run(h, "SYS one two.\nagain", 1, &c, &r);
    CHECK(rec_int(r.run, "prompt_cache_reused") == 0 && r.prefill_bytes == 18,
          "appended: %s", r.run);
    kv_done(&c, &r);
    /* keep_history = 0: the cache's own prefix serves where it reaches far enough */
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0, "clear");
    kv_run(h, "SYS one two.\nhello there", 0, &c, &r);
    kv_done(&c, &r);
    kv_run(h, "SYS one two.\nhello again", 0, &c, &r);
    CHECK(r.kv_reused == 19 && rec_int(r.run, "prompt_cache_reused") == 0 &&
              r.prefill_bytes == 5,
          "prefix reuse: %s", r.run);
    kv_done(&c, &r);
    /* ... and the prompt cache where the shared prefix stops short of it */
    kv_run(h, "SYS one TWO.\nq", 0, &c, &r);
    CHECK(r.kv_reused == 8 && rec_int(r.run, "prompt_cache_reused") == 0, "other system: %s",
          r.run);
    kv_done(&c, &r);
    kv_run(h, "SYS one two.\nq", 0, &c, &r);
    CHECK(r.kv_reused == 13 && rec_int(r.run, "prompt_cache_reused") == 5 &&
              r.prefill_bytes == 1 && c.perf.prefill_tokens == 1 && r.history_tokens == 3,
          "prompt cache past the prefix: %s", r.run);
    kv_done(&c, &r);
    /* auto_prefix_reuse = 0 empties the cache; the prompt cache still serves */
    kv_run(h, "SYS one two.\nq[[auto_prefix_reuse=0]]", 0, &c, &r);
    CHECK(r.kv_reused == 13 && rec_int(r.run, "prompt_cache_reused") == 13 &&
              r.prefill_bytes == 1,
          "no auto reuse: %s", r.run);
    kv_done(&c, &r);
    /* an input that is only the cached text: the last word is computed, so no reuse */
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0, "clear");
    kv_run(h, "SYS one two.\n", 1, &c, &r);
    CHECK(rec_int(r.run, "prompt_cache_reused") == 0 && r.prefill_bytes == 13,
          "whole input cached: %s", r.run);
    kv_done(&c, &r);
    /* a cache that ends inside a word of the input: the rest of the word is a token */
    pc_run(h, "SYS on", 0, 1, path, &c, &r);
    kv_done(&c, &r);
    CHECK(rkllm_load_prompt_cache(h, path) == 0, "load the shorter cache");
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0, "clear");
    kv_run(h, "SYS one two", 1, &c, &r);
    CHECK(r.kv_reused == 6 && r.prefill_bytes == 5 && c.perf.prefill_tokens == 2 &&
              r.history_tokens == 2 && r.kv_tokens_after == 6,
          "mid-word: %s / %d", r.run, c.perf.prefill_tokens);
    kv_done(&c, &r);
    /* release: the cache is gone */
    CHECK(rkllm_release_prompt_cache(h) == 0, "release");
    char *rl = last_record("release_prompt_cache");
    CHECK(rl && strstr(rl, "\"was_loaded\":true"), "release record %s", rl);
    free(rl);
    CHECK(rkllm_clear_kv_cache(h, 0, NULL, NULL) == 0, "clear");
    kv_run(h, "SYS one two", 1, &c, &r);
    CHECK(rec_int(r.run, "prompt_cache_reused") == 0 && r.prefill_bytes == 11, "released: %s",
          r.run);
    kv_done(&c, &r);
    /* an unwritable path fails the save, not the run; NULL saves to ./prompt_cache.bin */
    pc_run(h, "x", 1, 1, "/nonexistent-dir/p.cache", &c, &r);
    CHECK(rec_int(r.end, "prompt_cache_saved") == -1 && rec_int(r.end, "ret") == 0,
          "unwritable: %s", r.end);
    kv_done(&c, &r);
    if (getcwd(cwd, sizeof cwd) && chdir(tmpdir) == 0) {
        pc_run(h, "x", 1, 1, NULL, &c, &r);
        CHECK(access("prompt_cache.bin", R_OK) == 0, "default path");
        kv_done(&c, &r);
        CHECK(chdir(cwd) == 0, "back to %s", cwd);
    }
    rkllm_destroy(h);
}

static void test_other_inputs(LLMHandle h)
{
    collector c;
    RKLLMInput in;
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);

    col_init(&c);
    int32_t ids[5] = {1, 2, 3, 4, 5};
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_TOKEN;
    in.token_input.input_ids = ids;
    in.token_input.n_tokens = 5;
    int rc = rkllm_run(h, &in, &ip, &c);
    CHECK(rc == 0 && c.perf.prefill_tokens == 5 && c.n_finish == 1, "token input: prefill %d",
          c.perf.prefill_tokens);
    col_free(&c);

    col_init(&c);
    static float emb[4 * 16];
    for (int i = 0; i < 4 * 16; i++)
        emb[i] = 0.25f;
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_EMBED;
    in.embed_input.embed = emb;
    in.embed_input.n_tokens = 4;
    rc = rkllm_run(h, &in, &ip, &c);
    CHECK(rc == 0 && c.perf.prefill_tokens == 4, "embed input: prefill %d",
          c.perf.prefill_tokens);
    col_free(&c);

    col_init(&c);
    static float img[2 * 3 * 16];
    for (int i = 0; i < 2 * 3 * 16; i++)
        img[i] = 0.5f; /* sum 48 */
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_MULTIMODAL;
    in.multimodal_input.prompt = (char *)"<image> describe [[reply=ok]]";
#if RKLLM_LINE >= 13
    in.multimodal_input.image.image_embed = img;
    in.multimodal_input.image.n_image = 2;
    in.multimodal_input.image.n_image_tokens = 3;
    in.multimodal_input.image.image_width = 392;
    in.multimodal_input.image.image_height = 392;
    in.multimodal_input.image.image_start = "<|vision_start|>";
    in.multimodal_input.image.image_end = "<|vision_end|>";
    in.multimodal_input.image.image_content = "<|image_pad|>";
#else
    in.multimodal_input.image_embed = img;
    in.multimodal_input.n_image = 2;
    in.multimodal_input.n_image_tokens = 3;
    in.multimodal_input.image_width = 392;
    in.multimodal_input.image_height = 392;
#endif
    rc = rkllm_run(h, &in, &ip, &c);
    CHECK(rc == 0 && c.perf.prefill_tokens == 8 && strcmp(buf_str(&c.normal), "ok") == 0,
          "multimodal: prefill %d text '%s'", c.perf.prefill_tokens, buf_str(&c.normal));
    col_free(&c);
}

static void test_threads(void)
{
    /* caller mode: callbacks on the calling thread */
    LLMHandle h = NULL;
    CHECK(init_with(&h, standin_model("caller.rkllm", "callback_thread = caller"), 0) == 0,
          "init caller model");
    if (h) {
        collector c;
        col_init(&c);
        run_text(h, "one two", &c, 0, 0);
        CHECK(c.tid == gettid() && c.n_finish == 1, "caller mode tid %d vs %d", c.tid, gettid());
        col_free(&c);
        rkllm_destroy(h);
    }
}

static void test_async(LLMHandle h)
{
    collector c;
    col_init(&c);
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_PROMPT;
    char prompt[64];
    strcpy(prompt, "a b c [[prefill_delay_us=50000]]");
    in.prompt_input = prompt;
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    uint64_t t0 = now_ns();
    int rc = rkllm_run_async(h, &in, &ip, &c);
    double ms = (double)(now_ns() - t0) / 1e6;
    memset(prompt, 'X', sizeof prompt - 1); /* caller memory may change at once */
    CHECK(rc == 0 && ms < 40.0, "run_async rc %d took %.3f ms", rc, ms);
    CHECK(rkllm_is_running(h) == 1, "is_running after run_async");
    uint64_t deadline = now_ns() + 5000000000ull;
    while (rkllm_is_running(h) && now_ns() < deadline)
        sleep_ms(1);
    CHECK(rkllm_is_running(h) == 0, "async run ended");
    CHECK(c.n_finish == 1 && strcmp(buf_str(&c.normal), "Echo: a b c") == 0 &&
              c.tid != gettid(),
          "async result '%s' finish %d", buf_str(&c.normal), c.n_finish);
    col_free(&c);
}

static void test_concurrent_and_destroy(const char *model)
{
    LLMHandle h = NULL;
    CHECK(init_with(&h, model, 0) == 0, "init for concurrency");
    if (!h)
        return;
    collector c1, c2;
    col_init(&c1);
    col_init(&c2);
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = "long [[token_delay_us=1000]] [[n_tokens=30]]";
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    rkllm_run_async(h, &in, &ip, &c1);
    int rc = run_text(h, "short", &c2, 0, 0);
    CHECK(rc == 0 && c2.n_finish == 1, "second run on busy handle completes");
    /* destroy while the async run may still be going: must abort and wait */
    in.prompt_input = "forever [[token_delay_us=1000]] [[n_tokens=100000000]]";
    while (rkllm_is_running(h))
        sleep_ms(1);
    CHECK(c1.n_finish == 1 && c1.n_normal == 30, "first async run: finish %d normal %d",
          c1.n_finish, c1.n_normal);
    col_free(&c1);
    col_init(&c1);
    rkllm_run_async(h, &in, &ip, &c1);
    sleep_ms(10);
    uint64_t t0 = now_ns();
    CHECK(rkllm_destroy(h) == 0, "destroy while running");
    double ms = (double)(now_ns() - t0) / 1e6;
    CHECK(ms < 50.0 && c1.n_finish == 1, "destroy took %.3f ms, finish %d", ms, c1.n_finish);
    col_free(&c1);
    col_free(&c2);
}

#if RKLLM_LINE >= 13
static void test_userdata_fallback(const char *model)
{
    collector fb;
    col_init(&fb);
    fallback_userdata = &fb;
    LLMHandle h = NULL;
    CHECK(init_with(&h, model, 0) == 0, "init for fallback");
    fallback_userdata = NULL;
    if (h) {
        run_text(h, "fallback", NULL, 0, 0);
        CHECK(fb.n_finish == 1 && strcmp(buf_str(&fb.normal), "Echo: fallback") == 0,
              "result_userdata used when run userdata is NULL");
        rkllm_destroy(h);
    }
    col_free(&fb);
}
#endif


/* ---- injected faults --------------------------------------------------- */

static int count_calls(const char *call)
{
    char *text = slurp(record_path);
    char want[64];
    snprintf(want, sizeof want, "{\"call\":\"%s\",", call);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, want)) != NULL; p++)
        n++;
    free(text);
    return n;
}

/* Wait for a child up to `ms`; kill it with SIGKILL after that. Returns the
 * wait status, and sets *killed when the parent had to kill it. */
static int wait_child(pid_t pid, int ms, int *killed)
{
    int status = 0;
    uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;
    *killed = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0)
            return -1;
        if (now_ns() >= deadline) {
            kill(pid, SIGKILL);
            *killed = 1;
            waitpid(pid, &status, 0);
            return status;
        }
        sleep_ms(1);
    }
}

/* Read what a child wrote to a pipe until EOF (its death), `stop_at` bytes
 * (0: no limit) or `ms`. */
static void read_pipe(int fd, char *out, size_t cap, int ms, size_t stop_at)
{
    size_t n = 0;
    uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (n + 1 < cap && (!stop_at || n < stop_at)) { /* at least one read */
        ssize_t r = read(fd, out + n, cap - 1 - n);
        if (r > 0)
            n += (size_t)r;
        else if (r == 0 || now_ns() >= deadline)
            break;
        else
            sleep_ms(1);
    }
    out[n] = '\0';
}

/* In a crashing child: report how the SIGSEGV came ('K': the kernel, from a
 * real invalid access; 'R': raise/kill), then die of it with the default
 * action (returning re-runs the faulting store, or reaches the fallback). */
static int segv_report_fd = -1;

static void on_segv(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    char tag = info->si_code > 0 ? 'K' : 'R';
    if (write(segv_report_fd, &tag, 1) != 1) {
        /* nothing to do: the parent then sees no tag */
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
}

/*
 * A run that crashes in a forked child: the child runs `prompt` on `model`,
 * one byte per callback goes to a pipe, its stderr to a file.  The parent
 * sees the child die of SIGSEGV after exactly `expect` callbacks.
 */
static void crash_case(const char *model, const char *prompt, const char *expect,
                       const char *expect_fault, const char *label)
{
    char err_path[320];
    snprintf(err_path, sizeof err_path, "%s/crash-stderr.txt", tmpdir);
    int runs_before = count_calls("run"), ends_before = count_calls("run_end");
    int fds[2];
    if (pipe(fds) != 0) {
        CHECK(0, "%s: pipe", label);
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        LLMHandle h = NULL;
        if (init_with(&h, model, 0) != 0)
            _exit(3);
        collector c;
        col_init(&c);
        c.notify_fd = fds[1];
        segv_report_fd = fds[1];
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, NULL);
        run_text(h, prompt, &c, 0, 0);
        _exit(4); /* not reached: the run crashes */
    }
    close(fds[1]);
    char seen[64];
    read_pipe(fds[0], seen, sizeof seen, 5000, 0);
    close(fds[0]);
    int killed;
    int status = wait_child(pid, 5000, &killed);
    CHECK(!killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV,
          "%s: child status %#x (killed %d)", label, status, killed);
    char want[64];
    snprintf(want, sizeof want, "%sK", expect); /* the callbacks, then a kernel SIGSEGV */
    CHECK(strcmp(seen, want) == 0, "%s: pipe '%s', want '%s'", label, seen, want);
    char *err = slurp(err_path);
    char line[128];
    snprintf(line, sizeof line, "E rkllm: stand-in: injected crash after %d tokens\n",
             (int)strlen(expect));
    CHECK(err && strstr(err, line), "%s: stderr '%s'", label, err ? err : "(none)");
    free(err);
    char *run = last_record("run");
    char *fault = last_record("fault");
    CHECK(count_calls("run") == runs_before + 1 && count_calls("run_end") == ends_before,
          "%s: a run record and no run_end", label);
    CHECK(rec_str_is(run, "fault", expect_fault), "%s: run record %s", label,
          run ? run : "(none)");
    CHECK(rec_str_is(fault, "kind", "crash") && rec_int(fault, "after") == (long long)strlen(expect),
          "%s: fault record %s", label, fault ? fault : "(none)");
    free(run);
    free(fault);
}

static void test_fault_crash(void)
{
    char *fault_file = write_model("fault-crash.txt", "");
    char extra[512];
    crash_case(standin_model("crash-key.rkllm", "reply = a b c d\ncrash_after = 2"), "go",
               "NN", "crash:2", "crash_after key");
    crash_case(standin_model("crash-none.rkllm", "reply = a b c d"),
               "go [[crash_after=0]]", "", "crash:0", "crash_after=0 directive");
    /* the control file; callbacks on the caller's thread; beats hang_after */
    snprintf(extra, sizeof extra,
             "reply = a b c d\nfault_file = %s\ncallback_thread = caller\nhang_after = 1",
             fault_file);
    write_model("fault-crash.txt", "  crash 3\n");
    crash_case(standin_model("crash-file.rkllm", extra), "go", "NNN", "crash:3",
               "fault file crash 3");
    /* a crash due after the reply's last token comes before its FINISH */
    crash_case(standin_model("crash-end.rkllm", "reply = a b"), "go [[crash_after=2]]", "NN",
               "crash:2", "crash instead of FINISH");
}

typedef struct {
    LLMHandle h;
    const char *prompt;
    collector *c;
    int rc;
    int done;
} hang_arg;

static void *hang_thread(void *p)
{
    hang_arg *a = p;
    a->rc = run_text(a->h, a->prompt, a->c, 0, 0);
    __atomic_store_n(&a->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static int wait_normal(collector *c, int n, int ms)
{
    uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;
    while (col_count(c, 0) < n && now_ns() < deadline)
        sleep_ms(1);
    return col_count(c, 0);
}

static int wait_done(hang_arg *a, int ms)
{
    uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;
    while (!__atomic_load_n(&a->done, __ATOMIC_SEQ_CST) && now_ns() < deadline)
        sleep_ms(1);
    return __atomic_load_n(&a->done, __ATOMIC_SEQ_CST);
}

static void test_fault_hang(void)
{
    char *fault_file = write_model("fault-hang.txt", "");
    char release[320];
    snprintf(release, sizeof release, "%s/release-me", tmpdir);
    unlink(release);
    char extra[512];
    snprintf(extra, sizeof extra, "reply = a b c d\nfault_file = %s", fault_file);
    LLMHandle h = NULL;
    CHECK(init_with(&h, standin_model("hang.rkllm", extra), 0) == 0, "init hang model");
    if (!h)
        return;
    collector c;

    /* 1. the control file is empty: a normal run */
    col_init(&c);
    CHECK(run_text(h, "go", &c, 0, 0) == 0 && c.n_normal == 4 && c.n_finish == 1,
          "no fault: normal %d finish %d", c.n_normal, c.n_finish);
    char *run = last_record("run");
    CHECK(run && strstr(run, "\"fault\":null,\"fault_source\":null"), "no fault: %s",
          run ? run : "(none)");
    free(run);
    col_free(&c);

    /* 2. "hang 1": no more callbacks, abort ignored, released by the file */
    write_model("fault-hang.txt", "hang 1\n");
    col_init(&c);
    hang_arg a = {h, "go", &c, 99, 0};
    pthread_t t;
    pthread_create(&t, NULL, hang_thread, &a);
    CHECK(wait_normal(&c, 1, 3000) == 1, "hang: first token");
    sleep_ms(40);
    CHECK(col_count(&c, 0) == 1 && col_count(&c, 2) == 0 && !a.done && rkllm_is_running(h),
          "hang: callbacks stopped, run still going");
    CHECK(rkllm_abort(h) == 0, "hang: abort returns 0");
    char *ab = last_record("abort");
    CHECK(ab && strstr(ab, "\"running\":true,\"ignored\":true"), "hang: abort record %s",
          ab ? ab : "(none)");
    free(ab);
    sleep_ms(40);
    CHECK(col_count(&c, 0) == 1 && col_count(&c, 2) == 0 && !a.done && rkllm_is_running(h),
          "hang: abort ignored");
    write_model("fault-hang.txt", "");
    CHECK(wait_done(&a, 3000), "hang: released by emptying the control file");
    pthread_join(t, NULL);
    CHECK(a.rc == 0 && c.n_normal == 1 && c.n_finish == 1 && c.n_error == 0,
          "hang: ends as aborted: rc %d normal %d finish %d", a.rc, c.n_normal, c.n_finish);
    char *end = last_record("run_end");
    char *he = last_record("hang_end");
    run = last_record("run");
    CHECK(rec_str_is(end, "finish", "abort") && rec_int(end, "generated") == 1,
          "hang: run_end %s", end ? end : "(none)");
    CHECK(rec_str_is(he, "released_by", "fault_file") && he &&
              strstr(he, "\"abort_pending\":true"),
          "hang: hang_end %s", he ? he : "(none)");
    CHECK(rec_str_is(run, "fault", "hang:1") && rec_str_is(run, "fault_source", "fault_file"),
          "hang: run record %s", run ? run : "(none)");
    free(end);
    free(he);
    free(run);
    col_free(&c);
    ab = NULL;
    rkllm_abort(h);
    ab = last_record("abort");
    CHECK(ab && strstr(ab, "\"running\":false,\"ignored\":false"), "idle abort record %s",
          ab ? ab : "(none)");
    free(ab);

    /* 3. a directive hang, released by hang_release_file: the run resumes */
    char prompt[512];
    snprintf(prompt, sizeof prompt, "go [[hang_after=2]] [[crash_after=3]] "
                                    "[[hang_release_file=%s]]", release);
    col_init(&c);
    hang_arg b = {h, prompt, &c, 99, 0};
    pthread_create(&t, NULL, hang_thread, &b);
    CHECK(wait_normal(&c, 2, 3000) == 2, "release file: two tokens");
    sleep_ms(30);
    CHECK(col_count(&c, 0) == 2 && !b.done, "release file: hanging");
    write_model("release-me", "");
    CHECK(wait_done(&b, 3000), "release file: released");
    pthread_join(t, NULL);
    CHECK(b.rc == 0 && c.n_normal == 4 && c.n_finish == 1 && !strcmp(buf_str(&c.normal), "a b c d"),
          "release file: resumed to the end: rc %d normal %d '%s'", b.rc, c.n_normal,
          buf_str(&c.normal));
    he = last_record("hang_end");
    run = last_record("run");
    CHECK(rec_str_is(he, "released_by", "release_file") && strstr(he, "\"abort_pending\":false"),
          "release file: %s", he ? he : "(none)");
    CHECK(rec_str_is(run, "fault", "hang:2") && rec_str_is(run, "fault_source", "settings"),
          "release file: run record %s", run ? run : "(none)");
    free(he);
    free(run);
    col_free(&c);
    unlink(release);

    /* 3b. a hang after the last token, aborted meanwhile: ends as aborted, not eos */
    snprintf(prompt, sizeof prompt, "go [[hang_after=4]] [[hang_release_file=%s]]", release);
    col_init(&c);
    hang_arg d = {h, prompt, &c, 99, 0};
    pthread_create(&t, NULL, hang_thread, &d);
    CHECK(wait_normal(&c, 4, 3000) == 4, "hang at the end: four tokens");
    sleep_ms(20);
    CHECK(rkllm_abort(h) == 0 && col_count(&c, 2) == 0 && !d.done, "hang at the end: hung");
    write_model("release-me", "");
    CHECK(wait_done(&d, 3000), "hang at the end: released");
    pthread_join(t, NULL);
    end = last_record("run_end");
    CHECK(d.rc == 0 && c.n_finish == 1 && rec_str_is(end, "finish", "abort") &&
              rec_int(end, "generated") == 4,
          "hang at the end: %s", end ? end : "(none)");
    free(end);
    col_free(&c);
    unlink(release);

    /* 4. bad control file content: a warning, no fault */
    write_model("fault-hang.txt", "hang soon\n");
    col_init(&c);
    CHECK(run_text(h, "go", &c, 0, 0) == 0 && c.n_normal == 4 && c.n_finish == 1,
          "bad control file: normal run");
    run = last_record("run");
    CHECK(run && strstr(run, "\"fault\":null"), "bad control file: %s", run ? run : "(none)");
    free(run);
    col_free(&c);

    /* 5. rkllm_destroy ends a hang (async run, "hang:0" from the file) */
    write_model("fault-hang.txt", "hang:0");
    col_init(&c);
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = "go";
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    CHECK(rkllm_run_async(h, &in, &ip, &c) == 0, "destroy: run_async");
    sleep_ms(30);
    CHECK(col_count(&c, 0) == 0 && rkllm_is_running(h), "destroy: hung before any token");
    uint64_t t0 = now_ns();
    CHECK(rkllm_destroy(h) == 0, "destroy during a hang");
    double ms = (double)(now_ns() - t0) / 1e6;
    he = last_record("hang_end");
    CHECK(ms < 100.0 && c.n_normal == 0 && c.n_finish == 1, "destroy: %.3f ms, finish %d", ms,
          c.n_finish);
    CHECK(rec_str_is(he, "released_by", "destroy"), "destroy: %s", he ? he : "(none)");
    free(he);
    col_free(&c);
    write_model("fault-hang.txt", "");
}

/* A hang nothing releases: a forked child is killed after a timeout. */
static void test_fault_hang_killed(void)
{
    int fds[2];
    if (pipe(fds) != 0) {
        CHECK(0, "hang kill: pipe");
        return;
    }
    char *model = standin_model("hang-kill.rkllm", "reply = a b c d\nhang_after = 1");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, 2);
        LLMHandle h = NULL;
        if (init_with(&h, model, 0) != 0)
            _exit(3);
        collector c;
        col_init(&c);
        c.notify_fd = fds[1];
        run_text(h, "go", &c, 0, 0);
        _exit(4); /* not reached: nothing releases the hang */
    }
    close(fds[1]);
    char seen[64];
    read_pipe(fds[0], seen, sizeof seen, 3000, 1); /* the first token */
    sleep_ms(50);
    char more[8];
    read_pipe(fds[0], more, sizeof more, 0, 0); /* nothing after it */
    int killed;
    int status = wait_child(pid, 50, &killed);
    close(fds[0]);
    CHECK(strcmp(seen, "N") == 0 && !more[0], "hang kill: callbacks '%s' then '%s'", seen,
          more);
    CHECK(killed && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
          "hang kill: status %#x killed %d", status, killed);
}

/* The stand-in's hidden-state formula, written out again (lib/README.md). */
static float expect_hidden(const char *words_with_spaces, long col)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)words_with_spaces; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    uint64_t x = h + (uint64_t)(col + 1) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (float)((double)(x >> 40) / 16777216.0 * 2.0 - 1.0);
}

static int run_hidden(LLMHandle h, const char *prompt, collector *c)
{
    RKLLMInput in;
    memset(&in, 0, sizeof in);
    in.role = "user";
    in.input_type = RKLLM_INPUT_PROMPT;
    in.prompt_input = prompt;
    RKLLMInferParam ip;
    memset(&ip, 0, sizeof ip);
    ip.mode = RKLLM_INFER_GET_LAST_HIDDEN_LAYER;
    return rkllm_run(h, &in, &ip, c);
}

static void test_hidden(void)
{
    char *model = standin_model("hidden.rkllm", "hidden_size = 8\nreply = never sent");
    LLMHandle h = NULL;
    CHECK(init_with(&h, model, 0) == 0 && h, "init hidden model");
    if (!h)
        return;
    collector c;
    col_init(&c);
    c.hidden_ret = 2;
    int ret = run_hidden(h, "  one two  three [[token_delay_us=0]]", &c);
    CHECK(ret == 0 && c.n_hidden == 1 && c.n_finish == 1 && c.n_normal == 0 &&
              c.n_error == 0 && c.after_end == 0,
          "hidden run: ret %d hidden %d finish %d normal %d error %d", ret, c.n_hidden,
          c.n_finish, c.n_normal, c.n_error);
    CHECK(c.hidden_rows == 3 && c.hidden_cols == 8, "hidden shape %dx%d", c.hidden_rows,
          c.hidden_cols);
    CHECK(c.perf.prefill_tokens == 3 && c.perf.generate_tokens == 0, "hidden perf %d %d",
          c.perf.prefill_tokens, c.perf.generate_tokens);
    int bad = 0;
    const char *prefixes[3] = {"one ", "one two ", "one two three "};
    for (int r = 0; c.hidden && r < 3; r++)
        for (int k = 0; k < 8; k++) {
            float v = c.hidden[r * 8 + k];
            if (v != expect_hidden(prefixes[r], k) || v < -1.0f || v >= 1.0f)
                bad++;
        }
    CHECK(c.hidden && bad == 0, "%d hidden values differ from the formula", bad);
    float first[8];
    if (c.hidden)
        memcpy(first, c.hidden, sizeof first);
    col_free(&c);

    col_init(&c);
    ret = run_hidden(h, "one", &c); /* row 0 depends on the first word only */
    CHECK(ret == 0 && c.hidden_rows == 1 && c.hidden && !memcmp(c.hidden, first, sizeof first),
          "same first word, same first row");
    col_free(&c);

    col_init(&c);
    ret = run_hidden(h, "  [[reply=x]] ", &c);
    CHECK(ret == -1 && c.n_error == 1 && c.n_hidden == 0 && c.n_finish == 0,
          "empty hidden input: ret %d error %d", ret, c.n_error);
    col_free(&c);

    /* generation is unchanged on the same handle */
    col_init(&c);
    ret = run_text(h, "after", &c, 0, 0);
    CHECK(ret == 0 && !strcmp(buf_str(&c.normal), "never sent") && c.n_hidden == 0,
          "generation after hidden: '%s'", buf_str(&c.normal));
    col_free(&c);
    rkllm_destroy(h);

    char *text = slurp(record_path);
#if RKLLM_LINE >= 13
    CHECK(text && strstr(text, "\"hidden_callback_ret\":2,\"hidden_released\":true"),
          "1.3 record: return 2 releases the hidden buffer");
#else
    CHECK(text && strstr(text, "\"hidden_callback_ret\":2,\"hidden_released\":false"),
          "1.2 record: no release on return 2");
#endif
    CHECK(text && strstr(text, "\"hidden_tokens\":3,\"hidden_embd_size\":8"),
          "hidden record fields");
    free(text);
}

static void test_records(void)
{
    char *text = slurp(record_path);
    CHECK(text && *text, "record file empty");
    if (!text)
        return;
    CHECK(strstr(text, "\"call\":\"run\"") != NULL, "no run record");
    CHECK(strstr(text, "\"call\":\"init\"") != NULL, "no init record");
    CHECK(strstr(text, "\"call\":\"run_end\"") != NULL, "no run_end record");
    CHECK(strstr(text, "\"call\":\"abort\"") != NULL, "no abort record");
    CHECK(strstr(text, "\"call\":\"destroy\"") != NULL, "no destroy record");
    CHECK(strstr(text, "\"concurrent\":true") != NULL, "no concurrent run recorded");
    CHECK(strstr(text, "\"embed_sum\":48") != NULL, "multimodal embed_sum 48 missing");
    CHECK(strstr(text, "\"finish\":\"length\"") != NULL, "no length finish");
    CHECK(strstr(text, "\"finish\":\"abort\"") != NULL, "no abort finish");
    CHECK(strstr(text, "\"finish\":\"pause\"") != NULL, "no pause finish");
    /* every line is one object */
    int lines = 0, bad = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        lines++;
        if (n < 2 || line[0] != '{' || line[n - 1] != '}' ||
            strncmp(line, "{\"call\":\"", 9) != 0)
            bad++;
        line = nl ? nl + 1 : line + n;
    }
    CHECK(lines > 10 && bad == 0, "%d lines, %d malformed", lines, bad);
    free(text);
}

static void test_env_record(const char *model)
{
    char env_path[320];
    snprintf(env_path, sizeof env_path, "%s/env-record.jsonl", tmpdir);
    setenv("RKLLM_STANDIN_RECORD", env_path, 1);
    LLMHandle h = NULL;
    init_with(&h, model, 0);
    unsetenv("RKLLM_STANDIN_RECORD");
    if (h) {
        rkllm_set_chat_template(h, "sys \"quoted\"\n", "<u>", "</u>");
        rkllm_destroy(h);
    }
    char *text = slurp(env_path);
    CHECK(text && strstr(text, "\"call\":\"init\"") &&
              strstr(text, "\"system_prompt\":\"sys \\\"quoted\\\"\\u000a\""),
          "env record override: %s", text ? text : "(none)");
    free(text);
}

static void test_misc_calls(LLMHandle h)
{
    RKLLMLoraAdapter lora = {"/tmp/lora.rkllm", "test", 1.0f};
    CHECK(rkllm_load_lora(h, &lora) == 0, "load_lora");
    CHECK(rkllm_load_prompt_cache(h, "/nonexistent/cache.bin") == -1, "load a missing cache");
    CHECK(rkllm_load_prompt_cache(h, NULL) == -1, "load a NULL path");
    CHECK(rkllm_release_prompt_cache(h) == 0, "release_prompt_cache");
    CHECK(rkllm_set_function_tools(h, "sys", "[]", "tool_response") == 0, "function tools");
    RKLLMCrossAttnParam ca;
    memset(&ca, 0, sizeof ca);
    ca.num_tokens = 3;
    CHECK(rkllm_set_cross_attn_params(h, &ca) == 0, "cross attn");
    CHECK(rkllm_abort(h) == 0 && rkllm_is_running(h) == 0, "abort while idle");
    CHECK(rkllm_run(NULL, NULL, NULL, NULL) == -1 && rkllm_destroy(NULL) == -1, "NULL handle");
}

/* Remove the temporary directory (it holds only plain files). */
static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsetenv("RKLLM_STANDIN_RECORD");
    snprintf(tmpdir, sizeof tmpdir, "%s/rkllm-standin-test-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(record_path, sizeof record_path, "%s/record.jsonl", tmpdir);
    printf("self-test for runtime line %d, temp dir %s\n", RKLLM_LINE, tmpdir);

    test_defaults();
    test_init_failures();

    char *plain = standin_model("plain.rkllm", "");
    char *cycler = standin_model("cycle.rkllm", "reply = \"w \"\nn_tokens = 50\nbogus_key = 1");
    test_env_record(plain);

    LLMHandle h = NULL;
    CHECK(init_with(&h, plain, 0) == 0 && h != NULL, "init plain model");
    if (h) {
        test_echo(h);
        test_utf8(h);
        test_abort(h);
        test_errors(h);
        test_pause_and_stamp(h);
        test_history(h);
        test_other_inputs(h);
        test_async(h);
        test_misc_calls(h);
        CHECK(rkllm_destroy(h) == 0, "destroy");
    }
    test_length(cycler);
    test_kv_append();
    test_kv_prefix_reuse();
    test_kv_templates();
    test_kv_end_of_turn();
    test_kv_context_reply();
    test_prompt_cache();
    test_threads();
    test_concurrent_and_destroy(plain);
    test_fault_crash();
    test_fault_hang();
    test_fault_hang_killed();
    test_hidden();
#if RKLLM_LINE >= 13
    test_userdata_fallback(plain);
#endif
    test_records();

    fflush(stderr);
    if (n_fail == 0 && !getenv("RKLLM_STANDIN_KEEP_TMP"))
        remove_tmpdir();
    else
        printf("temporary files kept in %s\n", tmpdir);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
