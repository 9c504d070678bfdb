"""A small LLM serving library: load a model, run requests through one Engine.

Imports no Django and nothing of chatsite, so it can be tested and benchmarked alone.
"""
import importlib
import os

# torch's CPU kernels keep a compiled primitive per input shape, in ideep's cache
# (LRU_CACHE_CAPACITY) and oneDNN's (ONEDNN_PRIMITIVE_CACHE_CAPACITY), 1,024 entries each by
# default. A serving batch changes shape at every join and leave, so at that size both keep
# filling and memory grows with every request; at 64 it stays flat (`make bench` part (e),
# docs/benchmarks.md). Both are read when torch first runs such a kernel, so they are set
# here, before any can run; the environment still overrides them.
for _cache in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, "64")

# The names below are imported when first used (PEP 562): a web process that validates
# sampling parameters or counts a prompt's tokens needs inference.sampling_params and
# inference.prompts, not torch, the engine and transformers' model classes (seconds of imports
# in every `manage.py` command and every web process).
_EXPORTS = {
    "Engine": "inference.engine",
    "EngineConfig": "inference.engine",
    "FinishEvent": "inference.requests",
    "Request": "inference.requests",
    "RequestStatus": "inference.requests",
    "SamplingParams": "inference.sampling_params",
    "TokenEvent": "inference.requests",
    "Usage": "inference.requests",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
