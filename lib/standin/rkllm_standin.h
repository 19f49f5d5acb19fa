/*
 * rkllm_standin.h - C declarations of the librkllmrt.so API as implemented by
 * the rkstream stand-in runtime.
 *
 * One header covers two incompatible runtime lines; pick one with
 *   -DRKLLM_LINE=13   (layout of rkllm.h 1.3.0, the default)
 *   -DRKLLM_LINE=12   (layout of rkllm.h 1.2.1 .. 1.2.3)
 *
 * Written from the layout tables in rkllm_abi_1_3.json / rkllm_abi_1_2.json.
 * Type, member and function names follow the vendor header so that code
 * written against the real API compiles unchanged.  Sizes and offsets are
 * checked with _Static_assert in rkllm_standin.c.
 */
#ifndef RKLLM_STANDIN_H
#define RKLLM_STANDIN_H

#include <stddef.h>
#include <stdint.h>
#ifndef __cplusplus
#include <stdbool.h>
#endif

#ifndef RKLLM_LINE
#define RKLLM_LINE 13
#endif
#if RKLLM_LINE != 12 && RKLLM_LINE != 13
#error "RKLLM_LINE must be 12 or 13"
#endif

#if defined(__GNUC__)
#define RKLLM_API __attribute__((visibility("default")))
#else
#define RKLLM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bits for RKLLMExtendParam.enabled_cpus_mask. */
#define CPU0 (1 << 0)
#define CPU1 (1 << 1)
#define CPU2 (1 << 2)
#define CPU3 (1 << 3)
#define CPU4 (1 << 4)
#define CPU5 (1 << 5)
#define CPU6 (1 << 6)
#define CPU7 (1 << 7)

/* Opaque instance handle. */
typedef void *LLMHandle;

/* State passed to the result callback. */
typedef enum {
    RKLLM_RUN_NORMAL = 0,  /* one step of output                        */
    RKLLM_RUN_WAITING = 1, /* bytes end inside a UTF-8 character        */
    RKLLM_RUN_FINISH = 2,  /* run finished, perf is filled              */
    RKLLM_RUN_ERROR = 3    /* run failed                                 */
} LLMCallState;

/* Which member of the RKLLMInput union is used. */
typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3
} RKLLMInputType;

typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
    RKLLM_INFER_GET_LOGITS = 2
} RKLLMInferMode;

/* 120 bytes, 4-byte aligned. */
typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
} RKLLMExtendParam;

/* Init parameters: 184 bytes on 1.3, 208 bytes on 1.2. */
typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#if RKLLM_LINE >= 13
    bool ignore_eos_token;
#endif
    bool is_async;
#if RKLLM_LINE == 12
    const char *img_start;
    const char *img_end;
    const char *img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    const char *lora_adapter_path;
    const char *lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

typedef struct {
    float *embed;    /* n_tokens x hidden size, row-major */
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t *input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

#if RKLLM_LINE >= 13
/* 1.3: prompt plus an image part and a video part (types unnamed). */
typedef struct {
    char *prompt;
    struct {
        float *image_embed;
        size_t n_image_tokens;
        size_t n_image;
        const char *image_start;
        const char *image_end;
        const char *image_content;
        size_t image_width;
        size_t image_height;
    } image;
    struct {
        float *video_embed;
        size_t n_frame_tokens;
        size_t n_frame_per_video;
        size_t n_video;
        const char *video_start;
        const char *video_end;
        const char *video_content;
        size_t frame_width;
        size_t frame_height;
    } video;
} RKLLMMultiModalInput;
#else
/* 1.2: flat layout; tag strings live in RKLLMParam. */
typedef struct {
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
    size_t n_image;
    size_t image_width;
    size_t image_height;
} RKLLMMultiModalInput;
#endif

typedef struct {
    const char *role;
    bool enable_thinking;
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModalInput multimodal_input;
    };
} RKLLMInput;

typedef struct {
    const char *lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
    int save_prompt_cache;
    const char *prompt_cache_path;
} RKLLMPromptCacheParam;

typedef struct {
    float *encoder_k_cache;
    float *encoder_v_cache;
    float *encoder_mask;
    int32_t *encoder_pos;
    int num_tokens;
} RKLLMCrossAttnParam;

#if RKLLM_LINE >= 13
typedef struct {
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
} RKLLMSamplingParam;
#endif

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam *lora_params;
    RKLLMPromptCacheParam *prompt_cache_params;
#if RKLLM_LINE >= 13
    RKLLMSamplingParam *sampling_params;
#endif
    int keep_history;
#if RKLLM_LINE >= 13
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct {
    const float *hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

typedef struct {
    const float *logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;

typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;

typedef struct {
    const char *text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
    RKLLMResultLogits logits;
    RKLLMPerfStat perf;
} RKLLMResult;

/* Result callback: 0 = continue, 1 = pause, 2 = release/ignore. */
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata,
                                 LLMCallState state);

#if RKLLM_LINE >= 13
typedef int (*LLMTokenizerCallback)(void *userdata, const char *text,
                                    int32_t text_len, int32_t *tokens,
                                    int32_t n_tokens_max);
typedef int (*LLMGetEmbedCallback)(void *userdata, int32_t *tokens,
                                   uint64_t num_tokens, void *embed,
                                   uint64_t len);

typedef struct {
    LLMResultCallback result_callback;
    void *result_userdata;
    LLMTokenizerCallback tokenizer_callback;
    void *tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void *embed_userdata;
} RKLLMCallback;
#endif

RKLLM_API RKLLMParam rkllm_createDefaultParam(void);
#if RKLLM_LINE >= 13
RKLLM_API int rkllm_init(LLMHandle *handle, RKLLMParam *param,
                         RKLLMCallback *callback);
#else
RKLLM_API int rkllm_init(LLMHandle *handle, RKLLMParam *param,
                         LLMResultCallback callback);
#endif
RKLLM_API int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter);
RKLLM_API int rkllm_load_prompt_cache(LLMHandle handle,
                                      const char *prompt_cache_path);
RKLLM_API int rkllm_release_prompt_cache(LLMHandle handle);
RKLLM_API int rkllm_destroy(LLMHandle handle);
RKLLM_API int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input,
                        RKLLMInferParam *rkllm_infer_params, void *userdata);
RKLLM_API int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input,
                              RKLLMInferParam *rkllm_infer_params,
                              void *userdata);
RKLLM_API int rkllm_abort(LLMHandle handle);
RKLLM_API int rkllm_is_running(LLMHandle handle);
RKLLM_API int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt,
                                   int *start_pos, int *end_pos);
RKLLM_API int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes);
RKLLM_API int rkllm_set_chat_template(LLMHandle handle,
                                      const char *system_prompt,
                                      const char *prompt_prefix,
                                      const char *prompt_postfix);
RKLLM_API int rkllm_set_function_tools(LLMHandle handle,
                                       const char *system_prompt,
                                       const char *tools,
                                       const char *tool_response_str);
RKLLM_API int rkllm_set_cross_attn_params(LLMHandle handle,
                                          RKLLMCrossAttnParam *cross_attn_params);

#ifdef __cplusplus
}
#endif

#endif /* RKLLM_STANDIN_H */
