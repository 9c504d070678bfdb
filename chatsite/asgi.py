"""ASGI entry point: /v1/ (the API) through a Django handler of its own, the rest of HTTP
through Django's, /ws/ through Channels. Served by Daphne."""
import asyncio
import contextlib
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()  # before importing consumers: it sets Django up

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402

from chatsite import websocket_close  # noqa: E402, F401 - frames too large get a close frame
from chatsite.embedded import embedded_worker_ensure  # noqa: E402
from chatsite.openai_protocol import api_error_response  # noqa: E402
from chatsite.routing import websocket_urlpatterns  # noqa: E402

API_PREFIX = "/v1/"


class ApiHandler(ASGIHandler):
    """Django's ASGI handler without the middleware stack, for /v1/ only: the API answers API
    keys, not sessions, so sessions, auth, CSRF, messages, clickjacking and static files have
    nothing to do there, and each of them costs every call thread hops (WhiteNoise is sync
    only; Django's own middleware runs its hooks through sync_to_async). The API's views check the Host header themselves (ALLOWED_HOSTS)."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_api_response)

    async def handle(self, scope, receive, send):
        """Django's `ASGIHandler.handle` (5.2), with the request's two signals sent in the event
        loop's thread instead of through `sync_to_async`. Django sends them thread-sensitive,
        which inside its per-request `ThreadSensitiveContext` means a thread started for each
        call and two trips to it. Their receivers (closing this thread's database connections
        and caches, resetting the query log and the URLconf) have nothing to do in the loop's
        thread, which holds no connection; the API's database work runs in threads that close
        their own (`database_sync_to_async`). tests/chatsite/test_asgi.py fails when Django's
        method changes, so that this copy is looked at again."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away meanwhile
                await self.send_response(response, send)
            return response

        # The client's disconnect, heard while the response is made, cancels making it.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass  # the client left: nothing to answer
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()  # sends request_finished
        body_file.close()

    async def _get_api_response(self, request):
        try:
            response = await self._get_response_async(request)
        except Exception as error:  # every answer of the API is OpenAI's JSON, never Django's HTML page
            response = api_error_response(error)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")  # as SecurityMiddleware does
        return response


api_asgi_app = ApiHandler()


LIVENESS_PATH = "/livez"


async def http_app(scope, receive, send):
    if scope["path"] == LIVENESS_PATH:
        # Liveness: this process's event loop answers, and nothing else is asked (no database,
        # no Django), so that a load balancer or the launcher (chatsite/serve.py) tells a hung
        # process from a busy dependency. Readiness is /healthz.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    # The embedded worker (and its model) starts with the server's first request, a health
    # check included, rather than with the first chat; it cannot start before the server runs.
    embedded_worker_ensure()
    app = api_asgi_app if scope["path"].startswith(API_PREFIX) else django_asgi_app
    await app(scope, receive, send)


def _start_with_the_server() -> None:
    """Under Daphne, start the embedded worker (and load the model) as soon as the server runs,
    not at its first request: the first visitor then finds the model loading or loaded. Inside
    the running loop, which the worker's publisher needs; outside Daphne (tests) nothing."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None:
        reactor.callWhenRunning(reactor.callLater, 0, embedded_worker_ensure)


_start_with_the_server()

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
