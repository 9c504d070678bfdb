"""The ASGI app's HTTP routing: /v1/ through the API's middleware-free handler, pages through
Django's full stack."""
import json

import pytest
from channels.testing import HttpCommunicator

from chatsite.asgi import application


async def get(path: str, host: bytes = b"localhost", headers=()):
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", host), *headers])
    response = await communicator.get_response()
    return response["status"], dict(response["headers"]), response["body"]


@pytest.mark.asyncio
async def test_the_api_answers_without_the_page_middleware():
    status, headers, body = await get("/v1/models")
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert b"X-Frame-Options" not in headers and b"Set-Cookie" not in headers
    assert headers[b"X-Content-Type-Options"] == b"nosniff"


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_pages_still_get_the_middleware():
    status, headers, _ = await get("/accounts/login/")
    assert status == 200
    assert headers[b"X-Frame-Options"] == b"DENY"


@pytest.mark.asyncio
async def test_the_api_refuses_a_host_not_allowed():
    status, _, body = await get("/v1/models", host=b"evil.example", headers=[(b"authorization", b"Bearer cs-x")])
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_host"


@pytest.mark.asyncio
async def test_the_api_sends_the_request_signals_in_the_loops_thread():
    """Django sends them through a thread-sensitive sync_to_async (a thread per call); the
    API's handler sends them where the request is handled, and still sends both."""
    import threading

    from django.core import signals

    heard = []

    def started(**_):
        heard.append(("started", threading.get_ident()))

    def finished(**_):
        heard.append(("finished", threading.get_ident()))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        communicator = HttpCommunicator(application, "GET", "/v1/models", headers=[(b"host", b"localhost")])
        status = (await communicator.get_response())["status"]
        await communicator.wait()  # the handler's end, after the response went out
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert status == 401
    assert heard == [("started", threading.get_ident()), ("finished", threading.get_ident())]


def test_djangos_handle_is_the_one_the_api_handler_copies():
    """chatsite.asgi.ApiHandler.handle is Django 5.2's ASGIHandler.handle with the signals sent
    in place. When Django's changes, compare the two, carry the change over, and record the
    new fingerprint here."""
    import hashlib
    import inspect

    from django.core.handlers.asgi import ASGIHandler

    source = inspect.getsource(ASGIHandler.handle)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "98faeb5bef800331", source


@pytest.mark.asyncio
async def test_livez_answers_from_the_event_loop_alone():
    # No database mark: a query would fail this test. Any Host: it never reaches Django.
    status, headers, body = await get("/livez", host=b"not-an-allowed-host.example")
    assert (status, body) == (200, b"ok\n")
    assert headers[b"cache-control"] == b"no-store"
