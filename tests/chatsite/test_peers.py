"""chatsite.peers: the embedded web processes' channel layer. A process that connects to
another late (it was starting, or was dropped) first gets every reply that one streams, whole."""
import asyncio

import pytest

from chatsite import live
from chatsite.peers import PeerChannelLayer


@pytest.fixture
def two_layers(settings, tmp_path, monkeypatch):
    if settings.REDIS_URL:
        pytest.skip("the embedded mode's memory store")
    settings.DATA_DIR, settings.CHAT_WEB_PROCESSES = tmp_path, 2
    settings.CHATSITE_WEB_INDEX = 0
    sender = PeerChannelLayer()
    settings.CHATSITE_WEB_INDEX = 1
    receiver = PeerChannelLayer()
    monkeypatch.setattr(live, "_tell_other_processes", lambda message_id, payload: None)  # no publisher here
    monkeypatch.setattr(live, "_own", set())  # not the replies earlier tests left mid-stream
    received = []
    monkeypatch.setattr(live, "live_apply", received.extend)  # what the receiving process applies
    yield sender, receiver, received
    for message_id in (101, 102):
        live.live_clear(message_id)


def frame(message_id: int, offset: int, text: str) -> tuple[str, dict]:
    return f"gen.{message_id}", {"type": "gen.token", "offset": offset, "text": text, "index": 0}


async def arrived(received: list, count: int) -> list:
    for _ in range(100):
        if len(received) >= count:
            return received
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {received}")


async def test_a_late_peer_first_gets_each_running_reply_whole(two_layers, monkeypatch):
    import chatsite.peers

    sender, receiver, received = two_layers
    monkeypatch.setattr(chatsite.peers, "RETRY_S", 0.0)
    # This process's worker streams reply 101 while the other process does not listen yet.
    live.live_reset(101, "Once")
    live.live_append(101, 4, " upon")
    await sender.group_send_many([frame(101, 4, " upon")])  # nobody to send it to: lost for it
    live.live_reset(102, "")
    live.live_clear(102)  # ended: not sent
    await receiver.listen()
    live.live_append(101, 9, " a time")
    await sender.group_send_many([frame(101, 9, " a time")])
    got = await arrived(received, 2)
    assert got[0] == ("live.101", {"type": "live.reset", "content": "Once upon a time"})
    assert got[1] == frame(101, 9, " a time")  # within that text: joins it
    assert len(got) == 2


async def test_a_connected_peer_gets_the_frames_alone(two_layers):
    sender, receiver, received = two_layers
    await receiver.listen()
    live.live_reset(101, "")
    await sender.group_send_many([frame(101, 0, "Hi")])  # connects: nothing streamed yet but 101, empty
    await sender.group_send_many([frame(101, 2, " there")])
    got = await arrived(received, 3)
    assert got == [("live.101", {"type": "live.reset", "content": ""}), frame(101, 0, "Hi"), frame(101, 2, " there")]
