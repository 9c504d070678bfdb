"""Plus revenue for the console: monthly recurring revenue from the subscriptions that pay."""
from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.core.cache import cache

from billing.models import Subscription
from billing.stripe_client import as_dict, billing_enabled, stripe_client
from billing.subscriptions import subscription_grants_plus

logger = logging.getLogger(__name__)

PRICE_CACHE_S = 3600


def paying_subscribers(*, now: datetime.datetime) -> int:
    """Users whose subscription gives Plus and is paid for: not trialing, not cancelled."""
    paying = set()
    candidates = Subscription.objects.filter(
        status__in=[Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE]
    ).only("user_id", "status", "past_due_since", "current_period_end")
    for subscription in candidates:
        if subscription_grants_plus(subscription, now=now, grace_s=settings.BILLING_PAST_DUE_GRACE_S):
            paying.add(subscription.user_id)
    return len(paying)


def plus_price_usd() -> tuple[float, str]:
    """Plus's monthly price and where it came from: Stripe's price object when billing is on
    (read once an hour), else the PLUS_PRICE_USD setting."""
    if not billing_enabled():
        return settings.PLUS_PRICE_USD, "PLUS_PRICE_USD"
    cached = cache.get("chatsite:plus-price")
    if cached is not None:
        return cached, "Stripe price"
    try:
        price = as_dict(stripe_client().v1.prices.retrieve(settings.STRIPE_PRICE_PLUS))
        amount = price["unit_amount"] / 100
        interval = (price.get("recurring") or {}).get("interval", "month")
        monthly = {"year": amount / 12, "week": amount * 52 / 12, "day": amount * 365 / 12}.get(interval, amount)
    except Exception as error:
        logger.warning("could not read the Plus price from Stripe: %r", error)
        return settings.PLUS_PRICE_USD, "PLUS_PRICE_USD (Stripe unreachable)"
    cache.set("chatsite:plus-price", monthly, PRICE_CACHE_S)
    return monthly, "Stripe price"
