"""A small LLM serving library: load a model, run requests through one Engine.

Imports no Django and nothing of chatsite, so it can be tested and benchmarked alone.
"""
from inference.engine import Engine, EngineConfig
from inference.requests import FinishEvent, Request, RequestStatus, TokenEvent, Usage
from inference.sampling import SamplingParams

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
