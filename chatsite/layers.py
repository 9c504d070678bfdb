"""Channel layers. The embedded mode's: Channels' InMemoryChannelLayer, made cheaper per message.
The distributed mode's: channels_redis, riding out a Redis outage and moving frames in batches
(`RedisChannelLayer`).

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
import collections
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


# Messages that may wait per channel, as the Redis layer is configured. Channels' default of 100
# is about five seconds of one reply's frames: a socket whose event loop fell that far behind
# (a busy embedded server) missed frames, and its page had to ask for the text again.
CAPACITY = 1000


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    def __init__(self, *args, capacity: int = CAPACITY, **kwargs) -> None:
        super().__init__(*args, capacity=capacity, **kwargs)
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

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        """`group_send` each (group, message), in order."""
        for group, message in messages:
            await self.group_send(group, message)


REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
RETRY_MAX_S = 2.0  # longest wait between two tries while Redis is away


RECEIVE_BATCH = 500  # messages taken off this process's Redis queue per trip, at most

# channels_redis' own script for a group's message (core.RedisChannelLayer.group_send): each
# channel key gets the message unless it is at capacity.
GROUP_SEND_LUA = """
    local over_capacity = 0
    local current_time = ARGV[#ARGV - 1]
    local expiry = ARGV[#ARGV]
    for i=1,#KEYS do
        if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
            redis.call('ZADD', KEYS[i], current_time, ARGV[i])
            redis.call('EXPIRE', KEYS[i], expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""

POOL_CONNECTIONS = 100  # to Redis, per event loop; more callers wait their turn
POOL_WAIT_S = 20.0  # for a free connection, before the call fails


class RedisChannelLayer(ChannelsRedisChannelLayer):
    """channels_redis, but a receive waits through a Redis outage and goes on when it is back,
    instead of raising. A consumer whose receive raises is torn down, and with it the
    browser's socket; the API's watcher would stop hearing its reply. Sends still raise: their
    callers decide (a worker's frame is dropped, its text is in the database).

    And frames move in batches. channels_redis spends four trips to Redis on each message
    sent to a group and four on each message received, one message at a time on the event
    loop: 256 replies' first frames took two seconds to cross from a worker to the web process
    (docs/benchmarks.md). `group_send_many` sends a batch of a worker's frames in two trips,
    and a receive takes every message waiting for this process in one more.

    Both lean on channels_redis' internals (its key layout, `_map_channel_keys_to_connection`,
    `receive_buffer`); tests/chatsite/test_layers.py checks them against its own `group_send`
    and `receive`, so an upgrade that changes them fails there."""

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

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        """`group_send` each (group, message), in order, in two trips to each Redis shard: one
        for the groups' members, one for every message. A channel at capacity misses its
        message, as with `group_send`."""
        if not messages:
            return
        now = time.time()
        members: dict[str, list[str]] = {}
        shards = collections.defaultdict(list)
        for group, _ in messages:
            if group not in members:
                assert self.require_valid_group_name(group), "Group name not valid"
                members[group] = []
                shards[self.consistent_hash(group)].append(group)
        for index, groups in shards.items():
            pipe = self.connection(index).pipeline(transaction=False)
            for group in groups:
                key = self._group_key(group)
                pipe.zremrangebyscore(key, min=0, max=int(now) - self.group_expiry)
                pipe.zrange(key, 0, -1)
            found = await pipe.execute()
            for group, names in zip(groups, found[1::2], strict=True):
                members[group] = [name.decode("utf8") for name in names]
        pipes, swept = {}, set()
        for group, message in messages:
            if not members[group]:
                continue
            keys_by_shard, key_message, key_capacity = self._map_channel_keys_to_connection(members[group], message)
            for index, keys in keys_by_shard.items():
                if index not in pipes:
                    pipes[index] = self.connection(index).pipeline(transaction=False)
                pipe = pipes[index]
                for key in keys:
                    if key not in swept:  # expired messages go once per batch, as group_send does per call
                        swept.add(key)
                        pipe.zremrangebyscore(key, min=0, max=int(now) - int(self.expiry))
                args = [key_message[key] for key in keys] + [key_capacity[key] for key in keys]
                pipe.eval(GROUP_SEND_LUA, len(keys), *keys, *args, time.time(), self.expiry)
        for pipe in pipes.values():
            await pipe.execute()

    async def receive_single(self, channel):
        """Receive as channels_redis does; for this process's own queue, also take up to
        RECEIVE_BATCH messages waiting behind the first, in one trip, and hand them to their
        channels' buffers, where their receivers find them. A message taken this way and not
        yet read is lost only with the process, as are the buffers."""
        received = await super().receive_single(channel)
        if not channel.endswith("!"):
            return received
        waiting = await self.connection(self.consistent_hash(channel)).zpopmin(self.prefix + channel, RECEIVE_BATCH)
        if waiting:
            # `receive` buffers the first message as soon as this returns; the rest go in after it.
            asyncio.get_running_loop().call_soon(self._buffer, waiting)
        return received

    def _buffer(self, waiting: list) -> None:
        for content, _ in waiting:
            message = self.deserialize(content)
            targets = message.pop("__asgi_channel__", None)
            for target in targets if isinstance(targets, list) else [targets]:
                if target is not None:
                    self.receive_buffer[target].put_nowait(dict(message))
