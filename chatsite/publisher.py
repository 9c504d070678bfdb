"""Workers → sockets: typed messages on the channel-layer group `gen.<message_id>`.

All sends go through one asyncio loop per process. In the embedded mode that is the server's
own loop, because InMemoryChannelLayer's queues belong to it; elsewhere a small loop thread
of our own, so channels_redis keeps one connection pool instead of one per call.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Literal, TypedDict

from channels.layers import get_channel_layer

SEND_TIMEOUT_S = 10.0


class TokenPayload(TypedDict):
    type: Literal["gen.token"]
    text: str
    index: int  # index of the first token in `text`


class DonePayload(TypedDict):
    type: Literal["gen.done"]
    status: str
    finish_reason: str
    content: str
    usage: dict


class ErrorPayload(TypedDict):
    type: Literal["gen.error"]
    error: str


Payload = TokenPayload | DonePayload | ErrorPayload


def generation_group(message_id: int) -> str:
    return f"gen.{message_id}"


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def publisher_use_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Send through `loop` from now on (the embedded server registers its own)."""
    global _loop
    with _loop_lock:
        _loop = loop


def _publishing_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="publisher-loop", daemon=True).start()
        return _loop


def publish(message_id: int, payload: Payload) -> None:
    """Send `payload` to everyone watching `message_id`; blocks until the layer took it."""
    layer = get_channel_layer()
    future = asyncio.run_coroutine_threadsafe(
        layer.group_send(generation_group(message_id), dict(payload)), _publishing_loop()
    )
    future.result(SEND_TIMEOUT_S)


def publish_token(message_id: int, *, text: str, index: int) -> None:
    publish(message_id, TokenPayload(type="gen.token", text=text, index=index))


def publish_done(message_id: int, *, status: str, finish_reason: str, content: str, usage: dict) -> None:
    publish(
        message_id,
        DonePayload(type="gen.done", status=status, finish_reason=finish_reason, content=content, usage=usage),
    )


def publish_error(message_id: int, *, error: str) -> None:
    publish(message_id, ErrorPayload(type="gen.error", error=error))
