"""The distributed mode through a Redis outage: Redis is reached through a forwarder the test
cuts and restores (the shared Redis server itself is never touched)."""
import asyncio
import concurrent.futures
import json
import time
import uuid

import httpx
import psycopg
import pytest
import redis
import websockets

from tests.e2e.forwarder import Forwarder
from tests.e2e.servers import (
    WORKER_READY,
    Daphne,
    celery_worker,
    create_api_key,
    manage,
    receive_frame,
    require_service,
    server_env,
    sign_up,
    stop_together,
)
from tests.postgres import fresh_database

pytestmark = pytest.mark.distributed

REDIS_DATABASE = 13


@pytest.fixture(scope="module")
def outage(tmp_path_factory, tiny_model_dir):
    require_service("127.0.0.1", 6379, "Redis")
    redis.Redis(db=REDIS_DATABASE).flushdb()
    forwarder = Forwarder(6379)
    log_dir = tmp_path_factory.mktemp("outage")
    with fresh_database("chatsite_outage") as database_url:
        env = server_env(
            DATABASE_URL=database_url, REDIS_URL=forwarder.url(REDIS_DATABASE),
            DJANGO_SECRET_KEY="outage-" + uuid.uuid4().hex, CHATSITE_DATA_DIR=str(log_dir),
            CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32", FREE_MAX_OUTPUT_TOKENS="960",
            # A task popped by the worker as its connection broke is lost in transit (Redis's
            # BRPOP is at most once); its reply is queued again after the queue lease.
            CHAT_QUEUE_LEASE_S="5", CHAT_LEASE_SWEEP_S="1",
        )
        manage(env, "migrate", "--noinput")
        worker = celery_worker(env, log_dir, wait=False)
        server = Daphne(env, log_dir)
        worker.wait_for_log(WORKER_READY)
        session = sign_up(server.url, "outage-user")
        yield server, worker, forwarder, database_url, session.cookie, create_api_key(session)
        forwarder.restore()
        stop_together(server, worker)
        forwarder.close()
    redis.Redis(db=REDIS_DATABASE).flushdb()


def counts(database_url):
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT (SELECT count(*) FROM chatsite_message), (SELECT count(*) FROM billing_quotause)"
        ).fetchone()


def api_replies(database_url):
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT count(*) FROM chatsite_message m JOIN chatsite_conversation c ON m.conversation_id = c.id"
            " WHERE c.source = 'api' AND m.role = 'assistant'"
        ).fetchone()[0]


def in_a_thread(coroutine):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def socket_chat(base_url, cookie, content, *, during=None):
    """Send one message; return the frames up to the end. `during` is awaited once the reply
    has started, while the socket stays open."""
    async with websockets.connect(
        base_url.replace("http://", "ws://") + "/ws/chat/", additional_headers={"Cookie": cookie, "Origin": base_url}
    ) as socket_:
        await socket_.send(json.dumps({"type": "send", "conversation": None, "content": content}))
        frames = [await receive_frame(socket_, 60)]
        if frames[0]["type"] == "error":
            return frames
        if during is not None:
            await during()
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(await receive_frame(socket_, 60))
        return frames


def test_with_redis_down_a_send_and_a_call_are_refused_as_unavailable_and_nothing_is_charged(outage):
    server, _, forwarder, database_url, cookie, key = outage
    headers = {"Authorization": f"Bearer {key}"}
    model = httpx.get(server.url + "/v1/models", headers=headers).json()["data"][0]["id"]
    before = counts(database_url)
    forwarder.cut()
    try:
        response = httpx.post(
            server.url + "/v1/chat/completions", timeout=60, headers=headers,
            json={"model": model, "messages": [{"role": "user", "content": "anyone?"}]},
        )
        frames = in_a_thread(socket_chat(server.url, cookie, "anyone there?"))
    finally:
        forwarder.restore()
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "service_unavailable" and response.headers["retry-after"]
    assert [frame["code"] for frame in frames] == ["unavailable"]
    assert counts(database_url) == before  # no message saved, no quota used
    frames = in_a_thread(socket_chat(server.url, cookie, "and now?"))
    assert frames[-1]["type"] == "done"


def test_a_redis_outage_while_replies_stream_loses_no_reply_and_kills_no_process(outage):
    server, worker, forwarder, database_url, cookie, key = outage

    async def calls():
        async with httpx.AsyncClient(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
            body = {"model": model, "messages": [{"role": "user", "content": "a long one"}], "max_tokens": 900,
                    "ignore_eos": True}

            async def outage_of_three_seconds():
                # Once the three calls are queued: a call made during the outage is refused (the other test).
                while await asyncio.to_thread(api_replies, database_url) < 3:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
                forwarder.cut()
                await asyncio.sleep(3)
                forwarder.restore()

            chat = asyncio.ensure_future(socket_chat(server.url, cookie, "talk through it", during=outage_of_three_seconds))
            api = [asyncio.ensure_future(client.post("/v1/chat/completions", json=body)) for _ in range(3)]
            return await chat, await asyncio.gather(*api)

    started = time.monotonic()
    frames, responses = in_a_thread(calls())
    assert time.monotonic() - started < 90
    assert frames[-1]["type"] == "done" and frames[-1]["content"]
    assert [response.status_code for response in responses] == [200] * 3
    assert all(response.json()["choices"][0]["message"]["content"] for response in responses)
    assert worker.popen.poll() is None and server.popen.poll() is None
    assert "Unrecoverable error" not in worker.log()
    with psycopg.connect(database_url) as connection:
        statuses = {row[0] for row in connection.execute("SELECT status FROM chatsite_message WHERE role = 'assistant'")}
    assert statuses == {"done"}
    assert in_a_thread(socket_chat(server.url, cookie, "still there?"))[-1]["type"] == "done"
