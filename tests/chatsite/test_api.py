"""The API's watcher: what the workers publish for a call's replies, in order, until a deadline."""
import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator

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


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_reply_whose_end_came_from_the_database_is_not_ended_again_by_its_late_frames(make_user, monkeypatch):
    from channels.db import database_sync_to_async

    from chatsite import api
    from chatsite.models import Message
    from tests.chatsite.factories import conversation_with_reply

    monkeypatch.setattr(api, "QUIET_CHECK_S", 0.1)
    user = await sync_to_async(make_user)()
    _, _, ended = await database_sync_to_async(conversation_with_reply)(user, reply_text="All of it")
    _, _, running = await database_sync_to_async(conversation_with_reply)(user, status=Message.Status.STREAMING)
    watcher = await _Watcher.start([ended.id, running.id])
    deadline = time.monotonic() + 5
    index, event = await watcher.next(deadline)  # both silent: the database says the first has ended
    assert (index, event["type"], event["content"]) == (0, "gen.done", "All of it")
    completion_tokens = watcher.usage()["completion_tokens"]
    layer = get_channel_layer()
    # The worker's own frames for it, late, then the other reply's first.
    await layer.group_send(generation_group(ended.id), {"type": "gen.token", "message": ended.id, "text": "it", "index": 1})
    await layer.group_send(generation_group(ended.id), {
        "type": "gen.done", "message": ended.id, "status": "done", "finish_reason": "stop", "content": "All of it",
        "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    await layer.group_send(generation_group(running.id), {"type": "gen.token", "message": running.id, "text": "Hi", "index": 0})
    assert await watcher.next(deadline) == (1, {"type": "gen.token", "message": running.id, "text": "Hi", "index": 0})
    assert watcher.unfinished == {running.id}
    assert watcher.usage()["completion_tokens"] == completion_tokens
    await watcher.close(user=None)


@pytest.fixture
def api_key(make_user):
    from billing.api_keys import api_key_create

    return api_key_create(user=make_user(), name="tests")[1]


def post_completion(api_key, **body):
    from django.test import AsyncClient

    payload = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hello"}], **body}
    return AsyncClient().post(
        "/v1/chat/completions", data=json.dumps(payload), content_type="application/json",
        headers={"Authorization": f"Bearer {api_key}"},
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_stream_whose_generation_fails_ends_with_an_error_event_not_a_normal_stop(api_key, sampling_fails_for_seed):
    response = await post_completion(api_key, stream=True, temperature=0.7, seed=sampling_fails_for_seed, max_tokens=20)
    assert response.status_code == 200
    events = [
        line[len(b"data: "):]
        for chunk in [piece async for piece in response.streaming_content]
        for line in chunk.splitlines()
        if line.startswith(b"data: ")
    ]
    bodies = [json.loads(event) for event in events if event != b"[DONE]"]
    assert bodies[-1]["error"]["type"] == "server_error"
    assert not [choice for body in bodies for choice in body.get("choices", []) if choice.get("finish_reason")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_call_whose_prompt_is_over_the_plans_tokens_is_refused_before_anything_is_saved(api_key):
    from chatsite.models import Message

    response = await post_completion(api_key, messages=[{"role": "user", "content": "z " * 1950}] * 4)
    assert response.status_code == 400
    error = json.loads(response.content)["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "4,096" in error["message"]
    assert not await Message.objects.acount()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/completions", b"{}", 404, "unknown_url"),
        ("/v1/chat/completions", b'{"model": "m", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
        ("/v1/chat/completions", b'{"model": "x", "messages": [' + b'{"role": "user", "content": "' + b"y" * 3_000_000 + b'"}]}', 413, "request_too_large"),
    ],
)
async def test_every_api_error_is_openais_json_never_a_html_page(api_key, path, body, status, code):
    from chatsite.asgi import application

    communicator = HttpCommunicator(
        application, "POST", path, body=body,
        headers=[(b"authorization", f"Bearer {api_key}".encode()), (b"content-type", b"application/json"),
                 (b"host", b"127.0.0.1")],
    )
    response = await communicator.get_response(timeout=30)
    assert response["status"] == status
    assert dict(response["headers"])[b"Content-Type"] == b"application/json"
    error = json.loads(response["body"])["error"]
    assert error["message"] and error["code"] == code


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_an_error_no_view_expected_is_a_json_500(api_key, monkeypatch):
    from chatsite import api
    from chatsite.asgi import application

    def broken(*_, **__):
        raise TypeError("a bug")

    monkeypatch.setattr(api, "plan_for_user", broken)
    communicator = HttpCommunicator(
        application, "POST", "/v1/chat/completions", body=b'{"model": "m", "messages": []}',
        headers=[(b"authorization", f"Bearer {api_key}".encode()), (b"host", b"127.0.0.1")],
    )
    response = await communicator.get_response(timeout=30)
    assert response["status"] == 500
    assert json.loads(response["body"])["error"]["type"] == "server_error"
    assert b"a bug" not in response["body"] and b"Traceback" not in response["body"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_calls_arriving_together_are_each_answered_or_refused_on_their_own(api_key, make_user, settings):
    from billing.api_keys import api_key_create
    from chatsite.models import Message

    other_key = (await sync_to_async(api_key_create)(user=await sync_to_async(make_user)(), name="other"))[1]
    responses = await asyncio.gather(
        post_completion(api_key, max_tokens=3, messages=[{"role": "user", "content": "First"}]),
        post_completion(api_key, max_tokens=3, temperature=9),  # out of range
        post_completion("cs-not-a-key", max_tokens=3),
        post_completion(other_key, max_tokens=3, messages=[{"role": "user", "content": "Second"}]),
        post_completion(api_key, max_tokens=3, n=2, messages=[{"role": "user", "content": "Third"}]),
    )
    assert [response.status_code for response in responses] == [200, 400, 401, 200, 400]  # Free: n is at most 1
    bodies = [json.loads(response.content) for response in responses]
    assert "temperature" in bodies[1]["error"]["message"].lower() and bodies[4]["error"]["param"] == "n"
    assert bodies[0]["id"] != bodies[3]["id"]
    assert all(body["choices"][0]["message"]["content"] for body in (bodies[0], bodies[3]))
    questions = [m.content async for m in Message.objects.filter(role="user").order_by("id")]
    assert sorted(questions) == ["First", "Second"]  # refused calls saved nothing
