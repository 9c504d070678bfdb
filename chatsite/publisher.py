"""Workers → sockets: typed messages on the channel-layer groups `gen.<message_id>` (a reply's
frames) and `user.<user_id>` (news about a user's conversations).

All sends go through one asyncio loop per process, in the order they were published, without
the caller waiting. In the embedded mode that loop is the server's own, because
InMemoryChannelLayer's queues belong to it; elsewhere a small loop thread of our own, so
channels_redis keeps one connection pool instead of one per call.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Literal, TypedDict

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 2.0  # one batch's send; past it the batch is dropped and the queue moves on
SEND_BATCH = 256  # frames sent together, at most
# After a failed send, token frames are dropped without trying for this long: while the layer
# is down each try would wait SEND_TIMEOUT_S, and the queue would fall minutes behind. Ends
# and errors are still tried; the text is in the database either way.
OUTAGE_BACKOFF_S = 1.0


# Each gen.* payload names its reply (`message`): a socket follows one reply at a time, and a
# late frame of the reply it followed before may still be waiting in its channel when it
# follows the next (its end was read from the database first); it must not be taken for the
# new reply's.
class TokenPayload(TypedDict):
    type: Literal["gen.token"]
    message: int
    text: str
    index: int  # index of the first token in `text`
    offset: int  # where `text` begins in the reply's content, in characters


class DonePayload(TypedDict):
    type: Literal["gen.done"]
    message: int
    status: str
    finish_reason: str
    content: str
    usage: dict


class ErrorPayload(TypedDict):
    type: Literal["gen.error"]
    message: int
    error: str


class ConversationPayload(TypedDict):
    type: Literal["conversation.updated"]
    conversation: int
    title: str


Payload = TokenPayload | DonePayload | ErrorPayload | ConversationPayload


def generation_group(message_id: int) -> str:
    return f"gen.{message_id}"


def user_group(user_id: int) -> str:
    """Every socket of one user: news about their conversations (a title, a rename)."""
    return f"user.{user_id}"


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def publisher_use_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Send through `loop` from now on (the embedded server registers its own)."""
    global _loop
    if _loop is loop:
        return
    with _loop_lock:
        _loop = loop


def _publishing_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="publisher-loop", daemon=True).start()
        return _loop


def publish(group: str, payload: Payload) -> None:
    """Send `payload` to everyone in `group`, after everything published before it
    in this process. Returns at once: the payload is queued, and the publishing loop sends the
    queue in order. Waiting for each send would cost the calling thread a wake-up per frame,
    and 32 replies' threads waking that way take the CPU from the model (docs/benchmarks.md)."""
    global _flushing_on
    loop = _publishing_loop()
    with _pending_lock:
        _pending.append((group, dict(payload)))
        start = _flushing_on is not loop
        _flushing_on = loop
    if start:
        loop.call_soon_threadsafe(loop.create_task, _flush())


_pending: list[tuple[str, dict]] = []
_pending_lock = threading.Lock()
_flushing_on: asyncio.AbstractEventLoop | None = None  # the loop whose _flush is running or due
# Until when token frames are dropped (time.monotonic()). Kept between flushes: at a few frames a
# second the queue empties after each, and a flush's own clock would forget the outage at once.
_down_until = 0.0


async def _flush() -> None:
    """Send the queue, oldest first, until it is empty. One at a time per loop, so each
    group's messages arrive in the order they were published; what queued up meanwhile goes
    in batches of up to SEND_BATCH (`group_send_many`, a couple of trips to Redis a batch)."""
    global _flushing_on, _down_until
    layer = get_channel_layer()
    while True:
        with _pending_lock:
            if not _pending:
                _flushing_on = None
                return
            batch = _pending[:]
            _pending.clear()
        if time.monotonic() < _down_until:
            batch = [(group, payload) for group, payload in batch if payload["type"] != "gen.token"]
        for start in range(0, len(batch), SEND_BATCH):
            part = batch[start:start + SEND_BATCH]
            try:
                await asyncio.wait_for(layer.group_send_many(part), SEND_TIMEOUT_S)
            except Exception as error:  # the layer is down or full: these frames are lost, the database keeps the text
                logger.warning("could not publish %s frames (%s): %r", len(part),
                               ", ".join(sorted({payload["type"] for _, payload in part})), error)
                _down_until = time.monotonic() + OUTAGE_BACKOFF_S


def publish_token(message_id: int, *, text: str, index: int, offset: int) -> None:
    publish(generation_group(message_id),
            TokenPayload(type="gen.token", message=message_id, text=text, index=index, offset=offset))


def publish_done(message_id: int, *, status: str, finish_reason: str, content: str, usage: dict) -> None:
    publish(
        generation_group(message_id),
        DonePayload(type="gen.done", message=message_id, status=status, finish_reason=finish_reason, content=content,
                    usage=usage),
    )


def publish_error(message_id: int, *, error: str) -> None:
    publish(generation_group(message_id), ErrorPayload(type="gen.error", message=message_id, error=error))


def publish_conversation(user_id: int, *, conversation_id: int, title: str) -> None:
    """Tell every socket of `user_id` that a conversation's title changed."""
    publish(user_group(user_id), ConversationPayload(type="conversation.updated", conversation=conversation_id, title=title))
