"""The API's watcher: what the workers publish for a call's replies, in order, until a deadline."""
import asyncio
import time

import pytest
from channels.layers import get_channel_layer

from chatsite.api import _Watcher
from chatsite.publisher import generation_group


@pytest.mark.asyncio
async def test_the_watcher_hands_over_each_reply_s_events_in_order_and_notes_when_it_ends():
    watcher = await _Watcher.start([7, 8])
    layer = get_channel_layer()
    await layer.group_send(generation_group(8), {"type": "gen.token", "text": "Hi", "index": 0})
    await layer.group_send(generation_group(8), {"type": "gen.done", "status": "done", "finish_reason": "length",
                                                 "content": "Hi", "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    deadline = time.monotonic() + 5
    assert await watcher.next(deadline) == (1, {"type": "gen.token", "text": "Hi", "index": 0})
    index, event = await watcher.next(deadline)
    assert (index, event["type"]) == (1, "gen.done")
    assert watcher.unfinished == {7}
    assert watcher.usage()["completion_tokens"] == 1
    await layer.group_send(generation_group(7), {"type": "gen.error", "error": "The model could not answer."})
    assert await watcher.next(deadline) == (0, {"type": "gen.error", "error": "The model could not answer."})
    assert watcher.unfinished == set()
    await watcher.close(user=None)  # nothing left to stop: it only unsubscribes
    assert not layer.groups.get(generation_group(7)) and not layer.groups.get(generation_group(8))


@pytest.mark.asyncio
async def test_the_watcher_gives_up_at_its_deadline():
    watcher = await _Watcher.start([9])
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await watcher.next(started + 0.2)
    assert 0.15 <= time.monotonic() - started < 2
    for task in watcher._readers:
        task.cancel()
