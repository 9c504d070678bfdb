"""The one place that talks to Stripe, through the official SDK."""
from __future__ import annotations

import stripe
from django.conf import settings


def billing_enabled() -> bool:
    """Stripe keys are set (settings insist on the price and webhook secret with them)."""
    return bool(settings.STRIPE_SECRET_KEY)


def stripe_client() -> stripe.StripeClient:
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        http_client=settings.STRIPE_HTTP_CLIENT,
        max_network_retries=2,  # the SDK sends idempotency keys, so retried POSTs are safe
    )


def as_dict(value) -> dict:
    """A StripeObject (stripe ≥ 16 is no dict) or a parsed payload, as plain dicts and lists."""
    return value.to_dict() if isinstance(value, stripe.StripeObject) else dict(value)
