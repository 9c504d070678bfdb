"""Property-based fuzzing of what clients send: socket frames and /v1/ bodies. Whatever comes in,
the answer is a frame or a 4xx in the protocol's shape, never an exception, and refused input
writes nothing. `make fuzz` sends many more against a live server (tests/fuzz.py)."""
import json

import pytest
from hypothesis import HealthCheck, given, settings

from chatsite.openai_protocol import ApiError, ChatCompletionRequest, parse_chat_completion
from chatsite.protocol import ProtocolError, SendFrame, StopFrame, parse_client_frame
from tests.hostile import api_bodies, socket_frames


@settings(max_examples=400, deadline=None)
@given(socket_frames())
def test_any_socket_frame_is_parsed_or_refused_with_a_code(text):
    try:
        frame = parse_client_frame(text, max_content_chars=4000)
    except ProtocolError as error:
        refusal = error
    else:
        refusal = None
        assert isinstance(frame, SendFrame | StopFrame)
        if isinstance(frame, SendFrame):
            frame.content.encode("utf-8")  # storable
    assert refusal is None or (refusal.code and refusal.message)


@settings(max_examples=400, deadline=None)
@given(api_bodies("m"))
def test_any_api_body_is_parsed_or_refused_in_openais_shape(body):
    try:
        request = parse_chat_completion(body, model_name="m", max_input_chars=4000, max_output_tokens=512, max_choices=1)
    except ApiError as error:
        refusal = error
    else:
        refusal = None
        assert isinstance(request, ChatCompletionRequest)
        for message in request.messages:
            assert "\x00" not in message["content"]
            message["content"].encode("utf-8")
    assert refusal is None or (400 <= refusal.status < 500 and refusal.body()["error"]["message"])


@pytest.mark.django_db(transaction=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=api_bodies("SmolLM2-135M-Instruct"))
def test_any_api_body_through_the_server_is_a_json_answer_and_refusals_write_nothing(api_client, body):
    from chatsite.models import Message

    before = Message.objects.count()
    response = api_client.post("/v1/chat/completions", body, content_type="application/json")
    assert response.status_code < 500
    if response.status_code != 200:
        assert json.loads(response.content)["error"]["message"]
        assert Message.objects.count() == before


@pytest.fixture
def api_client(client, make_user, settings):
    from billing.api_keys import api_key_create

    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "max_output_tokens": 4}}
    key = api_key_create(user=make_user(), name="fuzz")[1]
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client
