"""The distributed mode end to end: PostgreSQL, a Redis broker, channels_redis, a separate
`celery worker` process generating, and daphne serving the socket."""
import asyncio
import concurrent.futures
import json
import re
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.e2e.servers import (
    BIN,
    WORKER_READY,
    Daphne,
    Launcher,
    Process,
    celery_worker,
    chat,
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

REDIS_DB_URL = "redis://127.0.0.1:6379/9"  # a database of its own, emptied before and after
WORKER_POOL_SIZE = 2
METRICS_TOKEN = "distributed-metrics-token"


@pytest.fixture(scope="module")
def database_url():
    with fresh_database("chatsite_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def redis_url():
    require_service("127.0.0.1", 6379, "Redis")
    client = redis.Redis.from_url(REDIS_DB_URL)
    client.flushdb()
    yield REDIS_DB_URL
    client.flushdb()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory, tiny_model_dir, database_url, redis_url):
    log_dir = tmp_path_factory.mktemp("distributed")
    env = server_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_SECRET_KEY="distributed-test-" + uuid.uuid4().hex,
        CHATSITE_DATA_DIR=str(log_dir),
        CHAT_MODEL=tiny_model_dir,
        CHAT_DTYPE="fp32",
        METRICS_TOKEN=METRICS_TOKEN,
        # Web and worker processes add up what they count in one folder (prometheus_client).
        PROMETHEUS_MULTIPROC_DIR=str(log_dir / "metrics"),
    )
    (log_dir / "metrics").mkdir()
    manage(env, "migrate", "--noinput")
    # Fewer pooled connections than task threads (4): a reply must not keep one while it streams.
    worker = celery_worker({**env, "DATABASE_POOL_SIZE": str(WORKER_POOL_SIZE)}, log_dir, wait=False)
    server = Daphne(env, log_dir)
    worker.wait_for_log(WORKER_READY)
    yield server, worker, database_url
    stop_together(server, worker)


def message_row(database_url, message_id):
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT status, content, completion_tokens FROM chatsite_message WHERE id = %s", [message_id]
        ).fetchone()


def test_a_reply_is_generated_by_the_worker_process_and_streamed_through_redis(distributed):
    server, worker, database_url = distributed
    cookie = sign_up(server.url, "distributed-user").cookie
    frames = chat(server.url, cookie, "Hello over Redis")
    created, tokens, done = frames[0], frames[1:-1], frames[-1]
    assert tokens and done["type"] == "done" and done["status"] == "done"
    answer = "".join(frame["text"] for frame in tokens)
    status, content, completion_tokens = message_row(database_url, created["message"]["id"])
    assert (status, content) == ("done", answer)
    assert completion_tokens == done["usage"]["completion_tokens"] > 0
    assert "generate_reply[" in worker.log()  # the separate worker ran it
    assert "embedded Celery worker" not in server.log()


def test_the_web_process_reports_the_workers_counts_and_engine(distributed):
    """Counted by the worker process, scraped from the web one; the worker's engine gauges
    come through Redis."""
    server, _, _ = distributed
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    idle = re.compile(r'chatsite_requests_running\{worker="[^"]+"\} 0')
    deadline = time.monotonic() + 30  # the worker reports every 5 s; a title may still be generating
    while True:
        text = httpx.get(server.url + "/metrics", headers=headers, timeout=10).text
        if idle.search(text) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert idle.search(text)
    done = re.search(r'chatsite_requests_total\{plan="free",source="chat",status="done"\} (\S+)', text)
    assert done and float(done.group(1)) >= 1


def test_health_reports_the_database_the_broker_and_the_worker(distributed):
    server, _, _ = distributed
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
        assert response.status == 200
        body = json.load(response)
    assert body == {"status": "ok", "database": "ok", "broker": "ok", "workers": 1}


def test_stop_reaches_the_worker_process(distributed):
    server, _, database_url = distributed
    cookie = sign_up(server.url, "distributed-stopper").cookie
    frames = chat(server.url, cookie, "Tell me a long story", stop_after_first_token=True)
    done = frames[-1]
    assert done["type"] == "done" and done["status"] == "stopped"
    status, content, completion_tokens = message_row(database_url, frames[0]["message"]["id"])
    assert status == "stopped" and content == done["content"]
    assert 0 < completion_tokens < 512  # the Free plan would have allowed 512


def test_a_burst_of_api_calls_all_complete_within_the_connection_pools(distributed):
    """Two bursts of 36 API calls at once (6 users): every one answers, and PostgreSQL sees at
    most the two processes' pools (DATABASE_POOL_SIZE: 20 for daphne, 2 for the worker here)
    plus a few. With a persistent connection per thread instead, each burst's threads left
    theirs open: 100 and more."""
    server, _, database_url = distributed
    keys = [create_api_key(sign_up(server.url, f"burst-{n}")) for n in range(6)]
    name = database_url.rsplit("/", 1)[1]
    seen, stop = [0], threading.Event()

    def watch():
        with psycopg.connect(database_url, autocommit=True) as connection:
            while not stop.is_set():
                count = connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]).fetchone()[0]
                seen[0] = max(seen[0], count)
                time.sleep(0.05)

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            model = (await client.get("/v1/models", headers={"Authorization": f"Bearer {keys[0]}"})).json()["data"][0]["id"]
            async def call(key, n):
                body = {"model": model, "messages": [{"role": "user", "content": f"burst {n}"}], "max_tokens": 8}
                response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                return response.status_code, response.json()
            first = await asyncio.gather(*(call(keys[n % 3], n) for n in range(36)))
            return first + await asyncio.gather(*(call(keys[3 + n % 3], n) for n in range(36)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # A thread of its own: the test process may already run an event loop (Playwright).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            results = pool.submit(asyncio.run, burst()).result()
    finally:
        stop.set()
        watcher.join()
    assert [status for status, _ in results] == [200] * 72
    assert all(body["choices"][0]["message"]["content"] for _, body in results)
    assert seen[0] <= 20 + WORKER_POOL_SIZE + 5


def test_replies_beyond_the_worker_connection_pool_are_generated_together(distributed):
    """The worker has 4 task threads and 2 pooled connections. Each reply hands its connection
    back while it streams, so all 4 are in the batch at the same time: every reply's first
    token comes before any reply's last. (When a reply kept its connection, replies 3 and 4
    waited for 1 and 2 to finish: a worker served at most DATABASE_POOL_SIZE replies at once.)"""
    server, _, database_url = distributed
    key = create_api_key(sign_up(server.url, "pooled"))

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
            body = {"model": model, "messages": [{"role": "user", "content": "count"}], "max_tokens": 500, "ignore_eos": True}
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(4)))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        responses = pool.submit(asyncio.run, together()).result()
    assert [response.status_code for response in responses] == [200] * 4
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT extract(epoch FROM created_at) + ttft_s, extract(epoch FROM created_at) + ttft_s + decode_s,"
            " completion_tokens FROM chatsite_message WHERE role = 'assistant' ORDER BY id DESC LIMIT 4"
        ).fetchall()
    assert [tokens for _, _, tokens in rows] == [500] * 4
    first_tokens, last_tokens = [float(row[0]) for row in rows], [float(row[1]) for row in rows]
    assert max(first_tokens) < min(last_tokens)


def own_env(tmp_path, tiny_model_dir, database_url, redis_url, **settings) -> dict[str, str]:
    """Settings for processes of a test's own, on an emptied Redis database, migrated."""
    require_service("127.0.0.1", 6379, "Redis")
    redis.Redis.from_url(redis_url).flushdb()
    env = server_env(
        DATABASE_URL=database_url, REDIS_URL=redis_url, DJANGO_SECRET_KEY="own-" + uuid.uuid4().hex,
        CHATSITE_DATA_DIR=str(tmp_path), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32", **settings,
    )
    manage(env, "migrate", "--noinput")
    return env


@pytest.fixture
def takeover(tmp_path, tiny_model_dir):
    """A daphne and a worker of their own on Redis database 12 and a database of their own (the
    module's worker, alive on the shared one, would sweep the lapsed leases and take the replies
    over itself), with short leases, for killing. The engine runs one reply at a time, so a kill
    at the first token finds three not begun (four at once could all finish before that token
    had crossed daphne to the client)."""
    redis_url = "redis://127.0.0.1:6379/12"
    with fresh_database("chatsite_takeover") as database_url:
        env = own_env(tmp_path, tiny_model_dir, database_url, redis_url,
                      CHAT_LEASE_S="6", CHAT_LEASE_SWEEP_S="1", CHAT_QUEUE_LEASE_S="6", FREE_MAX_OUTPUT_TOKENS="960",
                      CHAT_MAX_RUNNING="1")
        processes = {"first": celery_worker(env, tmp_path, name="first", wait=False), "web": Daphne(env, tmp_path)}
        processes["first"].wait_for_log(WORKER_READY)
        yield env, processes, database_url
        stop_together(*processes.values())
    redis.Redis.from_url(redis_url).flushdb()


def test_replies_of_a_killed_worker_are_taken_over_and_finished(takeover, tmp_path):
    env, processes, database_url = takeover
    server = processes["web"]
    key = create_api_key(sign_up(server.url, "takeover"))
    first_token = threading.Event()

    async def streams():
        async with httpx.AsyncClient(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]

            async def one(n):
                body = {"model": model, "messages": [{"role": "user", "content": f"story {n}"}],
                        "max_tokens": 900, "ignore_eos": True, "stream": True}
                events = []
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            events.append(json.loads(line[6:]))
                            if any(c["delta"].get("content") for c in events[-1].get("choices", [])):
                                first_token.set()
                return events
            return await asyncio.gather(*(one(n) for n in range(4)))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(asyncio.run, streams())
        assert first_token.wait(60) and not running.done()
        processes["first"].popen.kill()  # SIGKILL: no shutdown, no ack, leases left to lapse
        processes["first"].popen.wait()
        killed_at = time.monotonic()
        with psycopg.connect(database_url) as connection:
            statuses = [row[0] for row in connection.execute(
                "SELECT m.status FROM chatsite_message m JOIN chatsite_conversation c ON m.conversation_id = c.id"
                " WHERE c.title LIKE 'story %%' AND m.role = 'assistant'"
            ).fetchall()]
        assert any(status != "done" for status in statuses), f"nothing left to take over at the kill: {statuses}"
        processes["second"] = celery_worker(env, tmp_path, name="second")
        results = running.result(timeout=120)
    assert time.monotonic() - killed_at < 60
    for events in results:
        finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
        assert finishes == ["length"], events[-3:]
        assert not [e for e in events if "error" in e]
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT m.status, m.attempts, length(m.content) FROM chatsite_message m JOIN chatsite_conversation c"
            " ON m.conversation_id = c.id WHERE c.title LIKE 'story %%' AND m.role = 'assistant'"
        ).fetchall()
    assert len(rows) == 4 and all(status == "done" and length > 0 for status, _, length in rows)
    with psycopg.connect(database_url) as connection:
        saved = sorted(row[0] for row in connection.execute(
            "SELECT m.content FROM chatsite_message m JOIN chatsite_conversation c ON m.conversation_id = c.id"
            " WHERE c.title LIKE 'story %%' AND m.role = 'assistant'"
        ).fetchall())
    received = sorted("".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", [])) for events in results)
    assert received == saved  # greedy: what was repeated after the takeover was trimmed, nothing doubled
    assert max(attempts for _, attempts, _ in rows) >= 2  # taken over from the killed worker
    logs = {name: processes[name].log()[-3000:] for name in ("first", "second")}
    assert "generate_reply[" in logs["second"], logs


def test_two_worker_processes_share_one_engine_server(tmp_path, tiny_model_dir, database_url):
    """One engine per GPU: `manage.py engine_server` loads the model, and two `celery worker`
    processes with CHAT_ENGINE_ADDRESS feed it instead of loading their own."""
    redis_url = "redis://127.0.0.1:6379/13"
    env = own_env(tmp_path, tiny_model_dir, database_url, redis_url,
                  CHAT_ENGINE_ADDRESS=str(tmp_path / "engine.sock"), CHAT_MODEL_TITLES="0")
    processes = {"engine": Process("engine", [str(BIN / "python"), "manage.py", "engine_server"], env, tmp_path)}
    try:
        processes["first"] = celery_worker(env, tmp_path, name="first", wait=False)
        processes["second"] = celery_worker(env, tmp_path, name="second", wait=False)
        processes["web"] = server = Daphne(env, tmp_path)
        processes["engine"].wait_for_log("worker 2 connected")
        key = create_api_key(sign_up(server.url, "shared-engine"))

        async def calls():
            async with httpx.AsyncClient(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
                model = (await client.get("/v1/models")).json()["data"][0]["id"]
                bodies = [{"model": model, "messages": [{"role": "user", "content": f"story {n}"}],
                           "max_tokens": 200, "ignore_eos": True} for n in range(8)]
                return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for body in bodies))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own, whatever runs on this thread
            answers = [response.json() for response in pool.submit(asyncio.run, calls()).result(timeout=180)]
        assert all(answer["choices"][0]["finish_reason"] == "length" and answer["choices"][0]["message"]["content"]
                   for answer in answers), answers
        # Four task threads each: eight calls at once keep both workers busy.
        assert "generate_reply[" in processes["first"].log() and "generate_reply[" in processes["second"].log()
        processes["first"].stop()
        processes["engine"].wait_for_log("worker [12] left")
        assert processes["engine"].popen.poll() is None
    finally:
        engine = processes.pop("engine")
        stop_together(*processes.values())  # the workers before their engine, which they would wait for
        engine.stop()
        redis.Redis.from_url(redis_url).flushdb()


def get_from_whoever_answers(url: str) -> httpx.Response:
    """A GET on new connections until one lands on a process that answers: each web process
    has its own socket on the port, and the kernel picks one by the connection's address."""
    for _ in range(30):
        try:
            return httpx.get(url, timeout=2, headers={"Connection": "close"})
        except httpx.TimeoutException:
            continue
    raise AssertionError(f"no answer from {url}")


def test_several_web_processes_serve_one_port_and_stop_together(tmp_path, tiny_model_dir, database_url):
    """`python -m chatsite.serve` with CHAT_WEB_PROCESSES=2: two Daphne processes on one port,
    each able to serve alone; one that dies takes the others down with it (and
    the launcher exits non-zero, for its supervisor to restart the whole)."""
    import os
    import signal

    env = own_env(tmp_path, tiny_model_dir, database_url, "redis://127.0.0.1:6379/14")
    launcher = Launcher(env, tmp_path)
    try:
        children = launcher.web
        assert not launcher.engine  # distributed: the workers hold the engines
        for paused in children:
            os.kill(paused, signal.SIGSTOP)  # only the other one answers now
            try:
                response = get_from_whoever_answers(f"{launcher.url}/accounts/login/")
                assert response.status_code == 200 and "csrfmiddlewaretoken" in response.text
            finally:
                os.kill(paused, signal.SIGCONT)
        os.kill(children[0], signal.SIGKILL)
        assert launcher.popen.wait(60) != 0
        assert not Path(f"/proc/{children[1]}").exists()  # stopped and reaped by the launcher
    finally:
        launcher.stop()
        redis.Redis.from_url("redis://127.0.0.1:6379/14").flushdb()


def test_an_idle_socket_stays_open_and_then_chats(distributed):
    """redis-py's read timeout used to equal channels_redis's 5 s blocking wait: every idle
    socket was dropped after 5 s. Twelve seconds idle is more than two such waits."""
    import websockets

    server, _, _ = distributed
    cookie = sign_up(server.url, "idle-user").cookie

    async def idle_then_chat():
        async with websockets.connect(
            server.url.replace("http://", "ws://") + "/ws/chat/", additional_headers={"Cookie": cookie, "Origin": server.url}
        ) as socket_:
            await asyncio.sleep(12)
            await socket_.send(json.dumps({"type": "send", "conversation": None, "content": "still here"}))
            frames = [await receive_frame(socket_, 30)]
            while frames[-1]["type"] not in ("done", "error"):
                frames.append(await receive_frame(socket_, 30))
            return frames

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        frames = pool.submit(asyncio.run, idle_then_chat()).result()
    assert frames[0]["type"] == "message.created" and frames[-1]["type"] == "done"
    assert "Timeout reading" not in server.log()
