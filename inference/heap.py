"""The process's long-lived heap, out of the garbage collector's sight.

A worker process holds about half a million objects that live as long as it does: torch's,
transformers', Django's and Celery's modules, the tokenizer, the model. Each of CPython's full
collections walks all of them with the interpreter lock held, stalling every thread of the
process: the web side, the task threads and, in the same process, the engine's step loop
(docs/engine.md, "The collector"). Once the process has loaded its engine, `heap_freeze` moves
what exists to the collector's permanent generation (`gc.freeze`), so later collections walk
only what was made since. What is frozen is still freed when nothing refers to it; only
reference cycles within it stay."""
from __future__ import annotations

import gc


def heap_freeze() -> bool:
    """Collect, then freeze what is left; once per process, since the first engine's load
    completes the heap that lasts. True when this call froze it."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True
