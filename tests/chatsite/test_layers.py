"""The embedded mode's channel layer behaves as Channels' in-memory layer, with fewer sweeps."""
import asyncio
import time

import pytest
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

from chatsite import layers


@pytest.mark.asyncio
async def test_group_send_reaches_every_member_of_the_group_and_no_one_else():
    layer = layers.InMemoryChannelLayer()
    members = [await layer.new_channel() for _ in range(3)]
    outsider = await layer.new_channel()
    for channel in members:
        await layer.group_add("gen.1", channel)
    await layer.group_add("gen.2", outsider)

    await layer.group_send("gen.1", {"type": "gen.token", "text": "Hi"})

    for channel in members:
        assert await asyncio.wait_for(layer.receive(channel), 1) == {"type": "gen.token", "text": "Hi"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(outsider), 0.1)


@pytest.mark.asyncio
async def test_a_full_channel_misses_the_message_and_the_others_still_get_it():
    layer = layers.InMemoryChannelLayer(capacity=1)
    full, other = await layer.new_channel(), await layer.new_channel()
    await layer.send(full, {"type": "first"})
    for channel in (full, other):
        await layer.group_add("gen.1", channel)

    await layer.group_send("gen.1", {"type": "second"})

    assert await layer.receive(other) == {"type": "second"}
    assert await layer.receive(full) == {"type": "first"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(full), 0.1)


@pytest.mark.asyncio
async def test_a_member_that_falls_hundreds_of_frames_behind_misses_none():
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("gen.1", channel)
    for number in range(500):
        await layer.group_send("gen.1", {"type": "gen.token", "number": number})
    assert [(await asyncio.wait_for(layer.receive(channel), 1))["number"] for _ in range(500)] == list(range(500))


@pytest.mark.asyncio
async def test_expired_messages_are_still_dropped(monkeypatch):
    monkeypatch.setattr(layers, "SWEEP_EVERY_S", 0.1)
    layer = layers.InMemoryChannelLayer(expiry=0.1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "stale"})
    await asyncio.sleep(0.3)  # past the message's expiry and the next sweep

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.1)


@pytest.mark.asyncio
async def test_the_layer_sweeps_once_a_second_not_at_every_call(monkeypatch):
    sweeps = []
    monkeypatch.setattr(ChannelsInMemoryChannelLayer, "_clean_expired", lambda self: sweeps.append(time.monotonic()))
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("gen.1", channel)
    started = time.monotonic()
    for n in range(200):
        await layer.group_send("gen.1", {"type": "gen.token", "n": n})
        await layer.receive(channel)
    if time.monotonic() - started < layers.SWEEP_EVERY_S:
        assert len(sweeps) == 1
    else:  # a very slow machine: still at most one sweep a second
        assert len(sweeps) <= 1 + (time.monotonic() - started) / layers.SWEEP_EVERY_S


@pytest.mark.asyncio
async def test_the_redis_layer_subscribes_more_channels_at_once_than_its_pool_has_connections():
    from tests.e2e.servers import require_service

    require_service("127.0.0.1", 6379, "Redis")
    layer = layers.RedisChannelLayer(hosts=[{"address": "redis://127.0.0.1:6379/11"}], prefix=f"test{time.time_ns()}")
    channels = [await layer.new_channel() for _ in range(3 * layers.POOL_CONNECTIONS)]
    try:
        # As the API subscribes a burst of calls admitted together: every one at once.
        await asyncio.gather(*(layer.group_add(f"gen.{i}", channel) for i, channel in enumerate(channels)))
        for i in (0, len(channels) // 2, len(channels) - 1):
            await layer.group_send(f"gen.{i}", {"type": "gen.token", "text": str(i)})
            assert (await asyncio.wait_for(layer.receive(channels[i]), 10))["text"] == str(i)
    finally:
        await layer.flush()


@pytest.fixture
async def redis_layer():
    from tests.e2e.servers import require_service

    require_service("127.0.0.1", 6379, "Redis")
    layer = layers.RedisChannelLayer(
        hosts=[{"address": "redis://127.0.0.1:6379/11"}], prefix=f"test{time.time_ns()}", capacity=1000
    )
    yield layer
    await layer.flush()


@pytest.mark.asyncio
async def test_group_send_many_delivers_what_group_send_does_in_order(redis_layer):
    layer = redis_layer
    one, two, both, outsider = [await layer.new_channel() for _ in range(4)]
    for group, channel in (("gen.1", one), ("gen.2", two), ("gen.1", both), ("gen.2", both), ("gen.3", outsider)):
        await layer.group_add(group, channel)
    batch = [("gen.1", {"type": "gen.token", "text": "a"}), ("gen.2", {"type": "gen.token", "text": "b"}),
             ("gen.nobody", {"type": "gen.token", "text": "lost"}), ("gen.1", {"type": "gen.done", "text": "c"})]

    await layer.group_send_many(batch)
    await layer.group_send("gen.2", {"type": "gen.done", "text": "d"})  # channels_redis' own, after the batch

    async def texts(channel, count):
        return [(await asyncio.wait_for(layer.receive(channel), 5))["text"] for _ in range(count)]

    assert await texts(one, 2) == ["a", "c"]
    assert await texts(two, 2) == ["b", "d"]
    assert await texts(both, 4) == ["a", "b", "c", "d"]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(outsider), 0.2)
    await layer.group_send_many([])


@pytest.mark.asyncio
async def test_a_receive_takes_every_message_waiting_for_the_process_in_one_trip_keeping_order(redis_layer):
    layer = redis_layer
    channels = [await layer.new_channel() for _ in range(50)]
    for round_ in range(3):
        for i, channel in enumerate(channels):
            await layer.send(channel, {"type": "gen.token", "text": f"{i}.{round_}"})
    trips = []
    zpopmin = layer.connection(0).zpopmin

    async def counted(key, *args, **kwargs):
        if not key.endswith("$inflight"):  # channels_redis' own clean-up of its in-flight copy
            trips.append(key)
        return await zpopmin(key, *args, **kwargs)

    layer.connection(0).zpopmin = counted
    first = await asyncio.wait_for(layer.receive(channels[0]), 5)
    assert first["text"] == "0.0" and "__asgi_channel__" not in first
    assert len(trips) == 1  # the other 149 came with the first
    for i, channel in enumerate(channels):
        rounds = range(1, 3) if i == 0 else range(3)
        assert [(await asyncio.wait_for(layer.receive(channel), 5))["text"] for _ in rounds] == [f"{i}.{r}" for r in rounds]
    assert len(trips) == 1  # all of them read from the buffers
