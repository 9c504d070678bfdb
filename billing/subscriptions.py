"""Subscriptions: who is a Stripe customer, what Stripe says each subscription is now, and
whether it gives Plus.

Every event about a subscription is handled the same way: lock the subscriber's row, fetch
the subscription from Stripe, overwrite our copy. Events may arrive late, twice or out of
order; the state we store is always Stripe's latest, so an old event cannot undo a newer one.
"""
from __future__ import annotations

import datetime
import logging

from django.db import transaction
from django.utils import timezone

from billing.locking import user_row_lock
from billing.models import StripeCustomer, Subscription
from billing.stripe_client import as_dict, stripe_client

logger = logging.getLogger(__name__)


def subscription_grants_plus(subscription: Subscription, *, now: datetime.datetime, grace_s: float) -> bool:
    """Plus while active or trialing; while past_due for `grace_s` after we first saw it so
    (Stripe is retrying the card); after a cancel, until the paid period ends."""
    status = subscription.status
    if status in (Subscription.Status.ACTIVE, Subscription.Status.TRIALING):
        return True
    if status == Subscription.Status.PAST_DUE:
        since = subscription.past_due_since or now
        return now < since + datetime.timedelta(seconds=grace_s)
    if status == Subscription.Status.CANCELED:
        return subscription.current_period_end is not None and now < subscription.current_period_end
    return False


def customer_link(*, user, customer_id: str) -> None:
    """Remember that `customer_id` is `user`'s (a checkout may have made the customer)."""
    StripeCustomer.objects.get_or_create(user=user, defaults={"stripe_id": customer_id})


def subscription_sync(*, subscription_id: str, customer_id: str) -> Subscription | None:
    """Overwrite our copy of `subscription_id` with Stripe's current state. Returns None (and
    stores nothing) when the customer is not one of ours."""
    with transaction.atomic():
        customer = StripeCustomer.objects.filter(stripe_id=customer_id).select_related("user").first()
        if customer is None:
            logger.warning("Stripe subscription %s belongs to unknown customer %s; ignored", subscription_id, customer_id)
            return None
        # One writer per subscriber: two events handled at once fetch and write in turn.
        user_row_lock(user_id=customer.user_id)
        previous = Subscription.objects.filter(stripe_id=subscription_id).first()
        remote = as_dict(stripe_client().v1.subscriptions.retrieve(subscription_id))
        fields = subscription_fields(remote, previous=previous, now=timezone.now())
        if fields["customer_id"] != customer_id:
            logger.warning("Stripe subscription %s is not customer %s's; ignored", subscription_id, customer_id)
            return None
        subscription, _ = Subscription.objects.update_or_create(
            stripe_id=subscription_id, defaults={"user": customer.user, **fields}
        )
        return subscription


def subscription_fields(remote: dict, *, previous: Subscription | None, now: datetime.datetime) -> dict:
    """Our columns from a Stripe subscription object. Reads both API shapes: the period end
    and price on the items (API 2025-03 and later) or on the subscription with a `plan`
    (older versions, which accounts pinned to them and localstripe still send)."""
    items = (remote.get("items") or {}).get("data") or []
    item = items[0] if items else {}
    price = item.get("price") or item.get("plan") or remote.get("plan") or {}
    period_ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
    period_end = remote.get("current_period_end") or (max(period_ends) if period_ends else None)
    status = remote["status"]
    past_due_since = None
    if status == Subscription.Status.PAST_DUE:
        was_past_due = previous is not None and previous.status == Subscription.Status.PAST_DUE
        past_due_since = previous.past_due_since if was_past_due and previous.past_due_since else now
    customer = remote.get("customer")
    return {
        "customer_id": customer["id"] if isinstance(customer, dict) else customer,
        "status": status,
        "price_id": price.get("id", "") if isinstance(price, dict) else str(price),
        "current_period_end": _time(period_end),
        "cancel_at_period_end": bool(remote.get("cancel_at_period_end")),
        "canceled_at": _time(remote.get("canceled_at")),
        "ended_at": _time(remote.get("ended_at")),
        "past_due_since": past_due_since,
    }


def _time(unix: int | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(unix, tz=datetime.UTC) if unix else None
