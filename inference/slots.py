"""Bookkeeping of the GPU runner's preallocated KV cache (`inference.gpu_runner`): which slot
each sequence holds, and the batch and length sizes its decode steps are captured at.

Plain Python, no device: tested on any machine.
"""
from __future__ import annotations

import bisect
import heapq

SMALLEST_LENGTH = 128  # the shortest KV span a captured step attends over


class NoFreeSlot(RuntimeError):
    """More sequences than slots: the scheduler admits at most as many as there are."""


class SlotTable:
    """Slots 0..slots-1, each the KV room of one sequence. A sequence takes the lowest free
    slot, so the occupied ones stay packed at the start and a step over the first `span` slots
    computes few empty rows."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a KV cache needs at least one slot")
        self.slots = slots
        self._free = list(range(slots))  # a heap: the lowest free slot first
        self._held: dict[int, int] = {}  # request id → slot

    def take(self, request_id: int) -> int:
        if request_id in self._held:
            raise ValueError(f"request {request_id} holds slot {self._held[request_id]} already")
        if not self._free:
            raise NoFreeSlot(f"all {self.slots} KV slots are held")
        slot = heapq.heappop(self._free)
        self._held[request_id] = slot
        return slot

    def release(self, request_id: int) -> int | None:
        """Free the request's slot; returns it, or None if it held none."""
        slot = self._held.pop(request_id, None)
        if slot is not None:
            heapq.heappush(self._free, slot)
        return slot

    def slot_of(self, request_id: int) -> int:
        return self._held[request_id]

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    @property
    def span(self) -> int:
        """One past the highest held slot: a step over slots [0, span) covers every sequence."""
        return max(self._held.values(), default=-1) + 1

    def clear(self) -> None:
        self._free = list(range(self.slots))
        self._held.clear()


def batch_sizes(slots: int) -> tuple[int, ...]:
    """The batch sizes decode steps are captured at (as nano-vllm's): 1, 2, 4, 8, then every 16,
    and `slots` itself. A step of n rows runs at the next size up; the extra rows are empty."""
    sizes = {size for size in (1, 2, 4, 8) if size < slots}
    sizes.update(range(16, slots, 16))
    sizes.add(slots)
    return tuple(sorted(sizes))


def length_sizes(capacity: int) -> tuple[int, ...]:
    """The KV spans decode steps are captured at: powers of two from SMALLEST_LENGTH, and the
    capacity. A step attends over the next span up from its longest sequence, so a batch of
    short answers reads a short slice of every slot, not the whole capacity."""
    sizes = []
    size = SMALLEST_LENGTH
    while size < capacity:
        sizes.append(size)
        size *= 2
    sizes.append(capacity)
    return tuple(sizes)


def size_for(needed: int, sizes: tuple[int, ...]) -> int:
    """The smallest of `sizes` (ascending) that holds `needed`."""
    index = bisect.bisect_left(sizes, needed)
    if index == len(sizes):
        raise ValueError(f"{needed} is more than the largest size, {sizes[-1]}")
    return sizes[index]
