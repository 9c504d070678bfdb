"""Add the raw usage records up into UsageHour and UsageDay, so that the console reads a
month from a few thousand rows instead of a million.

Roll-ups are recomputed a whole UTC day at a time: a day's rows are deleted and written
again from that day's records, so running it twice, or over a day still going on, gives the
same rows as running it once at the end of the day.
"""
from __future__ import annotations

import datetime

from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone

from billing.histogram import bucket_of
from billing.models import UsageDay, UsageHour, UsageRecord

UTC = datetime.UTC


def _count(histogram: dict, value: float) -> None:
    key = str(bucket_of(value))
    histogram[key] = histogram.get(key, 0) + 1


def day_start(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=UTC)


def usage_roll_up_day(day: datetime.date) -> int:
    """Recompute the roll-ups of one UTC day; returns how many records it read."""
    start, end = day_start(day), day_start(day + datetime.timedelta(days=1))
    hours: dict[tuple, UsageHour] = {}
    users: dict[tuple, UsageDay] = {}
    records = (
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by()
        .values_list("user_id", "plan", "source", "status", "prompt_tokens", "completion_tokens",
                     "queue_wait_s", "ttft_s", "decode_s", "compute_s", "created_at")
    )
    read = 0
    for (user_id, plan, source, status, prompt, completion, queue_wait, ttft, decode, compute,
         created_at) in records.iterator(chunk_size=5000):
        read += 1
        hour = created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        sums = hours.get((hour, plan, source))
        if sums is None:
            sums = hours[hour, plan, source] = UsageHour(hour=hour, plan=plan, source=source, ttft_hist={},
                                                         itl_hist={}, queue_hist={})
        sums.requests += 1
        sums.stopped += status == "stopped"
        sums.failed += status == "failed"
        sums.prompt_tokens += prompt
        sums.completion_tokens += completion
        sums.compute_s += compute
        sums.decode_s += decode
        _count(sums.queue_hist, queue_wait)
        if ttft is not None:
            _count(sums.ttft_hist, ttft)
        if completion > 1 and decode > 0:
            _count(sums.itl_hist, decode / (completion - 1))
        user = users.get((user_id, plan, source))
        if user is None:
            user = users[user_id, plan, source] = UsageDay(day=day, user_id=user_id, plan=plan, source=source,
                                                           last_at=created_at)
        user.requests += 1
        user.prompt_tokens += prompt
        user.completion_tokens += completion
        user.compute_s += compute
        user.last_at = max(user.last_at, created_at)
    with transaction.atomic():
        UsageHour.objects.filter(hour__gte=start, hour__lt=end).delete()
        UsageDay.objects.filter(day=day).delete()
        UsageHour.objects.bulk_create(hours.values(), batch_size=1000)
        UsageDay.objects.bulk_create(users.values(), batch_size=1000)
    return read


def usage_roll_up(*, since: datetime.date | None = None, until: datetime.date | None = None) -> int:
    """Recompute the roll-ups of the days from `since` to `until` (UTC, both included).

    By default from the day of the newest roll-up (it may have been rolled up part-way) or,
    with none yet, the day of the oldest record, to today. Returns the records read."""
    today = timezone.now().astimezone(UTC).date()
    until = until or today
    if since is None:
        newest = UsageHour.objects.aggregate(newest=Max("hour"))["newest"]
        if newest is not None:
            since = newest.astimezone(UTC).date()
        else:
            oldest = UsageRecord.objects.aggregate(oldest=Min("created_at"))["oldest"]
            if oldest is None:
                return 0
            since = oldest.astimezone(UTC).date()
    read = 0
    day = since
    while day <= until:
        read += usage_roll_up_day(day)
        day += datetime.timedelta(days=1)
    return read


def usage_rolled_up_to() -> datetime.datetime | None:
    """The time of the newest record the roll-ups include: how fresh the console's figures are."""
    newest_day = UsageDay.objects.aggregate(day=Max("day"))["day"]  # the index's first column: quick
    if newest_day is None:
        return None
    return UsageDay.objects.filter(day=newest_day).aggregate(newest=Max("last_at"))["newest"]
