"""/metrics: off without a token, refused with a wrong one, and its counts move with a real
generation by the tiny model."""
import re

import pytest

from billing.plans import FREE, plan_get
from chatsite.generation import reply_generate
from chatsite.services import message_send
from chatsite.worker_stats import worker_stats_publish

pytestmark = pytest.mark.django_db
TOKEN = "s3cret-metrics-token"


def sample(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def scrape(client) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_without_a_token_setting_metrics_are_off(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_a_missing_or_wrong_token_is_refused(client, settings, make_user):
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    client.force_login(make_user(is_staff=True))  # a session is no token
    assert client.get("/metrics").status_code == 401


def test_the_counts_move_after_a_real_generation(client, settings, make_user):
    settings.METRICS_TOKEN = TOKEN
    labels = {"plan": "free", "source": "chat"}
    before = scrape(client)
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    after = scrape(client)
    assert sample(after, "chatsite_requests_total", status="done", **labels) == sample(
        before, "chatsite_requests_total", status="done", **labels) + 1
    assert sample(after, "chatsite_generation_tokens_total", **labels) == sample(
        before, "chatsite_generation_tokens_total", **labels) + reply.completion_tokens
    assert sample(after, "chatsite_prompt_tokens_total", **labels) == sample(
        before, "chatsite_prompt_tokens_total", **labels) + reply.prompt_tokens
    for histogram in ("chatsite_time_to_first_token_seconds", "chatsite_request_queue_time_seconds"):
        assert sample(after, f"{histogram}_count", **labels) == sample(before, f"{histogram}_count", **labels) + 1


def test_engine_gauges_come_from_the_workers_snapshots(client, settings, tiny_engine_config):
    from inference.worker import engine_get

    settings.METRICS_TOKEN = TOKEN
    engine_get(tiny_engine_config)
    worker_stats_publish("w1@test")
    text = scrape(client)
    assert sample(text, "chatsite_requests_running", worker="w1@test") == 0
    assert 'chatsite_kv_cache_usage_ratio{worker="w1@test"} 0.0' in text


def test_workers_sharing_one_engine_are_counted_once(client, settings, tiny_engine_config):
    """Worker processes fed by one engine server report its figures alike: a sum over the
    gauges must count that engine once."""
    from inference.worker import engine_get

    settings.METRICS_TOKEN = TOKEN
    engine_get(tiny_engine_config)
    worker_stats_publish("w1@test")
    worker_stats_publish("w2@test")  # the same engine, as a second worker of one server sees it
    text = scrape(client)
    assert sample(text, "chatsite_requests_running", worker="w1@test") == 0
    assert 'worker="w2@test"' not in text


def test_the_grafana_dashboard_asks_only_for_metrics_we_export(client, settings, tiny_engine_config):
    import json
    from pathlib import Path

    from inference.worker import engine_get

    settings.METRICS_TOKEN = TOKEN
    engine_get(tiny_engine_config)
    worker_stats_publish("w1@test")
    exported = set(re.findall(r"^# TYPE (\w+) ", scrape(client), re.M))
    exported |= {f"{name}_total" for name in exported} | {f"{name}_bucket" for name in exported}
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"chatsite_\w+", target["expr"])}
    assert asked and asked <= exported
