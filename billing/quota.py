"""Rolling-window message quotas, checked and counted atomically.

A plan allows `messages_per_window` messages in any BILLING_QUOTA_WINDOW_S seconds. Each
accepted message is one QuotaUse row; a message is refused while the window already holds
the limit, and the next one is allowed when the oldest use in the window leaves it.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from billing.locking import user_row_lock
from billing.models import QuotaUse
from billing.plans import Plan


@dataclass(frozen=True)
class QuotaStatus:
    plan: Plan
    limit: int
    used: int  # messages in the window now
    window_s: int
    next_free_at: datetime.datetime | None  # when the oldest counted message leaves the window
    now: datetime.datetime  # when this was read

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until one more message is allowed; 0 when one is allowed now."""
        if self.remaining or self.next_free_at is None:
            return 0
        return max(1, math.ceil((self.next_free_at - self.now).total_seconds()))

    def as_dict(self) -> dict:
        """For the chat page and the socket: what is left and when the window moves on."""
        return {
            "plan": self.plan.code,
            "plan_name": self.plan.name,
            "limit": self.limit,
            "remaining": self.remaining,
            "window_s": self.window_s,
            "resets_at": self.next_free_at.isoformat() if self.next_free_at else None,
        }


class QuotaExceeded(Exception):
    """The user's window is full; `status` says until when."""

    def __init__(self, status: QuotaStatus) -> None:
        self.status = status
        self.retry_after_s = status.retry_after_s
        plan = status.plan
        super().__init__(
            f"You have sent {status.limit} messages in the last {_duration(status.window_s)}, the {plan.name} "
            f"plan's limit. You can send again in {_duration(self.retry_after_s)}."
            + (" Plus raises the limit." if plan.code == "free" else "")
        )


def quota_status(*, user, plan: Plan, now: datetime.datetime | None = None) -> QuotaStatus:
    """The user's window as it stands: a read, no lock."""
    return _window(user=user, plan=plan, now=now or timezone.now())[0]


def _window(*, user, plan: Plan, now: datetime.datetime) -> tuple[QuotaStatus, bool]:
    """The user's window, and whether rows that have left it are still stored. One query
    while the user is below the limit (every accepted message asks), two at or over it."""
    window_s = settings.BILLING_QUOTA_WINDOW_S
    since = now - datetime.timedelta(seconds=window_s)
    in_window = Q(at__gt=since)
    found = QuotaUse.objects.filter(user=user).aggregate(
        used=Count("id", filter=in_window), oldest_in_window=Min("at", filter=in_window), oldest=Min("at")
    )
    used, limit = found["used"], plan.messages_per_window
    # Below the limit: when the oldest use leaves. At or over it (after a downgrade): when
    # enough of the oldest have left for one more message.
    next_free_at = None
    if used:
        nth_oldest = found["oldest_in_window"]
        if used >= limit:
            nth_oldest = (
                QuotaUse.objects.filter(user=user, at__gt=since).order_by("at").values_list("at", flat=True)[used - limit]
            )
        next_free_at = nth_oldest + datetime.timedelta(seconds=window_s)
    status = QuotaStatus(plan=plan, limit=limit, used=used, window_s=window_s, next_free_at=next_free_at, now=now)
    return status, found["oldest"] is not None and found["oldest"] <= since


def quota_consume(*, user, plan: Plan, now: datetime.datetime | None = None) -> QuotaStatus:
    """Count one message for `user` under `plan`, or raise QuotaExceeded and count nothing.

    Call inside the transaction that saves the message, so that a refused or failed send
    leaves no trace. It locks the user's row first: concurrent sends of one user are counted
    one after another, so no burst gets past the limit (SQLite's IMMEDIATE transactions
    serialise writers the same way). Two queries on SQLite, three elsewhere (the lock), and
    one more when uses that have left the window are still stored: this runs while SQLite's
    one write lock is held, so each query is a wait for every other writer."""
    counted, refused = quota_consume_many(user=user, plan=plan, count=1, now=now)
    if refused is not None:
        raise QuotaExceeded(refused)
    return counted[0]


def quota_consume_many(
    *, user, plan: Plan, count: int, now: datetime.datetime | None = None
) -> tuple[list[QuotaStatus], QuotaStatus | None]:
    """Count up to `count` messages of `user` at once (API calls admitted together), as
    many as the window has room for: the status after each one counted, in order, and for
    the rest, if any did not fit, the status that refuses them (QuotaExceeded's). The same
    queries as one message; call inside the transaction that saves the messages."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("quota_consume must run inside the transaction that saves the message")
    user_row_lock(user_id=user.pk)
    now = now or timezone.now()
    status, left_the_window = _window(user=user, plan=plan, now=now)
    taken = max(0, min(count, status.remaining))
    if taken and left_the_window:
        QuotaUse.objects.filter(user=user, at__lte=now - datetime.timedelta(seconds=status.window_s)).delete()
    if taken:
        QuotaUse.objects.bulk_create([QuotaUse(user=user, at=now) for _ in range(taken)])
    # One more in the window each; if it was empty, the first of them is the oldest.
    next_free_at = status.next_free_at or now + datetime.timedelta(seconds=status.window_s)
    counted = [dataclasses.replace(status, used=status.used + n, next_free_at=next_free_at) for n in range(1, taken + 1)]
    refused = None
    if taken < count:
        refused = counted[-1] if counted else status
    return counted, refused


def quota_refund(*, user, at: datetime.datetime) -> None:
    """Take back the use `quota_consume` counted at `at` (its status's `now`): the message it
    was for could not be sent after all and has been deleted."""
    use = QuotaUse.objects.filter(user=user, at=at).order_by("-id").first()
    if use is not None:
        use.delete()


def _duration(seconds: float) -> str:
    """3 hours, 1 hour 5 minutes, 12 minutes, 40 seconds."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    hours, minutes = divmod(round(seconds / 60), 60)
    parts = [f"{hours} hour{'s' if hours != 1 else ''}"] if hours else []
    if minutes:
        parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
    return " ".join(parts)
