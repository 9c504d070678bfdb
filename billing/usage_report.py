"""The console's figures for a range of UTC days, read from the roll-ups (billing.rollup)."""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from django.db.models import Count, F, Max, Q, Sum

from billing.costs import compute_cost_usd, per_1k
from billing.histogram import histogram_add, percentile
from billing.models import UsageDay, UsageHour
from billing.rollup import day_start

PLANS = ("free", "plus")
SOURCES = ("chat", "api")
METRICS = ("ttft", "itl", "queue")


@dataclass
class Figures:
    """Usage of one slice (everything, a plan or a source) over the range."""

    hourly_usd: float
    requests: int = 0
    stopped: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    compute_s: float = 0.0
    users: int = 0
    histograms: dict[str, dict] = field(default_factory=lambda: {metric: {} for metric in METRICS})

    def add(self, requests, stopped, failed, prompt_tokens, completion_tokens, compute_s, ttft, itl, queue) -> None:
        """Add one UsageHour row's figures (as values_list gives them, in this order)."""
        self.requests += requests
        self.stopped += stopped
        self.failed += failed
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.compute_s += compute_s
        for metric, counts in zip(METRICS, (ttft, itl, queue), strict=True):
            histogram_add(self.histograms[metric], counts)

    def merge(self, other: Figures) -> Figures:
        self.add(other.requests, other.stopped, other.failed, other.prompt_tokens, other.completion_tokens,
                 other.compute_s, *(other.histograms[metric] for metric in METRICS))
        return self

    def p(self, metric: str, q: float) -> float | None:
        return percentile(self.histograms[metric], q)

    @property
    def cost_usd(self) -> float:
        return compute_cost_usd(self.compute_s, self.hourly_usd)

    @property
    def cost_per_request_usd(self) -> float | None:
        return self.cost_usd / self.requests if self.requests else None

    @property
    def cost_per_1k_output_usd(self) -> float | None:
        return per_1k(self.cost_usd, self.completion_tokens)

    @property
    def stopped_share(self) -> float | None:
        return self.stopped / self.requests if self.requests else None

    @property
    def failed_share(self) -> float | None:
        return self.failed / self.requests if self.requests else None

    @property
    def output_tokens_per_request(self) -> float | None:
        return self.completion_tokens / self.requests if self.requests else None

    @property
    def tokens_per_busy_s(self) -> float | None:
        """Output tokens per second of engine time: what a worker writes while it works."""
        return self.completion_tokens / self.compute_s if self.compute_s else None


@dataclass
class UsageReport:
    first_day: datetime.date
    last_day: datetime.date
    days: float  # the range's length in days, today counting as far as it has gone
    total: Figures
    by_plan: dict[str, Figures]
    by_source: dict[str, Figures]
    hours: list[datetime.datetime]  # every hour of the range, for the charts
    requests_per_hour: dict[str, list[int]]  # plan → a count per hour of `hours`
    cost_per_day: list[tuple[datetime.date, float]]

    def cost_per_day_usd(self, figures: Figures) -> float:
        return figures.cost_usd / self.days if self.days else 0.0


def usage_report(*, first_day: datetime.date, last_day: datetime.date, hourly_usd: float,
                 now: datetime.datetime) -> UsageReport:
    start, end = day_start(first_day), day_start(last_day + datetime.timedelta(days=1))
    hours = []
    hour = start
    last_hour = min(end, now.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1))
    while hour < last_hour:
        hours.append(hour)
        hour += datetime.timedelta(hours=1)
    index = {hour: position for position, hour in enumerate(hours)}
    requests_per_hour = {plan: [0] * len(hours) for plan in PLANS}
    cost_by_day: dict[datetime.date, float] = {}
    # Each row is added to its (plan, source) slice only; the totals are the slices merged:
    # a 90-day range is 8,000 rows and their histograms.
    slices: dict[tuple[str, str], Figures] = {}
    rows = UsageHour.objects.filter(hour__gte=start, hour__lt=end).values_list(
        "hour", "plan", "source", "requests", "stopped", "failed", "prompt_tokens", "completion_tokens", "compute_s",
        "ttft_hist", "itl_hist", "queue_hist")
    for hour, plan, source, *figures in rows.iterator(chunk_size=2000):
        slice_ = slices.get((plan, source))
        if slice_ is None:
            slice_ = slices[plan, source] = Figures(hourly_usd)
        slice_.add(*figures)
        hour = hour.astimezone(datetime.UTC)
        if hour in index:
            requests_per_hour.setdefault(plan, [0] * len(hours))[index[hour]] += figures[0]
        compute_s = figures[5]
        cost_by_day[hour.date()] = cost_by_day.get(hour.date(), 0.0) + compute_cost_usd(compute_s, hourly_usd)
    total = Figures(hourly_usd)
    by_plan = {plan: Figures(hourly_usd) for plan in PLANS}
    by_source = {source: Figures(hourly_usd) for source in SOURCES}
    for (plan, source), slice_ in slices.items():
        total.merge(slice_)
        by_plan.setdefault(plan, Figures(hourly_usd)).merge(slice_)
        by_source.setdefault(source, Figures(hourly_usd)).merge(slice_)
    _count_users(first_day, last_day, total, by_plan, by_source)
    days = max((min(end, now) - start).total_seconds() / 86400, 1 / 24)
    cost_per_day = []
    day = first_day
    while day <= last_day and day_start(day) < now:
        cost_per_day.append((day, cost_by_day.get(day, 0.0)))
        day += datetime.timedelta(days=1)
    return UsageReport(first_day, last_day, days, total, by_plan, by_source, hours, requests_per_hour, cost_per_day)


def _count_users(first_day, last_day, total, by_plan, by_source) -> None:
    """Active users: distinct users with at least one request in the range."""
    days = UsageDay.objects.filter(day__gte=first_day, day__lte=last_day)
    counts = days.aggregate(
        users=Count("user", distinct=True),
        **{f"plan_{plan}": Count("user", distinct=True, filter=Q(plan=plan)) for plan in by_plan},
        **{f"source_{source}": Count("user", distinct=True, filter=Q(source=source)) for source in by_source},
    )
    total.users = counts["users"]
    for plan, figures in by_plan.items():
        figures.users = counts[f"plan_{plan}"]
    for source, figures in by_source.items():
        figures.users = counts[f"source_{source}"]


SORTS = {
    "user": "user__username", "requests": "requests", "tokens": "tokens", "cost": "cost_s",
    "plan": "plan_code", "last": "last",
}


def user_table(*, first_day: datetime.date, last_day: datetime.date, query: str = "", sort: str = "-requests",
               page: int = 1, per_page: int = 50) -> tuple[list[dict], int]:
    """One page of the users active in the range, and how many there are in all. `plan` is
    Plus when any of their requests in the range were on Plus."""
    descending = sort.startswith("-")
    key = SORTS.get(sort.lstrip("-"), "requests")
    rows = UsageDay.objects.filter(day__gte=first_day, day__lte=last_day)
    if query:
        rows = rows.filter(Q(user__username__icontains=query) | Q(user__email__icontains=query))
    rows = rows.values("user_id", "user__username").annotate(
        tokens=Sum(F("prompt_tokens") + F("completion_tokens")), input_tokens=Sum("prompt_tokens"),
        output_tokens=Sum("completion_tokens"), requests=Sum("requests"), cost_s=Sum("compute_s"),
        plan_code=Max("plan"), last=Max("last_at"),
    )
    count = rows.count()
    ordered = rows.order_by(f"-{key}" if descending else key, "user_id")
    offset = (max(page, 1) - 1) * per_page
    return list(ordered[offset:offset + per_page]), count


def user_days(*, user_id: int, first_day: datetime.date, last_day: datetime.date) -> list[dict]:
    """One user's usage per day (every day of the range, zeros included)."""
    rows = {
        row["day"]: row
        for row in UsageDay.objects.filter(user_id=user_id, day__gte=first_day, day__lte=last_day)
        .values("day").annotate(requests=Sum("requests"), prompt_tokens=Sum("prompt_tokens"),
                                completion_tokens=Sum("completion_tokens"), compute_s=Sum("compute_s"))
    }
    days = []
    day = first_day
    while day <= last_day:
        days.append(rows.get(day, {"day": day, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                   "compute_s": 0.0}))
        day += datetime.timedelta(days=1)
    return days
