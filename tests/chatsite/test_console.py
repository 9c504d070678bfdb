"""/console/: who may see it, and every figure on it against a fixture worked out by hand."""
import csv
import datetime
import io
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import Subscription, UsageRecord
from billing.rollup import usage_roll_up
from chatsite.worker_stats import worker_stats_publish
from tests.chatsite.factories import conversation_with_reply

UTC = datetime.UTC
PAGES = ["/console/", "/console/users/"]


@pytest.fixture
def staff_client(client, make_user):
    client.force_login(make_user("boss", is_staff=True))
    return client


def record(user, message_id, *, plan, status="done", prompt=10, completion=100, compute=36.0, at, source="chat",
           ttft=0.5, queue=0.1, decode=9.9):
    created = UsageRecord.objects.create(
        user=user, message_id=message_id, plan=plan, source=source, status=status, prompt_tokens=prompt,
        completion_tokens=completion, queue_wait_s=queue, ttft_s=ttft, decode_s=decode, compute_s=compute)
    UsageRecord.objects.filter(id=created.id).update(created_at=at)


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no element #{element_id}"
    return match.group(1).strip()


@pytest.mark.django_db
@pytest.mark.parametrize("path", [*PAGES, "/console/users/1/"])
def test_anonymous_people_are_sent_to_log_in_and_users_are_refused(client, make_user, path):
    response = client.get(path)
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    client.force_login(make_user())
    assert client.get(path).status_code == 403
    assert client.post("/console/roll-up/").status_code == 403


@pytest.mark.django_db
def test_staff_see_every_figure_as_worked_out_by_hand(staff_client, make_user, settings):
    settings.COMPUTE_HOURLY_COST_USD = 3.6  # so a compute second costs $0.001
    settings.PLUS_PRICE_USD = 20
    free, plus = make_user("free-user"), make_user("plus-user")
    Subscription.objects.create(user=plus, stripe_id="sub_1", customer_id="cus_1", status="active")
    day = timezone.now().astimezone(UTC).date() - datetime.timedelta(days=1)
    at = datetime.datetime.combine(day, datetime.time(10, 15), tzinfo=UTC)
    record(free, 1, plan="free", completion=100, prompt=10, compute=36.0, at=at)
    record(free, 2, plan="free", status="stopped", completion=50, prompt=20, compute=18.0, at=at, source="api")
    record(plus, 3, plan="plus", status="failed", completion=200, prompt=30, compute=72.0, at=at)
    usage_roll_up(since=day, until=day)
    response = staff_client.get(f"/console/?range=custom&from={day}&to={day}")
    assert response.status_code == 200
    html = response.content.decode()
    assert text_of(html, "requests") == "3" and text_of(html, "users") == "2"
    assert text_of(html, "prompt-tokens") == "60" and text_of(html, "completion-tokens") == "350"
    assert text_of(html, "stopped") == "33.3 %" and text_of(html, "failed") == "33.3 %"
    # 126 compute seconds × $3.60 / 3,600 = $0.126; 3 requests; 350 output tokens; one day.
    assert text_of(html, "cost-total") == "$0.13"
    assert text_of(html, "cost-per-day") == "$0.13"
    assert text_of(html, "cost-per-request") == "$0.042"
    assert text_of(html, "cost-per-1k") == "$0.36"
    # Free: 54 s a day → $0.054 × 30 = $1.62; Plus: 72 s → $2.16; 1 subscriber × $20.
    assert text_of(html, "revenue") == "$20.00"
    assert text_of(html, "free-cost") == "$1.62" and text_of(html, "plus-cost") == "$2.16"
    assert text_of(html, "margin-value") == "$16.22" and "Plus pays for Free." in html
    # 1.5e9 requests × 116.67 tokens ÷ (2.7778 tokens/s × 86,400) = 729,166.7 → 729,167 workers,
    # × $3.60 × 24 = $63,000,029 a day.
    assert text_of(html, "workers") == "729,167"
    assert text_of(html, "usd-per-day") == "$63,000,029"
    assert "<svg" in html and 'class="free"' in html and 'class="plus"' in html
    assert re.search(r'id="plan-free"><th>Free</th><td>2</td><td>1</td>', html)
    assert re.search(r'id="source-api"><th>API</th><td>1</td><td>1</td>', html)


@pytest.mark.django_db
def test_the_projections_assumptions_are_edited_on_the_page_and_bad_ones_are_refused(staff_client):
    html = staff_client.get("/console/?requests=1000&tokens=100&speed=1000&hourly=2.4").content.decode()
    # 100,000 tokens a day ÷ 86,400,000 a worker → 1 worker × $2.40 × 24 = $57.60.
    assert text_of(html, "workers") == "1" and text_of(html, "usd-per-day") == "$57.60"
    assert text_of(html, "usd-per-request") == "$0.058"
    response = staff_client.get("/console/?requests=lots&range=custom&from=2026-12-05&to=2026-12-01")
    assert response.status_code == 400
    html = response.content.decode()
    assert "requests: &#x27;lots&#x27; is not a number." in html
    assert "The range&#x27;s first day is after its last." in html


@pytest.mark.django_db
def test_the_users_table_sorts_searches_pages_and_its_csv_is_what_it_shows(staff_client, make_user, settings):
    settings.COMPUTE_HOURLY_COST_USD = 3.6
    now = timezone.now()
    for index in range(55):
        user = make_user(f"person{index:02d}")
        for request in range(index % 4 + 1):
            record(user, index * 10 + request, plan="plus" if index % 5 == 0 else "free", compute=1.0,
                   at=now - datetime.timedelta(minutes=index))
    usage_roll_up()
    html = staff_client.get("/console/users/?range=7d&sort=-requests").content.decode()
    names = re.findall(r'<th><a href="/console/users/\d+/">([^<]+)</a></th>', html)
    assert len(names) == 50 and "Page 1 of 2" in html and "55 active users" in html
    assert names[0] == "person03"  # 4 requests, the lowest id of those with 4
    body = staff_client.get("/console/users/?range=7d&sort=-requests&format=csv").content.decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [row["user"] for row in rows] == names
    assert rows[0] == {"user": "person03", "plan": "free", "requests": "4", "tokens": "440", "cost_usd": "0.004000",
                       "last_active_utc": rows[0]["last_active_utc"]}
    table_cells = re.findall(r"<td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", html)
    assert [(row["plan"].title(), row["requests"], row["tokens"]) for row in rows] == [
        (plan, requests, tokens) for plan, requests, tokens, _ in table_cells]
    second = staff_client.get("/console/users/?range=7d&sort=-requests&page=2").content.decode()
    assert len(re.findall(r'<th><a href="/console/users/', second)) == 5
    found = staff_client.get("/console/users/?range=7d&q=person1").content.decode()
    assert sorted(re.findall(r'>(person\d+)</a>', found)) == [f"person{i}" for i in range(10, 20)]
    by_user = staff_client.get("/console/users/?range=7d&sort=user").content.decode()
    assert re.findall(r'>(person\d+)</a>', by_user)[:2] == ["person00", "person01"]


@pytest.mark.django_db
def test_a_users_page_counts_their_conversations_and_never_shows_their_text(staff_client, make_user):
    user = make_user("writer")
    conversation_with_reply(user, content="my secret plans", reply_text="a secret answer")
    record(user, 99, plan="free", at=timezone.now())
    usage_roll_up()
    html = staff_client.get(f"/console/users/{user.id}/").content.decode()
    assert "secret" not in html
    assert re.search(r"<th>Chat</th><td>1</td><td>2</td>", html)
    assert "<svg" in html
    assert staff_client.get("/console/users/999999/").status_code == 404


@pytest.mark.django_db
def test_the_live_panel_says_when_no_worker_is_there_and_shows_one_that_reports(staff_client, make_user, monkeypatch):
    from django.core.cache import cache

    from chatsite import worker_stats

    # An embedded worker started by an earlier test in this process keeps beating (every
    # INTERVAL_S): silence it, then start from an empty cache.
    monkeypatch.setattr(worker_stats, "worker_stats_publish", lambda hostname: None)
    cache.clear()
    user = make_user()
    conversation_with_reply(user, reply_text="", status="pending")
    html = staff_client.get("/console/").content.decode()
    assert 'id="no-worker"' in html
    assert re.search(r"<th>free</th><td>1</td><td>0</td>", html)
    cache.delete("chatsite:console-live")
    worker_stats_publish("gpu-1@host")
    html = staff_client.get("/console/").content.decode()
    assert 'id="no-worker"' not in html and "gpu-1@host" in html


@pytest.mark.django_db
def test_roll_up_now_brings_the_figures_up_to_date(staff_client, make_user):
    record(make_user(), 7, plan="free", at=timezone.now())
    assert text_of(staff_client.get("/console/?range=today").content.decode(), "requests") == "0"
    response = staff_client.post("/console/roll-up/", {"next": "/console/?range=today"})
    assert response.status_code == 302
    assert text_of(staff_client.get("/console/?range=today").content.decode(), "requests") == "1"
