"""The one engine of a worker process, loaded once and shared by all of its task threads:
an Engine in this process, an EngineProcess (its own child process) where the config asks
for one (`EngineConfig.process`; on a GPU by default), or the engine server at
`EngineConfig.address` that several worker processes share."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from inference.heap import heap_freeze

if TYPE_CHECKING:
    from inference.engine import Engine, EngineConfig
    from inference.engine_process import EngineProcess

# The engine's modules (torch, transformers' model classes: seconds of imports) are imported
# when an engine starts: a web process asks `engine_ready` and never starts one.

_engine: Engine | EngineProcess | None = None
_lock = threading.Lock()
# After an engine server could not be reached, callers are told so at once for this long
# instead of each waiting its turn for the whole connect timeout.
UNREACHABLE_HOLD_S = 5.0
_unreachable: tuple[str, float] = ("", 0.0)  # the address, and until when


def engine_start(config: EngineConfig) -> Engine | EngineProcess:
    """A new engine for `config`, loaded and ready: the server at `config.address`, or one in
    this process or a child."""
    from inference.engine import Engine
    from inference.engine_process import EngineProcess, uses_process

    if config.address:
        return EngineProcess.connect(config.address)
    return EngineProcess.start(config) if uses_process(config) else Engine.load(config)


def engine_get(config: EngineConfig) -> Engine | EngineProcess:
    """The process's engine, loading it on first use (Celery's worker start calls this early),
    and again if it has ended without a shutdown (an engine process that died)."""
    from inference.engine_process import EngineUnreachable

    global _engine, _unreachable
    with _lock:
        if _engine is None or not _engine.alive:
            if config.address and _unreachable[0] == config.address and time.monotonic() < _unreachable[1]:
                raise EngineUnreachable(f"no engine server answered at {config.address} a moment ago")
            try:
                _engine = engine_start(config)
            except EngineUnreachable:
                _unreachable = (config.address, time.monotonic() + UNREACHABLE_HOLD_S)
                raise
            heap_freeze()
        return _engine


def engine_current() -> Engine | EngineProcess | None:
    """This process's engine if it has loaded, else None (without waiting)."""
    return _engine


def engine_ready() -> bool:
    """Whether this process's engine has loaded (without waiting for it)."""
    return _engine is not None


def engine_set(engine: Engine | EngineProcess | None) -> None:
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
