"""The /ws/chat/ protocol against the real ASGI app, with the embedded Celery worker running
the real task on the tiny model."""
import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.asgi import application
from chatsite.models import Conversation, Message
from tests.chatsite.factories import conversation_with_reply

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 30


async def open_socket(user=None, origin=b"http://127.0.0.1"):
    headers = [(b"origin", origin)]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await sync_to_async(_session_key)(user)}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    if user is not None:  # a logged-in socket is told first whether the model is ready
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "model"
    return communicator


def _session_key(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def receive(communicator):
    """The next frame, past news of the model becoming ready (it may come at any time)."""
    while (frame := await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "model":
        pass
    return frame


async def send(communicator, frame):
    await communicator.send_json_to(frame)
    return await receive(communicator)


async def until_end(communicator):
    """Frames up to and including `done` or `error`."""
    frames = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(await receive(communicator))
    return frames


async def test_an_anonymous_socket_gets_an_error_and_is_closed():
    communicator = await open_socket()
    frame = await receive(communicator)
    assert frame == {"type": "error", "code": "not_authenticated", "error": "Log in to chat."}
    assert (await communicator.receive_output(timeout=TIMEOUT))["code"] == 4401


async def test_a_socket_from_a_foreign_origin_is_refused(make_user):
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert not connected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "send", "conversation": None}, "empty_content"),
        ({"type": "send", "conversation": None, "content": "  "}, "empty_content"),
        ({"type": "send", "conversation": None, "content": "x" * 4001}, "too_long"),
        ({"type": "send", "conversation": "one", "content": "hi"}, "bad_frame"),
        ({"type": "send", "conversation": 999999, "content": "hi"}, "not_found"),
        ('{"type": "send", "conversation": null, "content": ' + "[" * 1000 + "]" * 1000 + "}", "bad_json"),
        ({"type": "send", "conversation": None, "content": "nul\x00"}, "bad_text"),
        ('{"type": "send", "conversation": null, "content": "\\ud800"}', "bad_text"),
        ({"type": "send", "conversation": None, "content": ["hi"]}, "empty_content"),
    ],
)
async def test_a_bad_frame_gets_an_error_keeps_the_socket_open_and_writes_nothing(make_user, frame, code):
    communicator = await open_socket(await sync_to_async(make_user)())
    if isinstance(frame, str):
        await communicator.send_to(text_data=frame)
        reply = await receive(communicator)
    else:
        reply = await send(communicator, frame)
    assert reply["type"] == "error" and reply["code"] == code and reply["error"]
    # still open: a second bad frame is answered too
    assert (await send(communicator, {"type": "dance"}))["code"] == "unknown_type"
    assert await Message.objects.acount() == 0 and await Conversation.objects.acount() == 0
    await communicator.disconnect()


async def test_someone_elses_conversation_is_not_found_over_the_socket(make_user):
    conversation, _, _ = await sync_to_async(conversation_with_reply)(await sync_to_async(make_user)())
    communicator = await open_socket(await sync_to_async(make_user)())
    reply = await send(communicator, {"type": "send", "conversation": conversation.id, "content": "hi"})
    assert reply["code"] == "not_found"
    assert await Message.objects.acount() == 2
    await communicator.disconnect()


async def test_a_message_streams_its_reply_and_both_are_saved(make_user):
    user = await sync_to_async(make_user)()
    communicator = await open_socket(user)
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Hello there"})
    assert created["type"] == "message.created"
    assert created["user_message"]["content"] == "Hello there"
    assert created["message"]["status"] == "pending" and created["message"]["parent"] == created["user_message"]["id"]
    frames = await until_end(communicator)
    tokens, done = frames[:-1], frames[-1]
    assert tokens and all(f["type"] == "token" and f["message"] == created["message"]["id"] for f in tokens)
    assert done["type"] == "done" and done["status"] == "done"
    streamed = "".join(f["text"] for f in tokens)
    assert done["content"] == streamed
    reply = await Message.objects.aget(id=created["message"]["id"])
    assert reply.content == streamed and reply.status == "done"
    assert reply.completion_tokens == done["usage"]["completion_tokens"] > 0
    conversation = await Conversation.objects.aget(id=created["conversation"]["id"])
    assert conversation.owner_id == user.id and conversation.current_id == reply.id
    await communicator.disconnect()


async def test_a_second_message_continues_the_conversation(make_user):
    communicator = await open_socket(await sync_to_async(make_user)())
    first = await send(communicator, {"type": "send", "conversation": None, "content": "First"})
    await until_end(communicator)
    second = await send(communicator, {"type": "send", "conversation": first["conversation"]["id"], "content": "Second"})
    assert second["conversation"]["id"] == first["conversation"]["id"]
    assert second["user_message"]["parent"] == first["message"]["id"]
    assert (await until_end(communicator))[-1]["status"] == "done"
    await communicator.disconnect()


async def test_stop_ends_the_reply_and_keeps_its_partial_text(make_user, slow_engine):
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Tell me a story"})
    first_token = await receive(communicator)
    assert first_token["type"] == "token"
    await communicator.send_json_to({"type": "stop"})
    frames = await until_end(communicator)
    done = frames[-1]
    assert done["status"] == "stopped" and done["finish_reason"] == "stop"
    reply = await Message.objects.aget(id=created["message"]["id"])
    assert reply.status == "stopped"
    assert reply.content == first_token["text"] + "".join(f["text"] for f in frames[:-1])
    assert 0 < reply.completion_tokens < 100  # 512 allowed; stopped within a few 20 ms steps
    await communicator.disconnect()


async def test_sending_in_a_conversation_whose_answer_is_being_written_is_refused(make_user, slow_engine):
    user = await sync_to_async(make_user)()
    communicator, other_tab = await open_socket(user), await open_socket(user)
    created = await send(communicator, {"type": "send", "conversation": None, "content": "One"})
    while (frame := await receive(communicator))["type"] != "token":
        pass
    for socket_, kind in ((communicator, "send"), (other_tab, "send"), (other_tab, "regenerate")):
        frame = {"type": kind, "conversation": created["conversation"]["id"], "content": "Two",
                 "message": created["message"]["id"]}
        await socket_.send_json_to(frame)
        while (answer := await receive(socket_))["type"] == "token":
            pass
        assert answer["type"] == "error" and answer["code"] == "busy" and "stop it" in answer["error"]
    assert await Message.objects.acount() == 2
    await communicator.send_json_to({"type": "stop"})
    await until_end(communicator)
    for socket_ in (communicator, other_tab):
        await socket_.disconnect()


async def test_a_late_frame_of_the_reply_followed_before_is_not_taken_for_the_new_one(make_user, slow_engine):
    """A socket whose reply's end it read from the database (the worker's end frame was slow)
    may still find that reply's frames in its channel once it follows the next reply."""
    from channels.layers import get_channel_layer

    from chatsite.publisher import generation_group

    user = await sync_to_async(make_user)()
    conversation, _, before = await database_sync_to_async(conversation_with_reply)(user, reply_text="The old answer")
    communicator = await open_socket(user)
    created = await send(communicator, {"type": "send", "conversation": conversation.id, "content": "And now?"})
    assert (await receive(communicator))["type"] == "token"
    layer = get_channel_layer()
    (channel,) = layer.groups[generation_group(created["message"]["id"])]
    await layer.send(channel, {"type": "gen.token", "message": before.id, "text": " old", "index": 3, "offset": 10})
    await layer.send(channel, {"type": "gen.done", "message": before.id, "status": "done", "finish_reason": "stop",
                               "content": "The old answer", "usage": {}})
    await asyncio.sleep(0.3)  # the socket has taken both from its channel
    await communicator.send_json_to({"type": "stop"})
    frames = await until_end(communicator)
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "stopped"
    assert all(frame["message"] == created["message"]["id"] and "old" not in frame.get("text", "") for frame in frames)
    reply = await Message.objects.aget(id=created["message"]["id"])
    assert reply.status == "stopped" and frames[-1]["content"] == reply.content
    await communicator.disconnect()


async def test_an_end_read_from_the_database_waits_for_the_send_and_brings_the_text_it_missed(
        make_user, monkeypatch, settings):
    """Under load a send's own work (saving, queueing, the branch) can outlast QUIET_CHECK_S,
    and the reply can end meanwhile: the socket, which forwards no frame while it handles the
    send, finds the end in the database. That end must follow `message.created` (the page
    ignores an end of a reply it does not follow yet), and bring the text the socket never
    forwarded, so that what the page assembles is the saved answer."""
    import time

    from chatsite import consumers, services

    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "max_output_tokens": 8}}
    monkeypatch.setattr(consumers, "QUIET_CHECK_S", 0.1)
    reply_send = services.reply_send

    def slow_reply_send(**kwargs):  # a broker slow to acknowledge
        reply_send(**kwargs)
        time.sleep(1.5)  # the tiny model writes its 8 tokens meanwhile

    monkeypatch.setattr(services, "reply_send", slow_reply_send)
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Count to a hundred"})
    assert created["type"] == "message.created"
    frames = await until_end(communicator)
    done = frames[-1]
    assert done["type"] == "done" and done["message"] == created["message"]["id"] and done["finish_reason"] == "length"
    assert "".join(frame["text"] for frame in frames if frame["type"] == "token") == done["content"]
    assert done["content"] == (await Message.objects.aget(id=created["message"]["id"])).content
    assert await communicator.receive_nothing(timeout=1)  # the worker's own end, late, is not forwarded again
    await communicator.disconnect()


async def test_a_page_that_missed_frames_of_a_reply_that_ended_is_sent_the_text_from_where_it_says(make_user):
    """The page's `watch` offset, not what this socket sent, says where its text stops."""
    from channels.layers import get_channel_layer

    from chatsite.publisher import generation_group

    user = await sync_to_async(make_user)()
    conversation, _, reply = await database_sync_to_async(conversation_with_reply)(
        user, reply_text="", status=Message.Status.STREAMING)
    communicator = await open_socket(user)
    watch = {"type": "watch", "conversation": conversation.id, "message": reply.id, "offset": 0}
    await communicator.send_json_to(watch)
    await asyncio.sleep(0.3)  # following it
    await get_channel_layer().group_send(generation_group(reply.id), {
        "type": "gen.token", "message": reply.id, "text": "Hello", "index": 0, "offset": 0})
    assert (await receive(communicator))["text"] == "Hello"  # sent, and (say) lost on the way to the page
    await Message.objects.filter(id=reply.id).aupdate(status=Message.Status.DONE, content="Hello world")
    await communicator.send_json_to(watch)  # the page still has nothing
    frames = await until_end(communicator)
    assert [(frame["type"], frame.get("offset"), frame.get("text")) for frame in frames] == [
        ("token", 0, "Hello world"), ("done", None, None)]
    await communicator.disconnect()


async def test_closing_the_socket_does_not_stop_the_reply(make_user, slow_engine):
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Tell me a story"})
    assert (await receive(communicator))["type"] == "token"
    await communicator.disconnect()
    for _ in range(300):
        reply = await Message.objects.aget(id=created["message"]["id"])
        if not reply.in_progress:
            break
        await asyncio.sleep(0.1)
    assert reply.status == "done" and reply.finish_reason == "length" and reply.completion_tokens == 512


async def test_a_message_past_the_quota_gets_rate_limited_and_saves_nothing(make_user, settings):
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "messages_per_window": 2}}
    communicator = await open_socket(await sync_to_async(make_user)())
    first = await send(communicator, {"type": "send", "conversation": None, "content": "One"})
    assert first["quota"]["plan"] == "free"
    assert (first["quota"]["limit"], first["quota"]["remaining"]) == (2, 1) and first["quota"]["resets_at"]
    await until_end(communicator)
    second = await send(communicator, {"type": "send", "conversation": first["conversation"]["id"], "content": "Two"})
    assert second["quota"]["remaining"] == 0
    await until_end(communicator)
    saved = await Message.objects.acount()
    refused = await send(communicator, {"type": "send", "conversation": first["conversation"]["id"], "content": "Three"})
    assert refused["type"] == "error" and refused["code"] == "rate_limited"
    assert "2 messages in the last 3 hours" in refused["error"]
    assert 0 < refused["retry_after"] <= 3 * 3600 and refused["quota"]["remaining"] == 0
    assert await Message.objects.acount() == saved
    await communicator.disconnect()


async def test_a_frame_over_the_limit_is_answered_and_the_socket_closed_with_4009(make_user):
    communicator = await open_socket(await sync_to_async(make_user)())
    await communicator.send_to(text_data='{"type": "send", "content": "' + "x" * (256 * 1024) + '"}')
    frame = await receive(communicator)
    assert frame["code"] == "too_large" and "256 KiB" in frame["error"]
    assert (await communicator.receive_output(timeout=TIMEOUT))["code"] == 4009
    assert await Message.objects.acount() == 0


async def test_a_send_that_cannot_be_queued_is_withdrawn_and_nothing_is_charged(make_user, monkeypatch):
    from billing.models import QuotaUse
    from chatsite import services

    def broker_down(*, reply):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(services, "reply_send", broker_down)
    user = await database_sync_to_async(make_user)()
    conversation, _, _ = await database_sync_to_async(conversation_with_reply)(user)
    communicator = await open_socket(user)
    for target in (None, conversation.id):
        frame = await send(communicator, {"type": "send", "conversation": target, "content": "Hello?"})
        assert frame["code"] == "unavailable" and "nothing was sent or charged" in frame["error"]
    assert await Message.objects.acount() == 2  # the conversation's own two
    assert await Conversation.objects.acount() == 1
    assert (await Conversation.objects.aget(id=conversation.id)).current_id == conversation.current_id
    assert await QuotaUse.objects.acount() == 0
    await communicator.disconnect()
