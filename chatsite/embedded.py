"""The embedded mode's worker: a real Celery worker (memory:// broker, threads pool) running
inside the web server process, consuming the same queues and running the same task code.

It must start from inside the running server: started at import time under Daphne it
connects but never receives a task (shared/notes/embedded-worker.md).
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import sys
import threading
import time

from celery.worker import WorkController
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from chatsite import leases, publisher, worker_stats
from chatsite.celery import app as celery_app
from chatsite.peers import peers_configured
from inference.worker import engine_shutdown

logger = logging.getLogger(__name__)

_worker_thread: threading.Thread | None = None
_process_started_at = timezone.now()
_lock = threading.Lock()


def _hostname() -> str:
    return f"embedded-{settings.CHATSITE_WEB_INDEX}@chatsite" if settings.CHAT_WEB_PROCESSES > 1 else "embedded@chatsite"


def _started_at():
    """When this server started: with several web processes, when chatsite.serve started them
    all, so that one started again alone does not take the others' replies for abandoned."""
    if settings.CHATSITE_STARTED_AT:
        return datetime.datetime.fromtimestamp(settings.CHATSITE_STARTED_AT, tz=datetime.UTC)
    return _process_started_at


def embedded_worker_ensure() -> None:
    """Start the in-process worker once, if this process is configured to have one.

    Call from the server's event loop: the loop is registered for publishing, since the
    in-memory channel layer's queues belong to it.
    """
    global _worker_thread
    if not settings.CHATSITE_EMBEDDED_WORKER:
        return
    publisher.publisher_use_loop(asyncio.get_running_loop())
    if _worker_thread is not None:
        return  # every HTTP request asks: the common answer takes no lock
    with _lock:
        if _worker_thread is not None:
            return
        if peers_configured():
            asyncio.get_running_loop().create_task(get_channel_layer().listen())
        # Built and run in its own thread: building it sends worker_init, whose handlers
        # (Celery's Django fix-up, our model preload) must not run on the server's loop.
        _worker_thread = threading.Thread(target=_run_worker, name="embedded-celery-worker", daemon=True)
        _worker_thread.start()


def _run_worker() -> None:
    # Replies a previous run of this server left unfinished are sent to the queue again at
    # once (their worker was this process) and continued from their saved text.
    leases.sweeper_start(before=_started_at())
    worker_stats.heartbeat_start(_hostname())
    if settings.USAGE_ROLLUP_INTERVAL_S > 0 and settings.CHATSITE_WEB_INDEX == 0:  # one process adds up for all
        threading.Thread(target=_roll_up_for_ever, name="usage-roll-up", daemon=True).start()
    _on_server_shutdown(_stop_generating)
    worker = WorkController(
        app=celery_app,
        hostname=_hostname(),
        queues=[settings.CHAT_QUEUE_PLUS, settings.CHAT_QUEUE_FREE],
        pool="threads",
        concurrency=settings.CELERY_WORKER_CONCURRENCY,
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    logger.info("embedded Celery worker starting (memory:// broker, %s threads)", settings.CELERY_WORKER_CONCURRENCY)
    worker.start()


def _on_server_shutdown(callback) -> None:
    """Run `callback` when Daphne begins to shut down (SIGTERM, SIGINT), before the process
    waits for its threads. Daphne runs on Twisted; outside it (tests) there is nothing to do."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None:
        reactor.callFromThread(reactor.addSystemEventTrigger, "before", "shutdown", callback)


def _stop_generating() -> None:
    """End every running reply now: each gives its lease back with its text so far, and the
    next start of the server continues it. Without this, the process would wait at exit for
    its task threads, that is for every reply to finish."""
    logger.info("server shutting down: handing running replies back")
    engine_shutdown()


ROLL_UP_FIRST_S = 30.0  # after the model has begun loading, not beside it


def _roll_up_for_ever() -> None:
    """The embedded mode's stand-in for Celery beat: add usage up for the console."""
    from django.db import close_old_connections

    from billing.rollup import usage_roll_up

    time.sleep(ROLL_UP_FIRST_S)
    while True:
        try:
            close_old_connections()
            usage_roll_up()
        except Exception:
            logger.exception("usage roll-up failed; trying again at the next interval")
        time.sleep(settings.USAGE_ROLLUP_INTERVAL_S)
