"""From the engine's token ids to what a request's reader sees: text deltas, stop strings, and
every event of a request in order, its FinishEvent last.

The engine's thread records what each step decided (`token`, `text`, `finish`) and processes
the step's list at `flush`, after the step (and after a prefill, so first tokens are not held
back a decode step). On the GPU runner that is after the next step was launched: the text is
made while the device runs it. A thread of its own for this stage was measured and dropped:
its switching with the engine's thread over the interpreter lock cost more than the work
(docs/decisions.md).

A stop string is found here, so the engine learns of it a step or so later (`on_stop`, which
asks the engine to end the request): the tokens generated past it are dropped, the answer ends
just before it, and the request finishes DONE with reason "stop_string" whatever ended it in
the engine meanwhile.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.detokenize import IncrementalDetokenizer
from inference.prompts import tokenizer_lock
from inference.requests import Request, RequestStatus, TokenEvent

logger = logging.getLogger(__name__)

_TOKEN, _TEXT, _FINISH = range(3)


@dataclass
class _Text:
    """One request's text so far, as its reader is to see it."""

    detokenizer: IncrementalDetokenizer
    text: str = ""
    emitted: int = 0  # characters of `text` already sent
    tokens: int = 0  # token ids turned into text
    stopped_at: int | None = None  # tokens kept, once a stop string was found
    first_unsent: int | None = field(default=None)  # index of the first token not yet sent


class OutputStage:
    """Owned by one Engine; every call comes from the engine's thread, and so do
    `on_stop(request, tokens_kept)` and `after_batch()`."""

    def __init__(
        self,
        tokenizer,
        *,
        on_stop: Callable[[Request, int], None],
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._lock = tokenizer_lock(tokenizer)
        self._on_stop = on_stop
        self.after_batch = after_batch
        self._texts: dict[int, _Text] = {}
        self._batch: list[tuple] = []

    # The engine's side.
    def token(self, request: Request, token_id: int) -> None:
        """`request` generated `token_id` (already appended to its output_ids)."""
        self._batch.append((_TOKEN, request, token_id, len(request.output_ids) - 1))

    def text(self, request: Request, text: str) -> None:
        """Send `text` as it is (a best-of-n request's chosen answer)."""
        self._batch.append((_TEXT, request, text))

    def finish(self, request: Request) -> None:
        """`request` has ended (its status and finish_reason set): send what text is left,
        then its FinishEvent."""
        self._batch.append((_FINISH, request))

    def flush(self) -> None:
        """Turn what was recorded since the last flush into text and events."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            self._process(batch)
        except Exception:  # a bug here must not silence every request after it
            logger.exception("turning tokens into text failed")

    def _process(self, items: list[tuple]) -> None:
        with self._lock:
            for item in items:
                kind, request = item[0], item[1]
                if kind == _TOKEN:
                    self._add_token(request, item[2], item[3])
                elif kind == _TEXT:
                    request.emit(TokenEvent(text=item[2], index=0))
                else:
                    self._finish(request)
        if self.after_batch is not None:
            self.after_batch()

    def _add_token(self, request: Request, token_id: int, index: int) -> None:
        state = self._texts.get(request.id)
        if state is None:
            state = self._texts[request.id] = _Text(IncrementalDetokenizer(self._tokenizer))
        if state.stopped_at is not None:
            return  # generated past a stop string before the engine heard of it
        state.text += state.detokenizer.add(token_id)
        state.tokens += 1
        if state.first_unsent is None:
            state.first_unsent = index
        stops = request.params.stop
        if stops and (cut := find_stop(state.text, stops, state.emitted)) is not None:
            state.text = state.text[:cut]
            state.stopped_at = state.tokens
            self._send(request, state, len(state.text))
            self._on_stop(request, state.tokens)
            return
        # Hold back a tail that could still become a stop string.
        self._send(request, state, len(state.text) - stop_prefix_length(state.text, stops))

    def _send(self, request: Request, state: _Text, upto: int) -> None:
        if upto > state.emitted:
            if request.parent is None:  # a best-of-n candidate's text is never streamed
                request.emit(TokenEvent(text=state.text[state.emitted : upto], index=state.first_unsent or 0))
            state.emitted = upto
            state.first_unsent = None

    def _finish(self, request: Request) -> None:
        state = self._texts.pop(request.id, None)
        if state is not None:
            if state.stopped_at is not None:
                stopped_at(request, state.stopped_at)
            self._send(request, state, len(state.text))
        request.finish(request.status, request.finish_reason or "")


def stopped_at(request: Request, tokens_kept: int) -> None:
    """End `request`'s answer at a stop string found after its first `tokens_kept` tokens."""
    request.status, request.finish_reason = RequestStatus.DONE, "stop_string"
    del request.output_ids[tokens_kept:]
    request.usage.completion_tokens = len(request.output_ids)


def find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Where the earliest stop string begins in `text`, looking only where a new one can be."""
    longest = max((len(s) for s in stops), default=0)
    start = max(0, emitted - longest)
    found = [index for stop in stops if (index := text.find(stop, start)) != -1]
    return min(found) if found else None


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that begins some stop string."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-length:]):
                best = length
                break
    return best
