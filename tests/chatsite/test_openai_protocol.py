import json

import pytest

from chatsite.openai_protocol import ApiError, parse_chat_completion


def parse(max_choices=1, **body):
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_chat_completion(
        json.dumps(body).encode(), model_name="m", max_input_chars=100, max_output_tokens=512, max_choices=max_choices,
        max_messages=64, max_total_chars=4000,
    )


def test_a_plain_request_keeps_only_what_the_client_set():
    request = parse()
    assert request.messages == [{"role": "user", "content": "hi"}]
    assert (request.stream, request.n, request.sampling) == (False, 1, {})


def test_sampling_fields_map_onto_the_engine_names():
    request = parse(
        max_tokens=20, temperature=0.5, top_p=0.9, top_k=-1, stop="END", seed=3,
        repetition_penalty=1.1, min_tokens=2, ignore_eos=True, stream=True, stream_options={"include_usage": True},
    )
    assert request.sampling == {
        "max_new_tokens": 20, "temperature": 0.5, "top_p": 0.9, "top_k": 0, "stop": ["END"], "seed": 3,
        "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": True,
    }
    assert request.stream and request.include_usage


def test_content_parts_and_the_developer_role_are_understood():
    request = parse(messages=[{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief"}]}])
    assert request.messages == [{"role": "system", "content": "Be brief"}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other"}, 404, "model"),
        ({"model": None}, 400, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages.[0].content"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, 400, "messages.[0].content"),
        ({"temperature": 3}, 400, None),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"top_p": 0}, 400, None),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 513}, 400, "max_tokens"),
        ({"n": 2}, 400, "n"),
        ({"best_of": 2}, 400, "best_of"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stream": "yes"}, 400, "stream"),
        ({"tools": [{"type": "function"}]}, 400, "tools"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, 400, "messages.[0]"),
        ({"messages": [{"role": "user", "content": "nul \x00 byte"}]}, 400, "messages.[0].content"),
        ({"messages": [{"role": "user", "content": "lone \ud800 surrogate"}]}, 400, "messages.[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}] * 65}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 100}] * 41}, 400, "messages"),  # 4,100 characters
        ({"seed": 2**64}, 400, None),
        ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": ""}]}, 400, "messages"),
        ({"repetition_penalty": 1e-300}, 400, None),
    ],
)
def test_bad_requests_are_refused_in_openais_error_shape(body, status, param):
    with pytest.raises(ApiError) as caught:
        parse(**body)
    error = caught.value
    assert error.status == status and error.param == param
    assert error.body()["error"]["message"] and error.body()["error"]["type"]


def test_a_plan_with_more_choices_allows_n_and_best_of():
    request = parse(max_choices=4, n=2, best_of=3)
    assert request.n == 2 and request.sampling["best_of"] == 3


def test_a_body_that_is_not_json_is_refused():
    with pytest.raises(ApiError, match="parse the JSON"):
        parse_chat_completion(b"{", model_name="m", max_input_chars=1, max_output_tokens=1, max_choices=1)


@pytest.mark.parametrize("depth", [40, 1_000, 100_000])
def test_a_body_nested_too_deep_is_refused_without_recursing(depth):
    body = b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ApiError, match="deeper than 32") as caught:
        parse_chat_completion(body, model_name="m", max_input_chars=1, max_output_tokens=1, max_choices=1)
    assert caught.value.status == 400


def test_brackets_inside_strings_do_not_count_as_nesting():
    request = parse(messages=[{"role": "user", "content": "[" * 50 + "{" * 50}], )
    assert request.messages[0]["content"].startswith("[[[")
