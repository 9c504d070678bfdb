"""The one Engine of a worker process, loaded once and shared by all of its task threads."""
from __future__ import annotations

import threading

from inference.engine import Engine, EngineConfig

_engine: Engine | None = None
_lock = threading.Lock()


def engine_get(config: EngineConfig) -> Engine:
    """The process's engine, loading it on first use (Celery's worker start calls this early)."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = Engine.load(config)
        return _engine


def engine_current() -> Engine | None:
    """This process's engine if it has loaded, else None (without waiting)."""
    return _engine


def engine_ready() -> bool:
    """Whether this process's engine has loaded (without waiting for it)."""
    return _engine is not None


def engine_set(engine: Engine | None) -> None:
    """Install an already-built engine (tests use a tiny model this way)."""
    global _engine
    with _lock:
        _engine = engine


def engine_shutdown() -> None:
    """Stop every request, keeping what each generated, and drop the engine."""
    global _engine
    with _lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.shutdown()
