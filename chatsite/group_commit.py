"""Database work that many threads need at the same moment, done by one of them for all.

A worker streaming hundreds of replies claims, saves and ends their rows at nearly the same
moments: a burst of calls arrives together and its answers end together. Each of those is a
short transaction, and most of its cost is not the row: the ORM compiling its statement,
SQLite's one writer lock taken and given back, and, under one interpreter lock, the hops
between the threads that queue for it. Here callers that arrive while a batch is in the
database wait, and the next batch runs for all of them at once, in one transaction of a
few statements (a database's group commit).

The batch runs on one of its callers' threads — the first in line, which leads the next batch
when the one before it ends — not on a thread of its own: its connection is a caller's, so a
test's transaction sees the batch's work, and no caller waits for a thread to be scheduled
that has nothing else to do. Callers must not be inside a transaction of their own: the
leader may need the writer lock they hold.

Batching must not make callers share their faults: when a batch fails, each of its items is
run again alone, so only the callers whose own item fails get the error (one reply's text that
the database refuses failed every reply saved beside it). So `run` must be all or nothing —
one transaction — for its items to be run again.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("error", "item", "leads", "ready", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.leads = False  # this caller runs the next batch
        self.ready = threading.Event()


class GroupCommit(Generic[Item, Result]):
    """`commit(item)` returns `run([...item...])`'s result for `item`, where `run` is called
    with every item that was waiting when its batch began (at most `max_batch`). `run` returns
    one result per item, in order. When it raises, each item of the batch is run again alone,
    and a caller gets its own item's result or exception."""

    def __init__(self, run: Callable[[list[Item]], list[Result]], *, max_batch: int = 256) -> None:
        self._run = run
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Slot[Item, Result]] = []
        self._busy = False  # a batch is running; while it is not, nobody waits

    @property
    def waiting(self) -> int:
        """Callers whose batch has not begun."""
        with self._lock:
            return len(self._waiting)

    def __call__(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            if not self._busy:
                self._busy = slot.leads = True
        if not slot.leads:
            slot.ready.wait()  # set when this slot's batch ended, or when it is to lead the next
        if slot.leads:
            self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self) -> None:
        # The leader's slot is first in line: a slot leads only as the first of `_waiting`.
        with self._lock:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch:]
        try:
            items = [slot.item for slot in batch]
            try:
                outcomes = [(result, None) for result in self._results(items)]
            except Exception as error:
                # One item's fault, or every item's: each run again alone says which.
                outcomes = [(None, error)] if len(batch) == 1 else [self._alone(item) for item in items]
            for slot, (result, failure) in zip(batch, outcomes, strict=True):
                slot.result, slot.error = result, failure
        except BaseException as error:
            for slot in batch:
                slot.error = error
        finally:
            with self._lock:
                if self._waiting:
                    following = self._waiting[0]
                    following.leads = True
                    following.ready.set()
                else:
                    self._busy = False
            for slot in batch:
                slot.leads = False
                slot.ready.set()

    def _results(self, items: list[Item]) -> list[Result]:
        results = self._run(items)
        if len(results) != len(items):
            raise RuntimeError(f"a batch of {len(items)} gave {len(results)} results")
        return results

    def _alone(self, item: Item) -> tuple[Result | None, Exception | None]:
        try:
            return self._results([item])[0], None
        except Exception as error:
            return None, error
