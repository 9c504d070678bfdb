"""Histograms, the roll-ups against the raw records, and the cost arithmetic."""
import datetime
import math
import random

import pytest
from django.db.models import Count, Max, Sum
from django.db.models.functions import TruncDate, TruncHour

from billing.costs import Margin, Projection, compute_cost_usd
from billing.histogram import RESOLUTION, bucket_bounds, bucket_of, histogram, histogram_add, percentile
from billing.models import UsageDay, UsageHour, UsageRecord
from billing.rollup import usage_roll_up
from billing.usage_report import usage_report

UTC = datetime.UTC


def test_each_value_falls_in_its_bucket():
    for value in (0.0, 0.0005, 0.001, 0.00100001, 0.02, 0.5, 1.0, 3.7, 59.9, 1000.0):
        lower, upper = bucket_bounds(bucket_of(value))
        assert lower < value <= upper or (value <= 0.001 and bucket_of(value) == 0)


def test_a_percentile_from_the_histogram_is_within_its_resolution_of_the_exact_one():
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(-1, 1.2) for _ in range(5000))
    counts = histogram(values[:2500])
    histogram_add(counts, histogram(values[2500:]))  # added halves read as the whole
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = values[math.ceil(q * len(values)) - 1]
        assert abs(percentile(counts, q) - exact) <= RESOLUTION * exact
    assert percentile({}, 0.5) is None


def test_cost_and_margin_by_hand():
    assert compute_cost_usd(3600, 2.5) == 2.5
    margin = Margin(subscribers=3, price_usd=20, free_cost_per_day_usd=1.5, plus_cost_per_day_usd=0.5)
    assert margin.revenue_per_month_usd == 60
    assert margin.free_cost_per_month_usd == 45 and margin.plus_cost_per_month_usd == 15
    assert margin.margin_per_month_usd == 0 and margin.plus_pays_for_free


def test_the_projection_at_chatgpts_volume_by_hand():
    # 1.5e9 requests × 300 tokens = 4.5e11 tokens a day; a worker writes 1,000 × 86,400 =
    # 8.64e7 a day: 5,208.3 → 5,209 workers; × $3 × 24 h = $375,048 a day.
    projection = Projection(requests_per_day=1.5e9, output_tokens_per_request=300, tokens_per_s_per_worker=1000,
                            hourly_usd=3)
    assert projection.workers == 5209
    assert projection.usd_per_day == pytest.approx(375_048)
    assert projection.usd_per_request == pytest.approx(375_048 / 1.5e9)
    assert projection.against_chatgpt == pytest.approx(375_048 / 694_444)


def make_records(users, *, count, start, hours, seed=1):
    rng = random.Random(seed)
    records = []
    for index in range(count):
        completion = rng.randint(0, 300)
        records.append(UsageRecord(
            user=rng.choice(users), message_id=10_000 + index + seed * 100_000, plan=rng.choice(["free", "plus"]),
            source=rng.choice(["chat", "api"]), status=rng.choice(["done", "done", "stopped", "failed"]),
            prompt_tokens=rng.randint(1, 500), completion_tokens=completion, queue_wait_s=rng.random(),
            ttft_s=rng.choice([None, rng.random() * 2]), decode_s=completion * 0.03, compute_s=rng.random() * 5,
        ))
    UsageRecord.objects.bulk_create(records)
    for record in UsageRecord.objects.filter(message_id__gte=10_000 + seed * 100_000,
                                             message_id__lt=10_000 + count + seed * 100_000):
        record.created_at = start + datetime.timedelta(seconds=rng.uniform(0, hours * 3600))
        record.save(update_fields=["created_at"])


@pytest.mark.django_db
def test_the_roll_ups_equal_the_raw_aggregation(make_user):
    users = [make_user() for _ in range(5)]
    start = datetime.datetime(2026, 11, 28, 22, 0, tzinfo=UTC)
    make_records(users, count=400, start=start, hours=50)  # three UTC days
    usage_roll_up(since=datetime.date(2026, 11, 28), until=datetime.date(2026, 11, 30))
    raw = {
        (row["hour"], row["plan"], row["source"]): row
        for row in UsageRecord.objects.annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("hour", "plan", "source")
        .annotate(requests=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
                  compute=Sum("compute_s"))
    }
    rolled = {(row.hour, row.plan, row.source): row for row in UsageHour.objects.all()}
    assert rolled.keys() == raw.keys()
    for key, row in rolled.items():
        assert (row.requests, row.prompt_tokens, row.completion_tokens) == (
            raw[key]["requests"], raw[key]["prompt"], raw[key]["completion"])
        assert row.compute_s == pytest.approx(raw[key]["compute"])
        assert sum(row.queue_hist.values()) == row.requests
    per_user = {
        (row["user_id"], row["plan"], row["source"], str(row["day"])): row
        for row in UsageRecord.objects.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("user_id", "plan", "source", "day")
        .annotate(requests=Count("id"), completion=Sum("completion_tokens"), last=Max("created_at"))
    }
    days = UsageDay.objects.all()
    assert len(days) == len(per_user)
    for day in days:
        row = per_user[(day.user_id, day.plan, day.source, str(day.day))]
        assert (day.requests, day.completion_tokens, day.last_at) == (row["requests"], row["completion"], row["last"])


@pytest.mark.django_db
def test_rolling_up_again_changes_nothing_and_a_rewritten_record_is_picked_up(make_user):
    users = [make_user() for _ in range(3)]
    make_records(users, count=100, start=datetime.datetime(2026, 11, 29, tzinfo=UTC), hours=20)
    usage_roll_up(since=datetime.date(2026, 11, 29), until=datetime.date(2026, 11, 29))
    before = list(UsageHour.objects.values_list("hour", "plan", "source", "requests", "completion_tokens"))
    usage_roll_up(since=datetime.date(2026, 11, 29), until=datetime.date(2026, 11, 29))
    assert list(UsageHour.objects.values_list("hour", "plan", "source", "requests", "completion_tokens")) == before
    record = UsageRecord.objects.first()
    UsageRecord.objects.filter(id=record.id).update(completion_tokens=record.completion_tokens + 1000)
    usage_roll_up()  # from the newest rolled-up day on
    assert UsageHour.objects.aggregate(total=Sum("completion_tokens"))["total"] == (
        UsageRecord.objects.aggregate(total=Sum("completion_tokens"))["total"])


@pytest.mark.django_db
def test_the_report_over_the_roll_ups_by_hand(make_user):
    free, plus = make_user("free-user"), make_user("plus-user")
    day = datetime.date(2026, 11, 30)
    at = datetime.datetime(2026, 11, 30, 10, 15, tzinfo=UTC)
    rows = [  # user, plan, status, prompt, completion, queue, ttft, decode, compute
        (free, "free", "done", 10, 100, 0.1, 0.5, 9.9, 36.0),
        (free, "free", "stopped", 20, 50, 0.3, 1.0, 4.9, 18.0),
        (plus, "plus", "failed", 30, 200, 0.05, 0.2, 19.9, 72.0),
    ]
    for index, (user, plan, status, prompt, completion, queue, ttft, decode, compute) in enumerate(rows):
        record = UsageRecord.objects.create(user=user, message_id=index + 1, plan=plan, source="chat", status=status,
                                            prompt_tokens=prompt, completion_tokens=completion, queue_wait_s=queue,
                                            ttft_s=ttft, decode_s=decode, compute_s=compute)
        UsageRecord.objects.filter(id=record.id).update(created_at=at)
    usage_roll_up(since=day, until=day)
    report = usage_report(first_day=day, last_day=day, hourly_usd=3.6, now=datetime.datetime(2026, 12, 4, tzinfo=UTC))
    assert report.days == 1
    total = report.total
    assert (total.requests, total.users, total.prompt_tokens, total.completion_tokens) == (3, 2, 60, 350)
    assert total.cost_usd == pytest.approx(0.126)  # 126 s × $3.60 / 3,600
    assert total.cost_per_request_usd == pytest.approx(0.042)
    assert total.cost_per_1k_output_usd == pytest.approx(0.36)
    assert total.stopped_share == pytest.approx(1 / 3) and total.failed_share == pytest.approx(1 / 3)
    assert report.by_plan["free"].users == 1 and report.by_plan["free"].requests == 2
    assert report.cost_per_day_usd(report.by_plan["free"]) == pytest.approx(0.054)
    # Free's time to first token: 0.5 and 1.0 s; inter-token latency 9.9 / 99 and 4.9 / 49 = 0.1 s.
    assert report.by_plan["free"].p("ttft", 0.5) == pytest.approx(0.5, rel=RESOLUTION)
    assert report.by_plan["free"].p("ttft", 0.95) == pytest.approx(1.0, rel=RESOLUTION)
    assert report.by_plan["free"].p("itl", 0.5) == pytest.approx(0.1, rel=RESOLUTION)
    assert report.by_plan["plus"].p("queue", 0.5) == pytest.approx(0.05, rel=RESOLUTION)
    assert report.requests_per_hour["free"][10] == 2 and report.requests_per_hour["plus"][10] == 1
    assert sum(report.requests_per_hour["free"]) == 2
