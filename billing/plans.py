"""What a plan allows, and which plan governs a user now.

Limits come from settings.BILLING_PLANS. A user is on Plus while a Stripe subscription or a
staff grant says so (`plus_source`), otherwise on Free.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from billing.models import PlanGrant, Subscription
from billing.subscriptions import subscription_grants_plus

FREE = "free"
PLUS = "plus"


@dataclass(frozen=True)
class Plan:
    code: str
    name: str
    messages_per_window: int  # messages one user may send in any BILLING_QUOTA_WINDOW_S
    max_input_chars: int  # longest message a user may send
    max_output_tokens: int  # longest answer the model may write
    max_best_of: int  # most answers or candidates one request may ask for: API `n` and `best_of`
    max_messages_per_call: int  # most messages in one API call
    max_total_chars: int  # most characters in one API call's messages together
    max_prompt_tokens: int  # most prompt tokens of one API call once the chat template is applied
    priority: int  # engine priority; higher is admitted first
    queue: str  # Celery queue the generation goes to


def plan_get(code: str) -> Plan:
    """The plan `code` with today's settings; an unknown code (a plan since removed) is Free."""
    values = settings.BILLING_PLANS.get(code)
    if values is None:
        code, values = FREE, settings.BILLING_PLANS[FREE]
    return Plan(code=code, **values)


def plan_for_user(user, *, now: datetime.datetime | None = None) -> Plan:
    """The plan that governs `user` now."""
    return plan_get(PLUS if plus_source(user, now=now) else FREE)


def plus_source(user, *, now: datetime.datetime | None = None) -> str | None:
    """Why `user` is on Plus now — "subscription" or "grant" — or None when they are not."""
    now = now or timezone.now()
    for subscription in Subscription.objects.filter(user=user):
        if subscription_grants_plus(subscription, now=now, grace_s=settings.BILLING_PAST_DUE_GRACE_S):
            return "subscription"
    grant = PlanGrant.objects.filter(user=user).first()
    if grant is not None and grant.action == PlanGrant.Action.GRANT and (grant.expires_at is None or grant.expires_at > now):
        return "grant"
    return None
