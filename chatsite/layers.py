"""Channel layers. The embedded mode's: Channels' InMemoryChannelLayer, made cheaper per message.
The distributed mode's: channels_redis, riding out a Redis outage (`RedisChannelLayer`).

Every token frame of every reply passes through the layer twice (`group_send`, `receive`), on
the server's event loop, while the model needs both cores. Channels' own layer, at each of
those calls, walks every channel and every group membership looking for expired entries, and
`group_send` makes a task per member channel. With 32 replies streaming that is about a
tenth of the event loop's CPU. Here expired entries are swept at most
once a second, and a group's members are sent to one after another, which is the same thing:
`send` never waits (it puts the message on the channel's queue, or raises ChannelFull at once).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio
import redis.exceptions
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from channels_redis.core import RedisChannelLayer as ChannelsRedisChannelLayer

logger = logging.getLogger(__name__)

SWEEP_EVERY_S = 1.0  # messages expire after `expiry` (60 s): a sweep this late changes nothing


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        super()._clean_expired()

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            with contextlib.suppress(ChannelFull):  # as Channels does: a full channel misses the message
                await self.send(channel, message)


REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
RETRY_MAX_S = 2.0  # longest wait between two tries while Redis is away


POOL_CONNECTIONS = 100  # to Redis, per event loop; more callers wait their turn
POOL_WAIT_S = 20.0  # for a free connection, before the call fails


class RedisChannelLayer(ChannelsRedisChannelLayer):
    """channels_redis, but a receive waits through a Redis outage and goes on when it is back,
    instead of raising. A consumer whose receive raises is torn down, and with it the
    browser's socket; the API's watcher would stop hearing its reply. Sends still raise: their
    callers decide (a worker's frame is dropped, its text is in the database)."""

    def create_pool(self, index):
        """A pool that waits for a free connection instead of raising "Too many connections"
        (redis-py's default pool, at 100): a burst of API calls admitted together subscribes
        all of its replies at once, and every one of them must be heard."""
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        return redis.asyncio.BlockingConnectionPool.from_url(
            host.pop("address"), max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_S, **host
        )

    async def receive(self, channel):
        delay = 0.05
        while True:
            try:
                return await super().receive(channel)
            except REDIS_DOWN as error:
                logger.warning("channel layer: Redis unreachable (%s); retrying in %.2f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
