"""`make run`'s mode for real: one daphne process with SQLite, the in-memory channel layer and
the Celery worker inside it, driven over HTTP and a real WebSocket."""
import asyncio
import concurrent.futures
import contextlib
import signal
import sqlite3
import time
from html import escape

import openai
import pytest

from tests.e2e.conftest import start_embedded_server
from tests.e2e.servers import chat, create_api_key, get_page, receive_frame, sign_up


def rows(server, sql, *args):
    with sqlite3.connect(server.database) as connection:
        return connection.execute(sql, args).fetchall()


def test_sign_up_chat_and_find_the_answer_saved(embedded_server):
    cookie = sign_up(embedded_server.url, "embedded-user").cookie
    frames = chat(embedded_server.url, cookie, "Hello from a real socket")
    created, tokens, done = frames[0], frames[1:-1], frames[-1]
    assert created["type"] == "message.created"
    assert tokens and all(frame["type"] == "token" for frame in tokens)
    assert done["type"] == "done" and done["status"] == "done"
    answer = "".join(frame["text"] for frame in tokens)
    assert done["content"] == answer
    page = get_page(embedded_server.url, f"/chat/{created['conversation']['id']}/", cookie)
    assert "Hello from a real socket" in page
    assert escape(answer.strip()[:40]) in page


def socket_closed_by(base_url, cookie, frame_text):
    """Send one raw frame; return the frames received and the close code the server sent."""
    import websockets

    async def run():
        received = []
        async with websockets.connect(
            base_url.replace("http://", "ws://") + "/ws/chat/",
            additional_headers={"Cookie": cookie, "Origin": base_url}, max_size=None,
        ) as socket_:
            await socket_.send(frame_text)
            try:
                while True:
                    received.append(await receive_frame(socket_, 30))
            except websockets.ConnectionClosed as closed:
                return received, closed.rcvd.code if closed.rcvd else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, run()).result()


@pytest.mark.parametrize(("size", "answered", "close_code"), [(300 * 1024, True, 4009), (2 * 1024 * 1024, False, 1009)])
def test_frames_over_the_limit_get_a_close_frame_saying_so(embedded_server, size, answered, close_code):
    """Over 256 KiB the consumer answers and closes with 4009; over Daphne's 1 MiB Autobahn
    closes with 1009 (it used to drop the connection without a close frame)."""
    cookie = sign_up(embedded_server.url, f"big-frames-{size}").cookie
    received, code = socket_closed_by(embedded_server.url, cookie, '{"type": "send", "content": "' + "x" * size + '"}')
    assert code == close_code
    assert [frame["code"] for frame in received] == (["too_large"] if answered else [])


def test_sigterm_mid_answer_exits_promptly_and_the_next_start_finishes_the_answers(tmp_path, tiny_model_dir):
    settings = {"CHAT_MODEL": tiny_model_dir, "CHAT_DTYPE": "fp32", "FREE_MAX_OUTPUT_TOKENS": "960"}
    server = start_embedded_server(tmp_path, **settings)
    key = create_api_key(sign_up(server.url, "restarted"))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)
    model = client.models.list().data[0].id

    def ask(n):
        with contextlib.suppress(Exception):  # the server goes away under it
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"tale {n}"}],
                                           max_tokens=900, extra_body={"ignore_eos": True})

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=12)
    for n in range(12):
        pool.submit(ask, n)
    deadline = time.monotonic() + 60
    while not rows(server, "SELECT id FROM chatsite_message WHERE status = 'streaming'"):
        assert time.monotonic() < deadline, "no reply started"
        time.sleep(0.05)
    time.sleep(0.5)
    server.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    server.popen.wait(30)
    assert time.monotonic() - started < 15
    pool.shutdown(wait=True)
    replies = rows(server, "SELECT status, content FROM chatsite_message WHERE role = 'assistant'")
    assert len(replies) == 12 and {status for status, _ in replies} <= {"pending", "done"}
    assert any(status == "pending" and content for status, content in replies)  # handed back with its text

    restarted = start_embedded_server(tmp_path, **settings)
    try:
        deadline = time.monotonic() + 120
        while rows(restarted, "SELECT id FROM chatsite_message WHERE role = 'assistant' AND status != 'done'"):
            assert time.monotonic() < deadline, "the restarted server did not finish the replies"
            time.sleep(0.2)
        finished = rows(restarted, "SELECT completion_tokens FROM chatsite_message WHERE role = 'assistant'")
        assert all(tokens >= 900 for (tokens,) in finished)
    finally:
        restarted.stop()
