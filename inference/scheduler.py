"""Which requests run: a waiting queue ordered by priority then arrival, a running set, and
the caps that bound it. Plain bookkeeping, no tensors (nano-vllm's shape, vLLM's priority
policy): a higher-priority request that does not fit preempts the lowest-priority, newest
running one, which goes back to waiting with its text intact and is recomputed later.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from inference.requests import Request


@dataclass
class Schedule:
    admitted: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)


class Scheduler:
    """Called from the engine's thread under the engine's lock."""

    def __init__(self, max_running: int, max_kv_tokens: int) -> None:
        self.max_running = max_running
        self.max_kv_tokens = max_kv_tokens
        self.running: list[Request] = []  # in admission order
        self._waiting: list[tuple[int, int, Request]] = []  # heap of (-priority, arrival order, request)
        self._arrivals = itertools.count()
        self._order: dict[int, int] = {}  # request id → arrival order, kept across preemptions

    @property
    def waiting(self) -> list[Request]:
        return [request for _, _, request in sorted(self._waiting)]

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    def add(self, request: Request) -> None:
        order = self._order.setdefault(request.id, next(self._arrivals))
        heapq.heappush(self._waiting, (-request.priority, order, request))

    def kv_tokens(self) -> int:
        """Tokens the running requests hold, and the one each adds at the next step."""
        return sum(request.num_tokens + 1 for request in self.running)

    def schedule(self) -> Schedule:
        """Preempt to keep the running set under the KV cap, then fill free capacity from the
        waiting queue by priority, preempting lower-priority requests where that makes room."""
        schedule = Schedule()
        held = self.kv_tokens()  # kept up to date below: a burst's admission stays linear
        while held > self.max_kv_tokens and len(self.running) > 1:
            victim = self._preempt(self._victim(below=None))
            held -= victim.num_tokens + 1
            schedule.preempted.append(victim)
        while self._waiting:
            candidate = self._waiting[0][2]
            needed = candidate.num_tokens + 1
            if len(self.running) < self.max_running and held + needed <= self.max_kv_tokens:
                heapq.heappop(self._waiting)
                self.running.append(candidate)
                schedule.admitted.append(candidate)
                held += needed
                continue
            victim = self._victim(below=candidate.priority)
            if victim is None:
                break
            held -= victim.num_tokens + 1
            schedule.preempted.append(self._preempt(victim))
        return schedule

    def outranks_running(self, priority: int) -> bool:
        return any(request.priority < priority for request in self.running)

    def outranking(self) -> list[Request]:
        """The waiting requests that the next `schedule` would admit ahead of a running one,
        highest first: each takes a free slot, else the place of a lower-priority running
        request (the KV cap aside, which `schedule` still applies)."""
        if not self.running:
            return []
        lowest = min(request.priority for request in self.running)
        room = self.max_running - len(self.running)
        victims = sorted(request.priority for request in self.running)
        chosen = []
        for _, _, request in sorted(self._waiting):
            if request.priority <= lowest:
                break
            if room:
                room -= 1
            elif victims and victims[0] < request.priority:
                victims.pop(0)
            else:
                break
            chosen.append(request)
        return chosen

    def discard(self, request: Request) -> None:
        """Take a waiting request out (it finished before it was admitted)."""
        self._waiting = [entry for entry in self._waiting if entry[2] is not request]
        heapq.heapify(self._waiting)
        self._order.pop(request.id, None)

    def take_cancelled(self) -> list[Request]:
        """Remove and return every request, waiting or running, whose cancel was asked for.
        A cancel comes from another thread at any moment (`Request.cancel` takes no lock): the
        flag is read once per request, and what is removed is exactly what is returned. One
        read again for the removal could drop a request cancelled in between from the queues
        without returning it, and nobody would end it."""
        cancelled = [request for request in self.running if request.cancel_requested]
        cancelled += [entry[2] for entry in self._waiting if entry[2].cancel_requested]
        if cancelled:
            taken = {request.id for request in cancelled}
            for request_id in taken:
                self._order.pop(request_id, None)
            self.running = [request for request in self.running if request.id not in taken]
            self._waiting = [entry for entry in self._waiting if entry[2].id not in taken]
            heapq.heapify(self._waiting)
        return cancelled

    def take_all(self) -> list[Request]:
        everything = self.running + [entry[2] for entry in self._waiting]
        self.running, self._waiting, self._order = [], [], {}
        return everything

    def requeue_running(self) -> list[Request]:
        """Put every running request back in the waiting queue in its old place (their KV is
        gone, as after preemption); return them."""
        requeued, self.running = self.running, []
        for request in requeued:
            self.add(request)
        return requeued

    def retire(self, request: Request) -> None:
        self.running.remove(request)
        self._order.pop(request.id, None)

    def _victim(self, *, below: int | None) -> Request | None:
        """The lowest-priority running request (newest first among equals), if below `below`."""
        candidates = [r for r in self.running if below is None or r.priority < below]
        if not candidates:
            return None
        return min(reversed(candidates), key=lambda request: request.priority)

    def _preempt(self, request: Request) -> Request:
        self.running.remove(request)
        request.preemptions += 1
        self.add(request)
        return request
