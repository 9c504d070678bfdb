"""A small LLM serving library: load a model, run requests through one Engine.

Imports no Django and nothing of chatsite, so it can be tested and benchmarked alone.
"""
import os

# torch's CPU kernels keep a compiled primitive per input shape, in ideep's cache
# (LRU_CACHE_CAPACITY) and oneDNN's (ONEDNN_PRIMITIVE_CACHE_CAPACITY), 1,024 entries each by
# default. A serving batch changes shape at every join and leave, so at that size both keep
# filling and memory grows with every request; at 64 it stays flat (`make bench` part (e),
# docs/benchmarks.md). Both are read when torch first runs such a kernel, so they are set
# here, before any can run; the environment still overrides them.
for _cache in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, "64")

from inference.engine import Engine, EngineConfig  # noqa: E402 - after the cache sizes
from inference.requests import FinishEvent, Request, RequestStatus, TokenEvent, Usage  # noqa: E402
from inference.sampling import SamplingParams  # noqa: E402

__all__ = [
    "Engine",
    "EngineConfig",
    "FinishEvent",
    "Request",
    "RequestStatus",
    "SamplingParams",
    "TokenEvent",
    "Usage",
]
