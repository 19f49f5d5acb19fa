"""The settings, section by section: each field carries its default, its help
and what is allowed, so one definition documents, validates and sets it."""

from __future__ import annotations

from dataclasses import dataclass, field

from rkstream.chat.presets import FAMILIES
from rkstream.config.values import (
    ALIASES_ALLOWED,
    DURATION_ALLOWED,
    ORIGINS_ALLOWED,
    RGB_EXAMPLE,
    SERVER_ID_ALLOWED,
    SIZE_ALLOWED,
    TRUSTED_PROXIES_ALLOWED,
    opt,
    parse_aliases,
    parse_api_keys,
    parse_duration,
    parse_host,
    parse_mean,
    parse_origins,
    parse_server_id,
    parse_size,
    parse_std,
    parse_trusted_proxies,
)
from rkstream.vision.cpus import CPUS_ALLOWED, parse_cpus
from rkstream.vision.policy import MODES, MODES_ALLOWED
from rkstream.vision.presets import PRESETS


@dataclass(frozen=True)
class ServerSettings:
    host: str = opt("0.0.0.0", "address to listen on (0.0.0.0 = every interface)",
                     parse=parse_host, allowed="a host name or IP address, without scheme "
                                               "or port")
    port: int = opt(8080, "TCP port", minimum=0, maximum=65535)
    heartbeat_s: float = opt(20.0, "WebSocket ping interval; a peer silent for half of it "
                                    "after a ping is dropped (0 = off)", minimum=0)
    slow_client_timeout_s: float = opt(
        10.0, "a client that has not read what was sent to it for this long is dropped "
              "and its requests cancelled", minimum=0.1)
    max_outbound_bytes: int = opt(
        8 << 20, "bytes waiting to be sent to one client before it is dropped as too slow",
        minimum=4096)
    shutdown_timeout_s: float = opt(5.0, "once a shutdown stops accepting work, how long the "
                                         "open requests have to finish before they are "
                                         "cancelled (code shutting_down)", minimum=0)
    drain_s: float = opt(0.0, "on SIGTERM or POST /admin/drain: how long /health reports "
                              "503 draining while every request is still served, so a load "
                              "balancer takes the server out of rotation first; behind one, "
                              "at least its check interval times its fall count (the shipped "
                              "haproxy.cfg: 8)", minimum=0, maximum=3600)
    id: str = opt("", "this server's name, sent in the X-Rkstream-Server header of every "
                      "answer, session.created.server.id, /health and /metrics (empty = "
                      "<hostname>:<port>)", parse=parse_server_id, allowed=SERVER_ID_ALLOWED)
    static_dir: str = opt("", "folder served at / (empty = the page shipped with rkstream)")
    cors_origins: str = opt("", "origins allowed to call the HTTP APIs from a browser: "
                                 "comma-separated, or * for any; empty = none",
                             parse=parse_origins, allowed=ORIGINS_ALLOWED)
    api_keys: str = opt("", "comma-separated API keys required on /ws and the HTTP APIs; "
                             "empty = no key needed",
                         parse=parse_api_keys,
                         allowed="comma-separated keys of visible ASCII characters, no "
                                 "spaces (empty = no key needed)")
    allowed_origins: str = opt("", "web pages (origins) besides the server's own that may "
                                    "open /ws from a browser: comma-separated, or *",
                                parse=parse_origins, allowed=ORIGINS_ALLOWED)
    trusted_proxies: str = opt(
        "", "load balancers whose X-Forwarded-For names the client, as comma-separated "
            "addresses or CIDR networks (\"10.0.0.0/8,192.168.1.5\"): a request from one "
            "counts for limits.max_connections_per_address and is logged under the client's "
            "address; empty = trust no one (the header is ignored). Never grants "
            "POST /admin/drain",
        parse=parse_trusted_proxies, allowed=TRUSTED_PROXIES_ALLOWED)
    tls_cert: str = opt("", "PEM certificate file (with its chain) for https and wss; with "
                            "server.tls_key. Browsers give the page's camera and clipboard "
                            "only to https pages or localhost (empty = plain http)")
    tls_key: str = opt("", "PEM private key of server.tls_cert, unencrypted; both or neither")
    event_loop: str = opt("asyncio", "the event loop: asyncio = Python's own (measured as fast "
                                     "as uvloop here, see README); uvloop = uvloop (pip install "
                                     "'rkstream[uvloop]'), or refuse to start; auto = uvloop "
                                     "when it is installed", choices=("asyncio", "uvloop", "auto"))


@dataclass(frozen=True)
class RKLLMSettings:
    library: str = opt("", "path of librkllmrt.so (empty = lib/, then the system path)")
    runtime: str = opt("auto", "runtime ABI line of the library",
                        choices=("auto", "1.3", "1.2"))
    model: str = opt("", "path of the .rkllm language model")
    max_context_len: int = opt(4096, "context window in tokens", minimum=32,
                                maximum=1 << 17)
    max_new_tokens: int = opt(2048, "init-time cap on generated tokens per run",
                               minimum=1, maximum=1 << 17)
    n_keep: int = opt(-1, "KV entries kept when the window shifts (-1 = runtime default)",
                       minimum=-1)
    base_domain_id: int = opt(-1, "NPU memory domain; -1 = auto: 1 when a vision encoder "
                                   "is configured (as the official demo on RK3588), else 0",
                              minimum=-1, maximum=15)
    embed_flash: bool = opt(True, "keep the embedding table in the model file, not in RAM")
    enabled_cpus_num: int = opt(4, "CPU threads the runtime may use", minimum=1, maximum=8)
    enabled_cpus_mask: int = opt(0xF0, "CPU bitmask (0xF0 = the A76 cores of RK3588)",
                                  minimum=0, maximum=0xFF)
    skip_special_token: bool = opt(True, "do not emit special tokens as text")
    mirostat: int = opt(0, "0 off, 1 mirostat, 2 mirostat 2.0", choices=(0, 1, 2))
    mirostat_tau: float = opt(5.0, "mirostat target entropy", minimum=0)
    mirostat_eta: float = opt(0.1, "mirostat learning rate", minimum=0)
    kv_reuse: str = opt("history", "how follow-up turns reuse the KV cache: history = send only "
                                   "what is new with keep_history = 1; runtime = send the whole "
                                   "prompt and let the runtime reuse the matching prefix; off = "
                                   "every run starts from an empty cache",
                        choices=("history", "runtime", "off"))
    kv_end_of_turn: str = opt("resend", "after an answer that ended by itself, whether the "
                                        "runtime's cache holds its end-of-turn token: resend = "
                                        "no (rkstream sends it with the next turn; safe), kept "
                                        "= yes (check on a board, see README)",
                              choices=("resend", "kept"))
    embedding_pooling: str = opt("last", "how an embedding is made from the last hidden layer "
                                         "(RKLLM_INFER_GET_LAST_HIDDEN_LAYER): last = the last "
                                         "token's row (Qwen3-Embedding and other last-token "
                                         "models), mean = the mean of every token's row; "
                                         "L2-normalised either way",
                                 choices=("last", "mean"))
    isolation: str = opt("process", "where the runtime runs: process = one worker process per "
                                    "instance, so a crash or hang costs one request and a "
                                    "reload; thread = in the server process (a crash ends the "
                                    "server)", choices=("process", "thread"))
    watchdog_prefill_s: float = opt(30.0, "seconds a run may take to its first token, plus "
                                          "watchdog_prefill_per_1k_tokens_s", minimum=0.1)
    watchdog_prefill_per_1k_tokens_s: float = opt(30.0, "more seconds to the first token per "
                                                        "1000 prompt tokens (images included)",
                                                  minimum=0)
    watchdog_token_s: float = opt(30.0, "seconds without a token before a run counts as hung "
                                        "and is aborted (0 = no watchdog)", minimum=0)
    watchdog_grace_s: float = opt(5.0, "seconds the runtime has to stop after an abort (a "
                                       "cancel or the watchdog) before its worker is killed",
                                  minimum=0.05)
    restart_backoff_s: float = opt(1.0, "wait before restarting a worker after a second "
                                        "fault in a row; doubles with each further one",
                                   minimum=0)
    restart_backoff_max_s: float = opt(60.0, "longest wait between worker restarts",
                                       minimum=0)
    fault_log: str = opt("", "file keeping the last runtime crashes and hangs for rkstream "
                             "doctor (empty = runtime_faults.jsonl in ~/.cache/rkstream)")


@dataclass(frozen=True)
class LlamaCppSettings:
    model: str = opt("", "path of a .gguf model (empty = the bundled SmolLM2-135M-Instruct)")
    n_ctx: int = opt(4096, "context window in tokens (0 = the model's own)", minimum=0,
                      maximum=1 << 18)
    n_batch: int = opt(512, "prompt tokens evaluated per batch", minimum=1, maximum=1 << 16)
    n_threads: int = opt(0, "CPU threads per instance (0 = the physical cores of the fastest "
                            "kind, shared between instances)", minimum=0, maximum=256)
    seed: int = opt(0xFFFFFFFF, "sampling seed (4294967295 = random)", minimum=0,
                     maximum=0xFFFFFFFF)


@dataclass(frozen=True)
class VisionSettings:
    encoder: str = opt("", "vision encoder: a .rknn file (board) or .onnx file (anywhere); "
                            "empty = no vision")
    preset: str = opt("qwen2-vl", "model family: image tags, pad colour, ONNX mean/std",
                       choices=tuple(PRESETS))
    image_start: str = opt("", "override the preset's image start tag (empty = preset)")
    image_end: str = opt("", "override the preset's image end tag (empty = preset)")
    image_content: str = opt("", "override the preset's image content tag (empty = preset)")
    background: float = opt(-1.0, "pad colour 0-255 (negative = preset)", minimum=-1,
                             maximum=255)
    mean: str = opt("", "ONNX input mean per channel, 0-255, as \"r,g,b\" (empty = preset)",
                     parse=parse_mean,
                     allowed="three comma-separated numbers from 0 to 255, " + RGB_EXAMPLE)
    std: str = opt("", "ONNX input std per channel, 0-255, as \"r,g,b\" (empty = preset)",
                    parse=parse_std,
                    allowed="three comma-separated numbers above 0 and at most 255, "
                            + RGB_EXAMPLE)
    size: int = opt(0, "encoder input size when the model file does not fix it "
                        "(0 = preset)", minimum=0, maximum=4096)
    core_mask: str = opt("2", "NPU cores for the RKNN encoder (2 = the core an LLM "
                               "converted with num_npu_core=2 leaves free)",
                          choices=("auto", "0", "1", "2", "0_1", "0_1_2", "all"))
    threads: int = opt(0, "ONNX Runtime threads (0 = its default)", minimum=0, maximum=64)
    cache_bytes: int = opt(64 << 20, "embedding cache size; repeated images encode once",
                            minimum=0)
    max_image_pixels: int = opt(4096 * 4096, "largest image accepted (decompression "
                                                "bombs are refused)", minimum=1)
    encode_ahead: str = opt("rate", "when camera frames are encoded before a request asks: "
                                    "off = never; on_request = only while a request with a "
                                    "frame part of that stream waits for an instance; rate = "
                                    "the newest frame of each stream, at most encode_ahead_fps "
                                    "times a second", choices=MODES, allowed=MODES_ALLOWED)
    encode_ahead_fps: float = opt(1.0, "most encode-ahead looks (a change check, and an encode "
                                       "when the frame changed) per second and camera stream",
                                  minimum=0.01, maximum=120)
    encode_ahead_pause_while_generating: bool = opt(
        True, "rate looks at nothing while a generation runs on the NPU (or the CPU model "
              "generates), so answers never share the encoder or the memory bus with it; a "
              "queued frame question is still served")
    frame_change_threshold: float = opt(
        2.0, "a frame whose 32x32 grey thumbnail differs from the last encoded frame's by less "
             "than this mean absolute difference (0-255) reuses its embedding; 0 = only "
             "identical bytes are reused", minimum=0, maximum=255)
    decode_cpus: str = opt("auto", "CPUs of the threads that decode images and frames: auto = "
                                   "the CPUs outside rkllm.enabled_cpus_mask on an 8-CPU "
                                   "Rockchip board (the A55 cores of an RK3588), else no "
                                   "pinning; none or empty = no pinning; or a list such as "
                                   "\"0-3\"", parse=parse_cpus, allowed=CPUS_ALLOWED)


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int = opt(512, "tokens generated when a request does not say",
                           minimum=1, maximum=1 << 17)
    temperature: float = opt(0.8, "default temperature", minimum=0, maximum=5)
    top_p: float = opt(0.9, "default nucleus sampling mass", minimum=0, maximum=1)
    top_k: int = opt(1, "default top-k (1 = greedy, as the official demos)", minimum=0)
    repeat_penalty: float = opt(1.1, "default repeat penalty", minimum=0, maximum=10)
    frequency_penalty: float = opt(0.0, "default frequency penalty", minimum=-2, maximum=2)
    presence_penalty: float = opt(0.0, "default presence penalty", minimum=-2, maximum=2)


@dataclass(frozen=True)
class LimitSettings:
    max_message_bytes: int = opt(8 << 20, "largest WebSocket message accepted; larger "
                                           "closes the socket with 1009",
                                  minimum=1024, maximum=1 << 30)
    max_queue: int = opt(32, "requests waiting for a model instance; more fail with "
                              "queue_full", minimum=0)
    max_inflight_per_connection: int = opt(8, "open requests (queued or running) per "
                                               "connection", minimum=1)
    max_tokens: int = opt(4096, "largest max_tokens a request may ask for",
                           minimum=1, maximum=1 << 17)
    max_images_per_request: int = opt(4, "images one request may carry", minimum=0)
    max_connections_per_address: int = opt(16, "open WebSocket connections per client "
                                                "address", minimum=1)
    request_timeout_s: float = opt(600.0, "a request running longer is stopped "
                                           "(code request_timeout); 0 = never", minimum=0)
    idle_timeout_s: float = opt(900.0, "a WebSocket with no open request and no message "
                                        "for this long is closed; 0 = never", minimum=0)


@dataclass(frozen=True)
class BoardSettings:
    pin_frequencies: bool = opt(False, "pin NPU, DDR and CPU clocks to their top speed at "
                                        "start (needs root; logs what changed)")


# The chat format families rkstream has built in.
CHAT_FAMILIES = tuple(FAMILIES)


@dataclass(frozen=True)
class ChatSettings:
    template: str = opt("", "the model's chat template: a tokenizer_config.json, a "
                            "chat_template.jinja, or the Jinja text itself (empty = a built-in "
                            "family's)")
    family: str = opt("auto", "built-in chat format: auto = recognised from the model's file "
                              "name; none = no format (the runtime's own template, one "
                              "labelled transcript per run)",
                      choices=("auto", "none", *CHAT_FAMILIES))
    thinking: bool = opt(True, "let models that can think (Qwen3, R1 distills) think, unless "
                               "a request says otherwise")
    history_rewrite: str = opt("keep", "when the format rewrites earlier turns (Qwen3 and R1 "
                                       "distills drop earlier reasoning): keep = reuse the cache "
                                       "as it stands; reprefill = prefill the rewritten history",
                               choices=("keep", "reprefill"))
    overflow: str = opt("error", "a conversation longer than the context: error = refuse with "
                                 "context_overflow; drop_oldest = drop whole turns after the "
                                 "system prompt, oldest first",
                        choices=("error", "drop_oldest"))
    system_prompt: str = opt("", "system prompt for conversations that bring none")
    cache_system_prompt: bool = opt(False, "prefill system_prompt once and keep it with the "
                                           "runtime's prompt cache (RKLLM)")


@dataclass(frozen=True)
class PoolSettings:
    default_model: str = opt("", "the model a request that names none gets: the name of a "
                                 "[models.<name>] entry; empty = the model of the [rkllm] or "
                                 "[llamacpp] section, served under its file name")
    keep_alive: str = opt("5m", "how long a model stays loaded after its last request, as "
                                "Ollama's keep_alive (a request's own keep_alive wins); the "
                                "default model loads at start and is kept unless a request "
                                "says otherwise", parse=parse_duration, allowed=DURATION_ALLOWED)
    max_loaded: int = opt(3, "models loaded at once (0 = no limit but memory); a load past it "
                             "first unloads an idle model", minimum=0, maximum=64)
    memory_budget: str = opt("", "memory the loaded models may take, by their files' sizes; "
                                 "empty = 90% of the memory available when the server starts",
                             parse=parse_size, allowed=SIZE_ALLOWED)
    default_aliases: str = opt("", "more names for the default model, comma-separated; * "
                                   "matches anything (claude-* for Claude Code, which sends "
                                   "its own model names); other unknown names are refused",
                               parse=parse_aliases, allowed=ALIASES_ALLOWED)
    npu_models_at_once: int = opt(1, "RKLLM models that may generate at the same time (they "
                                     "share the NPU; one model's own instances always run "
                                     "side by side)", minimum=1, maximum=16)


# What a [models.<name>] entry says; everything else comes from the sections above.
@dataclass(frozen=True)
class ModelEntry:
    model: str = opt("", "the model file: .rkllm (RKLLM runtime) or .gguf (llama.cpp)")
    engine: str = opt("auto", "auto = by the file's extension", choices=("auto", "rkllm",
                                                                         "llamacpp"))
    vision_encoder: str = opt("", "the vision encoder (.rknn or .onnx); shared with every model "
                                  "naming the same file; empty = no vision")
    vision_preset: str = opt("", "the encoder's family (empty = [vision] preset)",
                             choices=("", *PRESETS))
    chat_template: str = opt("", "as [chat] template, for this model (empty = the family's)")
    chat_family: str = opt("auto", "as [chat] family, for this model",
                           choices=("auto", "none", *FAMILIES))
    instances: int = opt(0, "model instances (0 = the top-level instances)", minimum=0,
                         maximum=16)
    context: int = opt(0, "context window in tokens (0 = [rkllm] max_context_len or [llamacpp] "
                          "n_ctx)", minimum=0, maximum=1 << 18)
    keep_alive: str = opt("", "as [pool] keep_alive, for this model (empty = [pool]'s)",
                          parse=parse_duration, allowed=DURATION_ALLOWED)
    aliases: str = opt("", "more names for this model, comma-separated; * matches anything "
                           "(gpt-* for a client that sends its own names)",
                       parse=parse_aliases, allowed=ALIASES_ALLOWED)


@dataclass(frozen=True)
class Settings:
    engine: str = opt("auto", "which engine runs the model: auto = rkllm when its library "
                               "and .rkllm model load, else llamacpp",
                       choices=("auto", "rkllm", "llamacpp"))
    instances: int = opt(1, "model instances (native handles, one owner thread each)",
                          minimum=1, maximum=16)
    log_level: str = opt("info", "log level",
                          choices=("debug", "info", "warning", "error"))
    log_format: str = opt("text", "log lines as plain text or one JSON object each",
                           choices=("text", "json"))
    server: ServerSettings = field(default_factory=ServerSettings)
    rkllm: RKLLMSettings = field(default_factory=RKLLMSettings)
    llamacpp: LlamaCppSettings = field(default_factory=LlamaCppSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    board: BoardSettings = field(default_factory=BoardSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    # [models.<name>] entries, by name; see ModelEntry.
    models: dict[str, ModelEntry] = field(default_factory=dict)


# RKSTREAM_* variables that override one key each.
ENV_KEYS: dict[str, str] = {
    "RKSTREAM_HOST": "server.host",
    "RKSTREAM_PORT": "server.port",
    "RKSTREAM_ENGINE": "engine",
    "RKSTREAM_MODEL": "rkllm.model",
    "RKSTREAM_RKLLM_LIBRARY": "rkllm.library",
    "RKSTREAM_RUNTIME": "rkllm.runtime",
    "RKSTREAM_GGUF": "llamacpp.model",
    "RKSTREAM_VISION_ENCODER": "vision.encoder",
    "RKSTREAM_LOG_LEVEL": "log_level",
    "RKSTREAM_API_KEYS": "server.api_keys",
    "RKSTREAM_SERVER_ID": "server.id",
}


