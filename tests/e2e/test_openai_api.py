"""/v1/ with the official `openai` client against a running server (embedded mode, tiny model)."""
import concurrent.futures
import json
import sqlite3
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.e2e.servers import create_api_key, sign_up


@pytest.fixture(scope="module")
def account(embedded_server):
    session = sign_up(embedded_server.url, "api-user")
    return session, create_api_key(session)


@pytest.fixture(scope="module")
def client(embedded_server, account):
    return openai.OpenAI(base_url=embedded_server.url + "/v1", api_key=account[1], max_retries=0)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def rows(server, sql, *args):
    with sqlite3.connect(server.database) as connection:
        return connection.execute(sql, args).fetchall()


def ask(client, model, content="Hello", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kwargs)


def test_models_lists_the_served_model(client, model):
    assert [m.id for m in client.models.list().data] == [model]


def test_a_completion_answers_and_counts_its_tokens(client, model):
    response = ask(client, model, max_tokens=12)
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 12 and response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12
    assert response.id.startswith("chatcmpl-")


def test_streaming_sends_the_same_text_in_chunks(client, model):
    whole = ask(client, model, "Stream me", max_tokens=20).choices[0].message.content
    stream = ask(client, model, "Stream me", max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1 and "".join(texts) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 20


def test_the_same_seed_gives_the_same_text(client, model):
    first = ask(client, model, temperature=1.0, seed=11, max_tokens=16).choices[0].message.content
    again = ask(client, model, temperature=1.0, seed=11, max_tokens=16).choices[0].message.content
    other = ask(client, model, temperature=1.0, seed=12, max_tokens=16).choices[0].message.content
    assert first == again != other


def test_a_stop_string_ends_the_answer_before_it(client, model):
    full = ask(client, model, "Stop test", temperature=1.0, seed=4, max_tokens=30).choices[0].message.content
    stop = full[12:15]
    cut = ask(client, model, "Stop test", temperature=1.0, seed=4, max_tokens=30, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_wrong_key_gets_401(embedded_server):
    bad = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key="cs-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"


def test_no_key_gets_401_in_openais_error_shape(embedded_server):
    request = urllib.request.Request(embedded_server.url + "/v1/chat/completions", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == 401
    error = json.loads(caught.value.read())["error"]
    assert error["code"] == "invalid_api_key" and "API key" in error["message"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"temperature": 5}, openai.BadRequestError),
        ({"max_tokens": 100_000}, openai.BadRequestError),
        ({"n": 2}, openai.BadRequestError),  # the Free plan allows one choice
        ({"model": "gpt-4o"}, openai.NotFoundError),
        ({"seed": 18446744073709551616}, openai.BadRequestError),
        ({"extra_body": {"repetition_penalty": 1e-300}}, openai.BadRequestError),
        ({"messages": [{"role": "user", "content": "hi"}] * 2000}, openai.BadRequestError),
        ({"messages": [{"role": "user", "content": "z " * 1950}] * 4}, openai.BadRequestError),  # over 4,096 tokens
        ({"messages": [{"role": ["user"], "content": "hi"}]}, openai.BadRequestError),
    ],
)
def test_invalid_requests_are_refused_and_save_nothing(embedded_server, client, model, kwargs, error):
    before = rows(embedded_server, "SELECT count(*) FROM chatsite_message")[0][0]
    with pytest.raises(error) as caught:
        client.chat.completions.create(**{"model": model, "messages": [{"role": "user", "content": "hi"}], **kwargs})
    assert caught.value.body["message"]
    assert rows(embedded_server, "SELECT count(*) FROM chatsite_message")[0][0] == before


def test_parameters_that_once_broke_the_engine_leave_another_users_reply_whole(embedded_server, client, model):
    """temperature 1e-300 and a 64-bit seed used to fail every running reply of every user."""
    other = sign_up(embedded_server.url, "api-bystander")
    bystander = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key=create_api_key(other), max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(ask, bystander, model, "Tell me a long story", max_tokens=200,
                              extra_body={"ignore_eos": True})
        time.sleep(0.3)
        greedy = ask(client, model, "Hello", max_tokens=8, temperature=1e-300)
        with pytest.raises(openai.BadRequestError):
            ask(client, model, "Hello", max_tokens=8, seed=2**64)
        story = running.result(timeout=120)
    assert greedy.choices[0].message.content == ask(client, model, "Hello", max_tokens=8, temperature=0).choices[0].message.content
    assert story.choices[0].finish_reason == "length" and story.usage.completion_tokens == 200


def test_a_revoked_key_stops_working(embedded_server, account, model):
    session, _ = account
    key = create_api_key(session, "to revoke")
    client = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key=key, max_retries=0)
    assert client.models.list().data
    key_id = rows(embedded_server, "SELECT id FROM billing_apikey WHERE name = ?", "to revoke")[0][0]
    session.submit("/account/api-keys/", {}, action=f"/account/api-keys/{key_id}/revoke/")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_the_api_keeps_each_answer_as_a_message_but_off_the_chat_page(embedded_server, account, client, model):
    ask(client, model, "Remember this API question", max_tokens=5)
    saved = rows(
        embedded_server,
        "SELECT c.source, m.status, m.completion_tokens FROM chatsite_message m JOIN chatsite_conversation c "
        "ON m.conversation_id = c.id WHERE c.title = ? AND m.role = 'assistant'",
        "Remember this API question",
    )
    assert saved == [("api", "done", 5)]
    assert "Remember this API question" not in account[0].get("/chat/")


def test_responses_carry_the_rate_limit_headers_and_a_full_window_gets_429(embedded_server, model):
    session = sign_up(embedded_server.url, "api-quota")
    client = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key=create_api_key(session), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "count me"}], max_tokens=2
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "20"
    assert raw.headers["x-ratelimit-remaining-requests"] == "19"
    assert raw.headers["x-ratelimit-reset-requests"] in ("2h59m59s", "3h0m0s")
    # Fill the rest of the Free window as 19 more calls would.
    user_id = rows(embedded_server, "SELECT id FROM auth_user WHERE username = 'api-quota'")[0][0]
    with sqlite3.connect(embedded_server.database) as connection:
        connection.executemany("INSERT INTO billing_quotause (user_id, at) VALUES (?, datetime('now'))", [(user_id,)] * 19)
    before = rows(embedded_server, "SELECT count(*) FROM chatsite_message")[0][0]
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, model, "one too many", max_tokens=2)
    response = refused.value.response
    assert response.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert "20 messages in the last 3 hours" in refused.value.body["message"]
    assert 3 * 3600 - 60 <= int(response.headers["retry-after"]) <= 3 * 3600
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert rows(embedded_server, "SELECT count(*) FROM chatsite_message")[0][0] == before


@pytest.mark.real_model
def test_a_client_that_disconnects_mid_stream_stops_its_generation(real_model_server):
    """On the real model (about 25 tokens a second here), so the answer is surely unfinished
    when the client goes; the tiny model could finish 500 tokens before the server notices."""
    client = openai.OpenAI(
        base_url=real_model_server.url + "/v1",
        api_key=create_api_key(sign_up(real_model_server.url, "api-leaver")),
        max_retries=0,
        timeout=120,
    )
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Disconnect test"}],
        max_tokens=500, stream=True, extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    query = ("SELECT m.status, m.completion_tokens FROM chatsite_message m JOIN chatsite_conversation c "
             "ON m.conversation_id = c.id WHERE c.title = ? AND m.role = 'assistant'")
    for _ in range(100):
        status, tokens = rows(real_model_server, query, "Disconnect test")[0]
        if status not in ("pending", "streaming"):
            break
        time.sleep(0.1)
    assert status == "stopped" and tokens < 100
