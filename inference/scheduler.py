"""Which requests run: a waiting queue ordered by priority, then arrival, and a running set."""
from __future__ import annotations

import heapq
import itertools

from inference.requests import Request


class Scheduler:
    """Plain bookkeeping, no tensors. Called from the engine's thread under the engine's lock."""

    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self.running: list[Request] = []
        self._waiting: list[tuple[int, int, Request]] = []  # heap of (-priority, arrival order, request)
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> list[Request]:
        return [request for _, _, request in sorted(self._waiting)]

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    def add(self, request: Request) -> None:
        heapq.heappush(self._waiting, (-request.priority, next(self._arrivals), request))

    def admit(self) -> list[Request]:
        """Move the highest-priority waiting requests into free running slots; return them."""
        admitted = []
        while self._waiting and len(self.running) < self.max_running:
            _, _, request = heapq.heappop(self._waiting)
            self.running.append(request)
            admitted.append(request)
        return admitted

    def take_cancelled(self) -> list[Request]:
        """Remove and return every request, waiting or running, whose cancel was asked for."""
        cancelled = [request for request in self.running if request.cancel_requested]
        cancelled += [entry[2] for entry in self._waiting if entry[2].cancel_requested]
        if cancelled:
            self.running = [request for request in self.running if not request.cancel_requested]
            self._waiting = [entry for entry in self._waiting if not entry[2].cancel_requested]
            heapq.heapify(self._waiting)
        return cancelled

    def take_all(self) -> list[Request]:
        everything = self.running + [entry[2] for entry in self._waiting]
        self.running, self._waiting = [], []
        return everything

    def retire(self, request: Request) -> None:
        self.running.remove(request)
