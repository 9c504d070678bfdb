"""The embedded mode over two web processes (`python -m chatsite.serve`, CHAT_WEB_PROCESSES=2):
one engine server, two Daphne processes each with its own worker, SQLite and a file cache
shared. A reply asked for on one process is followed live from a socket the other holds."""
import asyncio
import concurrent.futures
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from chatsite.serve import PROBE_EVERY_S, answers_livez
from tests.e2e.servers import Launcher, create_api_key, manage, receive_frame, server_env, sign_up


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("web-processes")
    env = server_env(CHATSITE_DATA_DIR=str(folder), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32",
                     CHAT_WEB_PROCESSES="2", CHAT_MODEL_TITLES="0", FREE_MAX_OUTPUT_TOKENS="2000",
                     FREE_MESSAGES_PER_WINDOW="1000")
    manage(env, "migrate", "--noinput")
    launcher = Launcher(env, folder)
    assert len(launcher.engine) == 1
    launcher.engine_pid = launcher.engine[0]
    yield launcher.url, launcher.web, folder, launcher
    launcher.stop()


def reply_row(folder: Path, message_id: int) -> tuple[str, str]:
    with sqlite3.connect(folder / "db.sqlite3") as connection:
        return connection.execute("SELECT status, content FROM chatsite_message WHERE id = ?", [message_id]).fetchone()


def test_api_calls_are_answered_and_both_workers_feed_one_engine(two_processes):
    url, _, _, launcher = two_processes
    key = create_api_key(sign_up(url, "processes-api"))

    async def calls():
        async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
            bodies = [{"model": model, "messages": [{"role": "user", "content": f"hello {n}"}], "max_tokens": 16}
                      for n in range(12)]
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for body in bodies))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = [response.json() for response in pool.submit(asyncio.run, calls()).result(timeout=180)]
    assert all(answer["choices"][0]["message"]["content"] for answer in answers), answers
    log = launcher.log()
    assert log.count("worker 1 connected") == 1 and "worker 2 connected" in log  # both workers, one engine


async def connect_to_whoever_answers(url: str, headers: dict):
    """A socket on new connections until one lands on a process that answers: each web process
    has its own socket on the port, and the kernel picks one by the connection's address."""
    import websockets

    for _ in range(30):
        try:
            return await websockets.connect(url, additional_headers=headers, open_timeout=2)
        except TimeoutError:
            continue
    raise AssertionError(f"no answer from {url}")


async def send_through(others: list[int], url: str, headers: dict, content: str, *, then=None):
    """A message sent on a socket held by a process not in `others` (paused meanwhile): the
    socket, and the `message.created` frame, after the answer's first token (and `then()`)."""
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        sender = await connect_to_whoever_answers(url, headers)
        await sender.send(json.dumps({"type": "send", "conversation": None, "content": content}))
        created = await receive_frame(sender, 30)
        assert created["type"] == "message.created", created
        first_token = await receive_frame(sender, 30)
        assert first_token["type"] == "token", first_token
        if then is not None:
            then()
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)
    return sender, created


def test_a_reply_is_followed_live_from_the_other_process(two_processes):
    """SIGSTOP decides which process answers: the message is sent through one, the page that
    reopens is held by the other, and it gets the text so far and the rest as it streams."""

    url, (first, second), folder, _ = two_processes
    cookie = sign_up(url, "processes-chat").cookie
    headers = {"Cookie": cookie, "Origin": url}
    socket_url = url.replace("http://", "ws://") + "/ws/chat/"

    async def run():
        sender, created = await send_through([second], socket_url, headers, "Tell me a long story")
        os.kill(first, signal.SIGSTOP)  # the generating process pauses for the handshake only
        try:
            watcher = await connect_to_whoever_answers(socket_url, headers)
        finally:
            os.kill(first, signal.SIGCONT)
        message_id, conversation_id = created["message"]["id"], created["conversation"]["id"]
        await watcher.send(json.dumps({"type": "watch", "conversation": conversation_id, "message": message_id, "offset": 0}))
        frames = [await receive_frame(watcher, 60)]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(await receive_frame(watcher, 60))
        await sender.close()
        await watcher.close()
        return message_id, frames

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        message_id, frames = pool.submit(asyncio.run, run()).result(timeout=240)
    tokens, done = frames[:-1], frames[-1]
    assert done["type"] == "done" and done["status"] == "done", done
    text = ""
    for frame in tokens:
        assert frame["type"] == "token" and frame["offset"] <= len(text), frame  # nothing missed
        text = text[:frame["offset"]] + frame["text"]
    status, content = reply_row(folder, message_id)
    assert status == "done" and text == content and content
    assert len(tokens) >= 2  # the text so far, then frames relayed live from the other process


def test_a_stop_asked_on_one_process_stops_the_reply_the_other_generates(two_processes):
    """The engine is paused while the stop is asked for, so that the tiny model's answer cannot
    end before it (it writes its whole answer in about a second)."""
    url, (first, second), _, launcher = two_processes
    cookie = sign_up(url, "processes-stop").cookie
    headers = {"Cookie": cookie, "Origin": url}
    socket_url = url.replace("http://", "ws://") + "/ws/chat/"

    async def run():
        sender, created = await send_through([second], socket_url, headers, "Tell me another story",
                                             then=lambda: os.kill(launcher.engine_pid, signal.SIGSTOP))
        try:
            os.kill(first, signal.SIGSTOP)
            try:
                stopper = await connect_to_whoever_answers(socket_url, headers)
            finally:
                os.kill(first, signal.SIGCONT)
            await stopper.send(json.dumps({"type": "stop", "message": created["message"]["id"]}))
            await asyncio.sleep(1)  # the generating process hears of it and cancels (its message waits in the socket)
        finally:
            os.kill(launcher.engine_pid, signal.SIGCONT)
        frames = [await receive_frame(sender, 60)]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(await receive_frame(sender, 60))
        await sender.close()
        await stopper.close()
        return frames[-1]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(asyncio.run, run()).result(timeout=240)
    assert (done["type"], done["status"], done["finish_reason"]) == ("done", "stopped", "stop"), done


def test_a_hung_web_process_is_killed_and_takes_the_rest_down(tmp_path, tiny_model_dir):
    """A web process that stops answering without exiting would keep its share of the port's
    new connections waiting: the launcher, asking each one's /livez, kills it after
    CHAT_WEB_LIVENESS_S and stops the rest, exiting non-zero for a supervisor."""
    env = server_env(CHATSITE_DATA_DIR=str(tmp_path), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32",
                     CHAT_WEB_PROCESSES="2", CHAT_WEB_LIVENESS_S="3")
    manage(env, "migrate", "--noinput")
    launcher = Launcher(env, tmp_path)
    web = launcher.web
    try:
        deadline = time.monotonic() + 60
        while not all(answers_livez(tmp_path / f"web-{index}.live.sock") for index in range(2)):
            assert time.monotonic() < deadline, launcher.log()
            time.sleep(0.2)
        time.sleep(PROBE_EVERY_S + 1)  # a round of the launcher's probes answered by both
        os.kill(web[0], signal.SIGSTOP)
        assert launcher.popen.wait(60) != 0
        log = launcher.log()
        assert f"web process {web[0]} has not answered for" in log
        assert not any(Path(f"/proc/{pid}").exists() for pid in web)  # both gone, reaped
        assert "GET /livez" not in log  # the probes stay out of the access log
    finally:
        launcher.stop()
