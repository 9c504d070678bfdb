"""The publisher: frames from many threads, sent in order by one loop, without the threads waiting."""
import asyncio
import threading

import pytest
from channels.layers import get_channel_layer

from chatsite import publisher


@pytest.fixture
async def watching(monkeypatch):
    """A channel in the group of message 900001, with the test's loop as the publishing loop."""
    publisher.publisher_use_loop(asyncio.get_running_loop())
    monkeypatch.setattr(publisher, "_down_until", 0.0)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(publisher.generation_group(900001), channel)
    yield layer, channel
    await layer.group_discard(publisher.generation_group(900001), channel)


async def test_frames_published_from_threads_arrive_in_order(watching):
    layer, channel = watching
    returned = threading.Event()

    def stream():
        for index in range(40):
            publisher.publish_token(900001, text=f"t{index}", index=index, offset=2 * index)
        publisher.publish_done(900001, status="done", finish_reason="stop", content="", usage={})
        returned.set()

    thread = threading.Thread(target=stream)
    thread.start()
    thread.join(10)  # the loop is blocked in this join: publishing did not wait for it
    assert returned.is_set()
    received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(41)]
    assert [m["index"] for m in received[:40]] == list(range(40))
    assert received[-1]["type"] == "gen.done"


async def test_after_a_failed_send_tokens_are_dropped_for_a_moment_but_ends_still_go_out(watching, monkeypatch):
    layer, channel = watching
    send = layer.group_send
    # Long enough that a loaded machine still publishes the next token within it.
    monkeypatch.setattr(publisher, "OUTAGE_BACKOFF_S", 2.0)

    async def failing_once(group, message):
        if message.get("text") == "lost":
            raise RuntimeError("the layer is down")
        await send(group, message)

    monkeypatch.setattr(layer, "group_send", failing_once)
    for text in ("before", "lost", "skipped while the layer is down"):
        await asyncio.to_thread(publisher.publish_token, 900001, text=text, index=0, offset=0)
        # A quiet stream: each frame's send is over before the next is published, so the
        # outage is remembered between sends, not only within one batch.
        await asyncio.sleep(0.05)
    await asyncio.to_thread(publisher.publish_done, 900001, status="done", finish_reason="eos", content="x", usage={})
    received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
    assert [m.get("text", m["type"]) for m in received] == ["before", "gen.done"]
    await asyncio.sleep(2.1)
    await asyncio.to_thread(publisher.publish_token, 900001, text="after", index=1, offset=6)
    assert (await asyncio.wait_for(layer.receive(channel), 5))["text"] == "after"
