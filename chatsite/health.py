"""What /healthz reports: one entry per dependency the product needs to answer a chat.

`database` always; `broker` and `workers` where the broker is a server of its own (Redis,
RabbitMQ). With the embedded `memory://` broker the worker lives in the process answering, so
both read "embedded" (and `workers` 0 where the embedded worker is turned off).
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from kombu import Connection

from chatsite.celery import app as celery_app

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 2.0  # connecting to the broker, all tries together
PING_TIMEOUT_S = 1.0  # how long workers have to answer a ping
EMBEDDED = "embedded"


def database_check(database=None) -> str:
    """'ok', or why the database (a Django connection; default: the default one) did not
    answer `SELECT 1`."""
    database = database if database is not None else connections[DEFAULT_DB_ALIAS]
    try:
        with database.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:
        logger.warning("health: the database did not answer: %s", error)
        return f"error: {type(error).__name__}"
    return "ok"


def broker_check() -> str:
    if _embedded_broker():
        return EMBEDDED
    try:
        with _broker_connection() as broker:
            broker.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
    except Exception as error:
        logger.warning("health: the broker did not answer: %s", error)
        return f"error: {type(error).__name__}"
    return "ok"


def workers_check() -> int | str:
    """How many Celery workers answered a ping; an error string when none could be asked."""
    if _embedded_broker():
        return EMBEDDED if settings.CHATSITE_EMBEDDED_WORKER else 0
    try:
        with _broker_connection() as broker:
            return len(celery_app.control.ping(timeout=PING_TIMEOUT_S, connection=broker))
    except Exception as error:
        logger.warning("health: pinging workers failed: %s", error)
        return f"error: {type(error).__name__}"


def answered(check: str) -> bool:
    return check in ("ok", EMBEDDED)


def health_report(*, database: str, broker: str, workers: int | str) -> tuple[dict, bool]:
    """The JSON body and whether everything passed: the database and broker answer, and at
    least one worker (or the embedded one) is there to generate."""
    has_worker = workers == EMBEDDED or (isinstance(workers, int) and workers > 0)
    healthy = database == "ok" and answered(broker) and has_worker
    body = {"status": "ok" if healthy else "unavailable", "database": database, "broker": broker, "workers": workers}
    return body, healthy


def _broker_connection() -> Connection:
    """A connection to the configured broker URL, with the transport its scheme names."""
    return Connection(settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT_S)


def _embedded_broker() -> bool:
    return settings.CELERY_BROKER_URL.startswith("memory://")
