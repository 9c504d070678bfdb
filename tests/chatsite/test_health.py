"""/healthz: one field per check, 503 when one fails. The distributed mode's answer with a
real worker is checked in tests/e2e/test_distributed.py."""
import pytest
import redis
from django.db.utils import ConnectionHandler

from chatsite import health
from tests.e2e.servers import require_service

pytestmark = pytest.mark.django_db

REDIS_WITHOUT_WORKERS = "redis://127.0.0.1:6379/10"  # no worker ever consumes this database
NOTHING_LISTENS = "redis://127.0.0.1:1/0"


def test_the_embedded_mode_is_healthy_when_its_database_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "embedded", "workers": "embedded"}


def test_the_embedded_mode_without_its_worker_has_no_one_to_generate(client, settings):
    settings.CHATSITE_EMBEDDED_WORKER = False
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["workers"] == 0 and response.json()["status"] == "unavailable"


def test_a_broker_that_does_not_answer_is_reported_and_no_worker_is_asked(client, settings):
    settings.CELERY_BROKER_URL = NOTHING_LISTENS
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok"
    assert body["broker"].startswith("error: ") and body["workers"] == 0


def test_a_broker_with_no_worker_listening_is_unhealthy(client, settings):
    require_service("127.0.0.1", 6379, "Redis")
    redis.Redis.from_url(REDIS_WITHOUT_WORKERS).flushdb()
    settings.CELERY_BROKER_URL = REDIS_WITHOUT_WORKERS
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "broker": "ok", "workers": 0}


def test_a_database_that_does_not_answer_is_reported():
    unreachable = ConnectionHandler({
        "default": {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": "1", "NAME": "none",
                    "USER": "none", "OPTIONS": {"connect_timeout": 2}},
    })["default"]
    assert health.database_check(unreachable) == "error: OperationalError"


@pytest.mark.parametrize(
    ("database", "broker", "workers", "healthy"),
    [
        ("ok", "embedded", "embedded", True),
        ("ok", "ok", 2, True),
        ("ok", "ok", 0, False),
        ("error: OperationalError", "embedded", "embedded", False),
        ("ok", "error: OperationalError", 0, False),
        ("ok", "ok", "error: TimeoutError", False),
    ],
)
def test_the_report_is_healthy_only_when_every_check_passes(database, broker, workers, healthy):
    body, ok = health.health_report(database=database, broker=broker, workers=workers)
    assert ok is healthy
    assert body == {"status": "ok" if healthy else "unavailable", "database": database, "broker": broker, "workers": workers}
