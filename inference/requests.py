"""One generation request: its inputs, its state, its accounting and its event stream."""
from __future__ import annotations

import enum
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from inference.sampling_params import SamplingParams


class RequestStatus(enum.StrEnum):
    """Where a request stands. The chat's Message.status mirrors these values."""

    PENDING = "pending"  # queued, not yet admitted to a batch
    STREAMING = "streaming"  # admitted; tokens are being generated
    DONE = "done"  # ended by end-of-sequence or max_new_tokens
    STOPPED = "stopped"  # ended on request (stop button, disconnect, shutdown, timeout)
    FAILED = "failed"  # ended by an error

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.DONE, RequestStatus.STOPPED, RequestStatus.FAILED)


@dataclass
class Usage:
    """What one request cost. Times are seconds measured from the request's arrival."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_wait_s: float = 0.0  # arrival → first forward pass that includes this request
    ttft_s: float | None = None  # arrival → first generated token
    decode_s: float = 0.0  # first token → last token
    compute_s: float = 0.0  # this request's share of the engine's forward-pass wall time


@dataclass(frozen=True)
class TokenEvent:
    """Newly decoded text. `text` may be empty while a multi-byte character is incomplete."""

    text: str
    index: int  # position of the token among the generated tokens, from 0


@dataclass(frozen=True)
class FinishEvent:
    status: RequestStatus
    reason: str  # "eos", "length", "stop", "shutdown", "error: ..."
    usage: Usage


Event = TokenEvent | FinishEvent

_ids = itertools.count(1)


class EventStream:
    """The reading side of a request: its events in order, and whether it has finished.
    A Request in this process and a request in an engine process (inference.engine_process)
    are read the same way."""

    _events: queue.SimpleQueue
    _finished: threading.Event

    def events(self, timeout: float | None = None) -> Iterator[Event | None]:
        """Yield events until the FinishEvent; yield None whenever `timeout` passes quietly."""
        while True:
            event = self.next_event(timeout)
            yield event
            if isinstance(event, FinishEvent):
                return

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting at most `timeout` seconds for it (None if none came)."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until the request has finished or `timeout` passes; whether it has finished.
        A reader that batches text wakes here once per interval instead of at every token."""
        return self._finished.wait(timeout)

    def drain(self) -> list[Event]:
        """Every event already waiting, without blocking (to coalesce tokens into one frame)."""
        drained = []
        while True:
            try:
                drained.append(self._events.get_nowait())
            except queue.Empty:
                return drained


@dataclass(eq=False)
class Request(EventStream):
    """Created by the caller, advanced only by the engine's thread, read through `events()`.

    `cancel()` is the one method other threads call; the engine honours it before its next step.
    """

    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0  # higher runs first
    arrival_time: float = field(default_factory=time.time)  # wall clock, seconds
    id: int = field(default_factory=lambda: next(_ids))
    status: RequestStatus = RequestStatus.PENDING
    output_ids: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    preemptions: int = 0  # times it was taken out of the batch for a higher-priority request
    failed_steps: int = 0  # engine steps that raised while it was in the batch
    error: str | None = None  # set by the engine when this request alone failed
    cumulative_logprob: float = 0.0  # sum of the model's log-probabilities of its tokens
    stop_kept: int | None = None  # tokens kept, once its text was found to reach a stop string
    parent: Request | None = field(default=None, repr=False)  # set on best-of-n candidates
    candidates: list[Request] = field(default_factory=list, repr=False)  # set on a best-of-n request
    _events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancel_reason: str = field(default="stop", repr=False)
    # Where its events go instead of its own queue: an engine process forwards them to the
    # process that submitted the request (inference.engine_process).
    sink: Callable[[Event], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        self.usage.prompt_tokens = len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt and generated tokens: what its KV cache holds while it runs."""
        return len(self.prompt_ids) + len(self.output_ids)

    def cancel(self, reason: str = "stop") -> None:
        """Ask the engine to end this request; what was generated so far is kept."""
        self._cancel_reason = reason
        self._cancelled.set()
        for candidate in self.candidates:
            candidate.cancel(reason)

    @property
    def cancel_reason(self) -> str:
        return self._cancel_reason

    @property
    def cancel_requested(self) -> bool:
        return self._cancelled.is_set()

    # Called by the engine's output stage only (inference.outputs).
    def emit(self, event: Event) -> None:
        if self.sink is not None:
            self.sink(event)
        else:
            self._events.put(event)

    def finish(self, status: RequestStatus, reason: str) -> None:
        self.status = status
        self.finish_reason = reason
        self.emit(FinishEvent(status=status, reason=reason, usage=self.usage))
        self._finished.set()
