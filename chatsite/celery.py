"""The Celery app. `celery -A chatsite worker -Q plus,free` runs a GPU/CPU inference worker."""
from __future__ import annotations

import logging
import os
import threading

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

logger = logging.getLogger(__name__)

app = Celery("chatsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["chatsite"])


# Brokers that keep a list per priority step and hand out the lowest number first (kombu's
# Redis transport, 0-9). RabbitMQ (on a queue declared with x-max-priority) hands out the
# highest first, and kombu's memory transport ignores priority.
_LOWEST_NUMBER_FIRST = {"redis", "rediss", "sentinel"}


def broker_priority(priority: int) -> int:
    """The message priority for work of engine `priority` (higher is admitted first), so that a
    worker takes it from the broker before lower work queued earlier. On Redis the order is
    the reverse of the engine's: Plus's 10 sent as 10 went last, behind every Free task in
    the worker's queues, however long the Free backlog."""
    from django.conf import settings

    level = min(max(priority, 0), 9)
    scheme = settings.CELERY_BROKER_URL.split("://", 1)[0].split("+", 1)[0].lower()
    return 9 - level if scheme in _LOWEST_NUMBER_FIRST else level


@worker_init.connect
@worker_process_init.connect
def _load_engine_early(**_) -> None:
    """Load the model when the worker starts rather than on its first task. In a thread:
    worker_init runs in the caller's thread, which for the embedded worker is the server's."""
    from django.conf import settings

    from inference import EngineConfig

    config = EngineConfig(**settings.INFERENCE_ENGINE)
    threading.Thread(target=_engine_load, args=(config,), name="engine-load", daemon=True).start()


def _engine_load(config) -> None:
    from inference.engine import EngineShuttingDown
    from inference.worker import engine_get

    try:
        engine_get(config)
    except EngineShuttingDown as error:  # an engine server not there (yet): each task tries again
        logger.error("%s; replies wait in the queue until it answers", error)


@worker_ready.connect
def _start_lease_sweeper(sender=None, **_) -> None:
    """Replies whose worker died are sent to the queue again by any live worker; the console
    hears from every worker (chatsite.worker_stats)."""
    from chatsite.leases import sweeper_start
    from chatsite.worker_stats import heartbeat_start

    sweeper_start()
    heartbeat_start(getattr(sender, "hostname", None))


@app.on_after_configure.connect
def _schedule_roll_ups(sender, **_) -> None:
    """`celery -A chatsite beat` adds the usage records up every USAGE_ROLLUP_INTERVAL_S
    (the embedded mode has a timer of its own instead)."""
    from django.conf import settings

    if settings.USAGE_ROLLUP_INTERVAL_S > 0:
        sender.add_periodic_task(settings.USAGE_ROLLUP_INTERVAL_S, sender.signature("chatsite.tasks.usage_roll_up"),
                                 name="usage roll-up")


@worker_shutting_down.connect
@worker_shutdown.connect
def _stop_engine(**_) -> None:
    """At the start of a shutdown, end the running replies at once: each gives its lease back
    with its text so far and another worker continues it. A warm shutdown would otherwise wait
    for every reply to finish (up to CHAT_GENERATION_TIMEOUT_S)."""
    from chatsite.leases import sweeper_stop
    from inference.worker import engine_shutdown

    sweeper_stop()
    engine_shutdown()
