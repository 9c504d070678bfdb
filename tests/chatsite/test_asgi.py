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
