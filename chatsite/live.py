"""The text of replies being generated, as far as it has streamed, readable by any web process:
what a page that opens or reconnects mid-answer is sent before the live frames.

The database has the text only as of the last save (every 2 s); the frames sent since would be
missing. So each piece a worker publishes is also kept here, with its character offset in the
reply: a list per reply in Redis (the distributed mode), or in this process's memory (the
embedded mode, where the worker is this process; with several web processes each keeps every
reply's pieces from the frames the others send it, chatsite/peers.py). A reply taken over by another worker starts
again from its saved text, so a piece's offset may go back: reading applies the pieces in
order, each cutting the text at its offset.
"""
from __future__ import annotations

import json
import logging
import threading
from functools import cache

from django.conf import settings

logger = logging.getLogger(__name__)

TTL_S = 3600  # a reply's pieces outlive a worker that died without clearing them

# The replies this process's worker is streaming, from its reset to its clear: what another
# embedded web process that connects late is sent whole (chatsite/peers.py).
_own: set[int] = set()


def live_reset(message_id: int, content: str) -> None:
    """A worker starts (or resumes) the reply from `content`."""
    _own.add(message_id)
    _best_effort(_store().reset, message_id, content)
    _tell_other_processes(message_id, {"type": "live.reset", "content": content})


def live_append(message_id: int, offset: int, text: str) -> None:
    _best_effort(_store().append, message_id, offset, text)


def live_text(message_id: int, saved: str = "") -> str:
    """The reply's text as far as it has streamed, built on `saved` (its row's text, a true
    beginning of it): each piece cuts the text at its offset. A piece that starts past the end
    is left out, since what comes before it is not known: a web process that was not yet
    listening when a reply began missed its first frames, and their suffix alone is not the
    text. So the result is always a true beginning of the reply, perhaps shorter than `saved`
    ("" once the reply has ended: read the row then)."""
    text = saved
    for offset, piece in _store().pieces(message_id):
        if offset <= len(text):
            text = text[:offset] + piece
    return text


def live_clear(message_id: int) -> None:
    _own.discard(message_id)
    _best_effort(_store().clear, message_id)
    _tell_other_processes(message_id, {"type": "live.clear"})


def live_own_texts() -> dict[int, str]:
    """The text so far of each reply this process's worker is streaming."""
    return {message_id: live_text(message_id) for message_id in list(_own)}


def _tell_other_processes(message_id: int, payload: dict) -> None:
    """The other embedded web processes keep their own store: the reset or clear goes to them
    through the publisher, in order with the reply's frames (chatsite/peers.py)."""
    from chatsite.peers import LIVE_GROUP_PREFIX, peers_configured

    if peers_configured():
        from chatsite import publisher

        publisher.publish(f"{LIVE_GROUP_PREFIX}{message_id}", payload)


def live_apply(messages: list[tuple[str, dict]]) -> None:
    """What another web process sent: its token frames, resets and clears, into this
    process's store."""
    store = _store()
    for group, message in messages:
        kind = message.get("type")
        if kind not in ("gen.token", "live.reset", "live.clear"):
            continue
        message_id = int(group.split(".", 1)[1])  # gen.<id> or live.<id>
        if kind == "gen.token":
            store.append(message_id, message["offset"], message["text"])
        elif kind == "live.reset":
            store.reset(message_id, message["content"])
        else:
            store.clear(message_id)


def _best_effort(write, *args) -> None:
    """Writes never fail a generation: while Redis is away a resume falls back to the saved text."""
    try:
        write(*args)
    except Exception as error:
        logger.warning("live text not written for message %s: %r", args[0], error)


class _MemoryStore:
    def __init__(self) -> None:
        self._pieces: dict[int, list[tuple[int, str]]] = {}
        self._lock = threading.Lock()

    def reset(self, message_id: int, content: str) -> None:
        with self._lock:
            self._pieces[message_id] = [(0, content)] if content else []

    def append(self, message_id: int, offset: int, text: str) -> None:
        with self._lock:
            self._pieces.setdefault(message_id, []).append((offset, text))

    def pieces(self, message_id: int) -> list[tuple[int, str]]:
        with self._lock:
            return list(self._pieces.get(message_id, ()))

    def clear(self, message_id: int) -> None:
        with self._lock:
            self._pieces.pop(message_id, None)


class _RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)

    @staticmethod
    def _key(message_id: int) -> str:
        return f"chatsite:live:{message_id}"

    def reset(self, message_id: int, content: str) -> None:
        pipeline = self._redis.pipeline()
        pipeline.delete(self._key(message_id))
        if content:
            pipeline.rpush(self._key(message_id), json.dumps([0, content]))
            pipeline.expire(self._key(message_id), TTL_S)
        pipeline.execute()

    def append(self, message_id: int, offset: int, text: str) -> None:
        pipeline = self._redis.pipeline()
        pipeline.rpush(self._key(message_id), json.dumps([offset, text]))
        pipeline.expire(self._key(message_id), TTL_S)
        pipeline.execute()

    def pieces(self, message_id: int) -> list[tuple[int, str]]:
        return [tuple(json.loads(item)) for item in self._redis.lrange(self._key(message_id), 0, -1)]

    def clear(self, message_id: int) -> None:
        self._redis.delete(self._key(message_id))


@cache
def _store() -> _MemoryStore | _RedisStore:
    return _RedisStore(settings.REDIS_URL) if settings.REDIS_URL else _MemoryStore()
