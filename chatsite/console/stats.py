"""What the console asks of the product beyond billing's usage figures: the range a page
shows, what is queued and running now, and a user's conversation counts (never their text)."""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Count, Min

from billing.plans import plan_get
from chatsite.models import Conversation, Message
from chatsite.worker_stats import workers_live

RANGES = {"today": 1, "7d": 7, "30d": 30}
MAX_CUSTOM_DAYS = 366
LIVE_CACHE_S = 5


class RangeError(ValueError):
    pass


@dataclass(frozen=True)
class DayRange:
    key: str  # today, 7d, 30d or custom
    first_day: datetime.date
    last_day: datetime.date

    @property
    def label(self) -> str:
        if self.key == "today":
            return f"Today ({self.first_day:%d %b %Y}, UTC)"
        return f"{self.first_day:%d %b %Y} – {self.last_day:%d %b %Y} (UTC)"

    @property
    def query(self) -> str:
        if self.key == "custom":
            return f"range=custom&from={self.first_day}&to={self.last_day}"
        return f"range={self.key}"


def day_range(params, *, today: datetime.date) -> DayRange:
    """The range asked for by ?range=today|7d|30d or ?range=custom&from=DAY&to=DAY."""
    key = params.get("range", "7d")
    if key in RANGES:
        return DayRange(key, today - datetime.timedelta(days=RANGES[key] - 1), today)
    if key != "custom":
        raise RangeError("Choose today, 7 days, 30 days or a custom range.")
    try:
        first = datetime.date.fromisoformat(params.get("from", ""))
        last = datetime.date.fromisoformat(params.get("to", ""))
    except ValueError:
        raise RangeError("A custom range needs two days as YYYY-MM-DD.") from None
    if first > last:
        raise RangeError("The range's first day is after its last.")
    if (last - first).days >= MAX_CUSTOM_DAYS:
        raise RangeError(f"A range is at most {MAX_CUSTOM_DAYS} days.")
    return DayRange("custom", first, last)


def live_status(*, now: datetime.datetime) -> dict:
    """Replies waiting and being written per queue, the oldest waiting, and the workers heard
    from; cached a few seconds so a busy console costs the database little."""
    cached = cache.get("chatsite:console-live")
    if cached is not None:
        return cached
    in_progress = (
        Message.objects.filter(role=Message.Role.ASSISTANT, status__in=[Message.Status.PENDING, Message.Status.STREAMING])
        .values("plan", "status").annotate(count=Count("id")).order_by()
    )
    queues: dict[str, dict] = {}
    for row in in_progress:
        queue = plan_get(row["plan"]).queue
        counts = queues.setdefault(queue, {"queue": queue, "waiting": 0, "running": 0})
        counts["waiting" if row["status"] == Message.Status.PENDING else "running"] += row["count"]
    oldest = Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.PENDING).aggregate(
        oldest=Min("created_at"))["oldest"]
    status = {
        "queues": sorted(queues.values(), key=lambda counts: counts["queue"]),
        "oldest_waiting_s": (now - oldest).total_seconds() if oldest else None,
        "workers": workers_live(),
        "at": now,
    }
    cache.set("chatsite:console-live", status, LIVE_CACHE_S)
    return status


def conversation_counts(*, user_id: int) -> list[dict]:
    """A user's conversations and messages, per source: counts only."""
    return list(
        Conversation.objects.filter(owner_id=user_id).values("source")
        .annotate(conversations=Count("id", distinct=True), messages=Count("messages")).order_by("source")
    )
