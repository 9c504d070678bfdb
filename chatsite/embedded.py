"""The embedded mode's worker: a real Celery worker (memory:// broker, threads pool) running
inside the web server process, consuming the same queues and running the same task code.

It must start from inside the running server: started at import time under Daphne it
connects but never receives a task (shared/notes/embedded-worker.md).
"""
from __future__ import annotations

import asyncio
import logging
import threading

from celery.worker import WorkController
from django.conf import settings
from django.utils import timezone

from chatsite import publisher, services
from chatsite.celery import app as celery_app

logger = logging.getLogger(__name__)

_worker_thread: threading.Thread | None = None
_process_started_at = timezone.now()
_lock = threading.Lock()


def embedded_worker_ensure() -> None:
    """Start the in-process worker once, if this process is configured to have one.

    Call from the server's event loop: the loop is registered for publishing, since the
    in-memory channel layer's queues belong to it.
    """
    if not settings.CHATSITE_EMBEDDED_WORKER:
        return
    publisher.publisher_use_loop(asyncio.get_running_loop())
    global _worker_thread
    with _lock:
        if _worker_thread is not None:
            return
        # Built and run in its own thread: building it sends worker_init, whose handlers
        # (Celery's Django fix-up, our model preload) must not run on the server's loop.
        _worker_thread = threading.Thread(target=_run_worker, name="embedded-celery-worker", daemon=True)
        _worker_thread.start()


def _run_worker() -> None:
    closed = services.replies_interrupted_close(before=_process_started_at)
    if closed:
        logger.warning("closed %s replies left unfinished by the previous run", closed)
    worker = WorkController(
        app=celery_app,
        hostname="embedded@chatsite",
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
