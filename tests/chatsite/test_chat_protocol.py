"""The socket's frames beyond send and stop: resuming a reply, other tabs, regenerate, edit,
continue — against the real ASGI app with the embedded worker and the tiny model."""
import asyncio

import pytest
from asgiref.sync import sync_to_async

from chatsite.models import Conversation, Message
from tests.chatsite.test_consumer import open_socket, receive, send, until_end

pytestmark = pytest.mark.django_db(transaction=True)


async def tokens_until(communicator, count):
    """The first `count` token frames."""
    frames = []
    while len(frames) < count:
        frame = await receive(communicator)
        assert frame["type"] == "token", frame
        frames.append(frame)
    return frames


def assemble(text, frames):
    """What a page does with token frames: skip what it has, by their offsets."""
    for frame in frames:
        if frame["type"] != "token":
            continue
        assert frame["offset"] <= len(text), "a gap"
        text += frame["text"][len(text) - frame["offset"]:]
    return text


async def test_a_reply_resumes_on_a_new_socket_from_the_offset_the_page_has(make_user, slow_engine):
    user = await sync_to_async(make_user)()
    first = await open_socket(user)
    created = await send(first, {"type": "send", "conversation": None, "content": "Tell me a story"})
    text = assemble("", await tokens_until(first, 5))
    await first.disconnect()  # a reload, or a dropped connection: the reply goes on
    await asyncio.sleep(0.3)
    second = await open_socket(user)
    await second.send_json_to({"type": "watch", "conversation": created["conversation"]["id"],
                               "message": created["message"]["id"], "offset": len(text)})
    frames = await until_end(second)
    assert frames[-1]["type"] == "done" and frames[-1]["status"] == "done"
    assert frames[0]["offset"] == len(text)  # the catch-up starts where the page stopped
    assert assemble(text, frames) == frames[-1]["content"] == (await Message.objects.aget(id=created["message"]["id"])).content
    await second.disconnect()


@pytest.mark.parametrize(("saved", "caught_up"), [
    ("Hello", "Hello"),  # the saved text stops short of the pieces: it alone
    ("Hello, world", "Hello, world again and again"),  # it reaches them: carried on by them
])
async def test_a_process_that_missed_a_replys_start_catches_a_page_up_with_a_true_beginning(make_user, saved, caught_up):
    from chatsite import live
    from tests.chatsite.factories import conversation_with_reply

    user = await sync_to_async(make_user)()
    conversation, _, reply = await sync_to_async(conversation_with_reply)(
        user, reply_text=saved, status=Message.Status.STREAMING)
    # What a web process that began listening after the reply's first frames holds: the
    # pieces from offset 12 on, with no reset and no start (chatsite/peers.py).
    live.live_apply([(f"gen.{reply.id}", {"type": "gen.token", "offset": 12, "text": " again and again"})])
    try:
        page = await open_socket(user)
        await page.send_json_to({"type": "watch", "conversation": conversation.id, "message": reply.id, "offset": 0})
        catch_up = await receive(page)
        assert catch_up["type"] == "token" and catch_up["offset"] == 0 and catch_up["text"] == caught_up
        await page.disconnect()
    finally:
        live.live_clear(reply.id)


async def test_watching_a_finished_reply_sends_its_end_at_once(make_user):
    user = await sync_to_async(make_user)()
    communicator = await open_socket(user)
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Hi"})
    done = (await until_end(communicator))[-1]
    await communicator.send_json_to({"type": "watch", "conversation": created["conversation"]["id"],
                                     "message": created["message"]["id"], "offset": 3})
    rest = await receive(communicator)
    assert rest["type"] == "token" and rest["offset"] == 3 and rest["text"] == done["content"][3:]
    again = await receive(communicator)
    assert again["type"] == "done" and again["content"] == done["content"]
    await communicator.disconnect()


async def test_a_second_tab_on_the_conversation_sees_the_new_message_and_its_stream(make_user):
    user = await sync_to_async(make_user)()
    tab_a, tab_b = await open_socket(user), await open_socket(user)
    created = await send(tab_a, {"type": "send", "conversation": None, "content": "First"})
    await until_end(tab_a)
    await tab_b.send_json_to({"type": "watch", "conversation": created["conversation"]["id"]})
    await asyncio.sleep(0.2)
    second = await send(tab_a, {"type": "send", "conversation": created["conversation"]["id"], "content": "Second"})
    seen = await receive(tab_b)
    assert seen["type"] == "message.created" and seen["message"]["id"] == second["message"]["id"]
    assert "quota" not in seen  # the sender's window is for the sender's tab
    frames_b, frames_a = await until_end(tab_b), await until_end(tab_a)
    assert assemble("", frames_b) == assemble("", frames_a) == frames_b[-1]["content"]
    for tab in (tab_a, tab_b):
        await tab.disconnect()


async def test_stop_from_another_tab_ends_the_reply_for_both(make_user, slow_engine):
    user = await sync_to_async(make_user)()
    tab_a, tab_b = await open_socket(user), await open_socket(user)
    created = await send(tab_a, {"type": "send", "conversation": None, "content": "Long"})
    await tokens_until(tab_a, 2)
    await tab_b.send_json_to({"type": "watch", "conversation": created["conversation"]["id"],
                              "message": created["message"]["id"], "offset": 0})
    await tab_b.send_json_to({"type": "stop", "message": created["message"]["id"]})
    for tab in (tab_a, tab_b):
        assert (await until_end(tab))[-1]["status"] == "stopped"
        await tab.disconnect()


async def test_regenerate_writes_a_sibling_answer_shown_from_then_on(make_user):
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Hello"})
    first = (await until_end(communicator))[-1]
    again = await send(communicator, {"type": "regenerate", "message": created["message"]["id"]})
    assert again["type"] == "message.created" and again["user_message"]["id"] == created["user_message"]["id"]
    assert again["message"]["parent"] == created["user_message"]["id"]
    answer = again["branch"][-1]
    assert answer["id"] == again["message"]["id"] and answer["siblings"] == [created["message"]["id"], answer["id"]]
    second = (await until_end(communicator))[-1]
    assert second["status"] == "done"
    original = await Message.objects.aget(id=created["message"]["id"])
    assert original.content == first["content"]  # kept as an alternative
    reply = await Message.objects.aget(id=again["message"]["id"])
    assert reply.prompt_tokens == original.prompt_tokens  # the model saw the same branch, not the old answer
    conversation = await Conversation.objects.aget(id=created["conversation"]["id"])
    assert conversation.current_id == reply.id
    await communicator.disconnect()


async def test_edit_resends_a_new_version_of_a_message_beside_the_old_one(make_user):
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Helo"})
    await until_end(communicator)
    edited = await send(communicator, {"type": "edit", "message": created["user_message"]["id"], "content": "Hello"})
    assert edited["user_message"]["content"] == "Hello"
    assert edited["user_message"]["parent"] is None and edited["message"]["parent"] == edited["user_message"]["id"]
    question = edited["branch"][0]
    assert question["siblings"] == [created["user_message"]["id"], edited["user_message"]["id"]]
    assert [m["id"] for m in edited["branch"]] == [edited["user_message"]["id"], edited["message"]["id"]]
    await until_end(communicator)
    await communicator.disconnect()


async def test_continue_extends_an_answer_cut_at_the_cap(make_user, settings):
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "max_output_tokens": 8}}
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Count to a hundred"})
    cut = (await until_end(communicator))[-1]
    assert cut["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 8
    more = await send(communicator, {"type": "continue", "message": created["message"]["id"]})
    assert more["type"] == "message.created" and more["message"]["id"] == created["message"]["id"]
    frames = await until_end(communicator)
    done = frames[-1]
    assert done["content"].startswith(cut["content"]) and len(done["content"]) > len(cut["content"])
    assert assemble(cut["content"], frames) == done["content"]
    reply = await Message.objects.aget(id=created["message"]["id"])
    assert reply.completion_tokens == 16 and reply.finish_reason == "length"  # another cap's worth
    refused = await send(communicator, {"type": "continue", "message": created["user_message"]["id"]})
    assert refused["code"] == "not_found"
    await communicator.disconnect()


async def test_a_continuation_stopped_before_a_worker_took_it_keeps_its_text(make_user, settings):
    from billing.plans import FREE, plan_get
    from chatsite import services

    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "max_output_tokens": 8}}
    user = await sync_to_async(make_user)()
    communicator = await open_socket(user)
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Count to a hundred"})
    cut = (await until_end(communicator))[-1]
    reply_id = created["message"]["id"]
    # Continued, and still in the queue (here: never sent to one) when the stop comes.
    await sync_to_async(services.reply_continue)(user=user, plan=plan_get(FREE), message_id=reply_id)
    await communicator.send_json_to({"type": "watch", "conversation": created["conversation"]["id"],
                                     "message": reply_id, "offset": len(cut["content"])})
    await communicator.send_json_to({"type": "stop", "message": reply_id})
    done = (await until_end(communicator))[-1]
    assert (done["type"], done["status"], done["content"]) == ("done", "stopped", cut["content"])
    reply = await Message.objects.aget(id=reply_id)
    assert (reply.status, reply.content, reply.completion_tokens) == ("stopped", cut["content"], 8)
    await communicator.disconnect()


async def test_only_an_answer_cut_at_its_length_can_be_continued(make_user, slow_engine):
    communicator = await open_socket(await sync_to_async(make_user)())
    created = await send(communicator, {"type": "send", "conversation": None, "content": "Hi"})
    await tokens_until(communicator, 1)
    await communicator.send_json_to({"type": "stop"})
    await until_end(communicator)
    refused = await send(communicator, {"type": "continue", "message": created["message"]["id"]})
    assert refused["code"] == "cannot_continue"
    await communicator.disconnect()
