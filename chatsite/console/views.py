"""/console/: what was used, what it cost, whether Plus pays for Free, and what a ChatGPT's
volume would cost on this stack. Staff only; every figure comes from the roll-ups."""
from __future__ import annotations

import csv
import datetime
import functools
import math

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing.costs import (
    CHATGPT_REQUESTS_PER_DAY,
    CHATGPT_USD_PER_DAY,
    CHATGPT_USD_PER_QUERY,
    Margin,
    Projection,
    compute_cost_usd,
)
from billing.revenue import paying_subscribers, plus_price_usd
from billing.rollup import usage_roll_up, usage_rolled_up_to
from billing.usage_report import PLANS, SORTS, SOURCES, usage_report, user_days, user_table
from chatsite.console.charts import stacked_bars
from chatsite.console.stats import RangeError, day_range, live_status
from chatsite.console.stats import conversation_counts as user_conversation_counts

PER_PAGE = 50
# What the projection assumes where this deployment has measured nothing yet.
FALLBACK_OUTPUT_TOKENS = 300
FALLBACK_TOKENS_PER_S = 1000


def staff_only(view):
    @functools.wraps(view)
    @login_required
    def wrapped(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("The console is for staff.")
        return view(request, *args, **kwargs)

    return wrapped


def _range_or_error(request):
    today = timezone.now().astimezone(datetime.UTC).date()
    try:
        return day_range(request.GET, today=today), None
    except RangeError as error:
        return day_range({}, today=today), str(error)


def _number(params, name: str, default: float, *, low: float, high: float) -> tuple[float, str | None]:
    text = params.get(name, "")
    if text == "":
        return default, None
    try:
        value = float(text)
    except ValueError:
        return default, f"{name}: {text!r} is not a number."
    if not (math.isfinite(value) and low <= value <= high):
        return default, f"{name}: {text} is outside {low:g}…{high:g}."
    return value, None


@require_GET
@staff_only
def overview(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    day_range_, error = _range_or_error(request)
    hourly_usd = settings.COMPUTE_HOURLY_COST_USD
    report = usage_report(first_day=day_range_.first_day, last_day=day_range_.last_day, hourly_usd=hourly_usd, now=now)
    price, price_source = plus_price_usd()
    margin = Margin(
        subscribers=paying_subscribers(now=now), price_usd=price,
        free_cost_per_day_usd=report.cost_per_day_usd(report.by_plan["free"]),
        plus_cost_per_day_usd=report.cost_per_day_usd(report.by_plan["plus"]),
    )
    measured_tokens = report.total.output_tokens_per_request
    measured_speed = report.total.tokens_per_busy_s
    errors = [error] if error else []
    values = {}
    for name, default, low, high in (
        ("requests", CHATGPT_REQUESTS_PER_DAY, 1, 1e13),
        ("tokens", measured_tokens or FALLBACK_OUTPUT_TOKENS, 0.1, 1e6),
        ("speed", measured_speed or FALLBACK_TOKENS_PER_S, 0.001, 1e9),
        ("hourly", hourly_usd, 0, 1e6),
    ):
        values[name], problem = _number(request.GET, name, default, low=low, high=high)
        if problem:
            errors.append(problem)
    projection = Projection(requests_per_day=values["requests"], output_tokens_per_request=values["tokens"],
                            tokens_per_s_per_worker=values["speed"], hourly_usd=values["hourly"])
    hour_format = "%H:00" if day_range_.key == "today" else "%d %b %H:00"
    context = {
        "range": day_range_, "errors": errors, "report": report, "hourly_usd": hourly_usd,
        "plans": [(plan, report.by_plan[plan]) for plan in PLANS],
        "sources": [(source, report.by_source[source]) for source in SOURCES],
        "requests_chart": stacked_bars(
            labels=[hour.strftime(hour_format) for hour in report.hours],
            series={plan: report.requests_per_hour[plan] for plan in PLANS},
            title="Requests per hour, by plan", unit="req/h",
        ),
        "cost_chart": stacked_bars(
            labels=[day.strftime("%d %b") for day, _ in report.cost_per_day],
            series={"cost": [round(cost, 6) for _, cost in report.cost_per_day]},
            title="Compute cost per day", unit="USD",
        ),
        "margin": margin, "price_source": price_source,
        "projection": projection, "measured_tokens": measured_tokens, "measured_speed": measured_speed,
        "chatgpt_usd_per_day": CHATGPT_USD_PER_DAY, "chatgpt_usd_per_query": CHATGPT_USD_PER_QUERY,
        "cost_per_day": report.cost_per_day_usd(report.total), "interval_s": settings.USAGE_ROLLUP_INTERVAL_S,
        "live": live_status(now=now), "rolled_up_to": usage_rolled_up_to(), "now": now,
    }
    return render(request, "console/overview.html", context, status=400 if errors else 200)


@require_POST
@staff_only
def roll_up(request: HttpRequest) -> HttpResponse:
    """Roll today up now instead of at the next interval."""
    usage_roll_up()
    return redirect(request.POST.get("next") or "console")


def _user_rows(request, day_range_):
    sort = request.GET.get("sort", "-requests")
    if sort.lstrip("-") not in SORTS:
        sort = "-requests"
    try:
        page = max(int(request.GET.get("page", "1")), 1)
    except ValueError:
        page = 1
    query = request.GET.get("q", "").strip()[:100]
    rows, total = user_table(first_day=day_range_.first_day, last_day=day_range_.last_day, query=query, sort=sort,
                             page=page, per_page=PER_PAGE)
    for row in rows:
        row["cost_usd"] = compute_cost_usd(row["cost_s"], settings.COMPUTE_HOURLY_COST_USD)
    return rows, total, sort, page, query


USER_COLUMNS = [("user", "User"), ("plan", "Plan"), ("requests", "Requests"), ("tokens", "Tokens"),
                ("cost", "Cost"), ("last", "Last active")]


@require_GET
@staff_only
def users(request: HttpRequest) -> HttpResponse:
    day_range_, error = _range_or_error(request)
    rows, total, sort, page, query = _user_rows(request, day_range_)
    if request.GET.get("format") == "csv":
        return _users_csv(rows, day_range_, page)
    pages = max(math.ceil(total / PER_PAGE), 1)
    columns = [(key, label, key if sort != key else f"-{key}", sort.lstrip("-") == key) for key, label in USER_COLUMNS]
    context = {"range": day_range_, "errors": [error] if error else [], "rows": rows, "total": total, "sort": sort,
               "page": page, "pages": pages, "query": query, "columns": columns}
    return render(request, "console/users.html", context, status=400 if error else 200)


def _users_csv(rows, day_range_, page) -> HttpResponse:
    """Exactly the rows and columns the table shows (this page, this sort, this search)."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="users-{day_range_.first_day}-{day_range_.last_day}-page-{page}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(["user", "plan", "requests", "tokens", "cost_usd", "last_active_utc"])
    for row in rows:
        writer.writerow([_csv_text(row["user__username"]), row["plan_code"], row["requests"], row["tokens"],
                         f"{row['cost_usd']:.6f}",
                         row["last"].astimezone(datetime.UTC).isoformat(timespec="seconds")])
    return response


def _csv_text(text: str) -> str:
    """A user name cannot become a spreadsheet formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@require_GET
@staff_only
def user_detail(request: HttpRequest, user_id: int) -> HttpResponse:
    person = get_object_or_404(get_user_model(), id=user_id)
    today = timezone.now().astimezone(datetime.UTC).date()
    days = user_days(user_id=person.id, first_day=today - datetime.timedelta(days=89), last_day=today)
    hourly_usd = settings.COMPUTE_HOURLY_COST_USD
    totals = {
        "requests": sum(day["requests"] for day in days),
        "prompt_tokens": sum(day["prompt_tokens"] for day in days),
        "completion_tokens": sum(day["completion_tokens"] for day in days),
        "cost_usd": compute_cost_usd(sum(day["compute_s"] for day in days), hourly_usd),
    }
    chart = stacked_bars(labels=[day["day"].strftime("%d %b") for day in days],
                         series={"requests": [day["requests"] for day in days]},
                         title=f"Requests per day by {person.username}, last 90 days", unit="req/day")
    context = {"person": person, "totals": totals, "chart": chart, "counts": user_conversation_counts(user_id=person.id),
               "first_day": days[0]["day"], "last_day": today}
    return render(request, "console/user.html", context)
