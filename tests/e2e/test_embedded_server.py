"""`make run`'s mode for real: one daphne process with SQLite, the in-memory channel layer and
the Celery worker inside it, driven over HTTP and a real WebSocket."""
from html import escape

from tests.e2e.servers import chat, get_page, sign_up


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
