"""Upgrading and managing Plus: Stripe Checkout and the Billing Portal."""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from billing.locking import user_row_lock
from billing.models import StripeCustomer, Subscription
from billing.plans import PLUS, plus_source
from billing.stripe_client import as_dict, stripe_client
from billing.subscriptions import customer_link, subscription_sync

logger = logging.getLogger(__name__)


class CheckoutRefused(Exception):
    """The user cannot start this checkout; the message says why."""


def customer_ensure(*, user) -> str:
    """The user's Stripe customer id, creating the customer on first use. Our own customer
    (not one Checkout makes) ties every later subscription event to the user."""
    with transaction.atomic():
        user_row_lock(user_id=user.pk)
        existing = StripeCustomer.objects.filter(user=user).first()
        if existing is not None:
            return existing.stripe_id
        params = {"name": user.get_username(), "metadata": {"user_id": str(user.pk)}}
        if user.email:
            params["email"] = user.email
        customer = stripe_client().v1.customers.create(params=params)
        StripeCustomer.objects.create(user=user, stripe_id=customer["id"])
        return customer["id"]


def checkout_session_create(*, user, success_url: str, cancel_url: str) -> str:
    """A Checkout Session subscribing `user` to STRIPE_PRICE_PLUS; returns its URL.
    `success_url` may hold {CHECKOUT_SESSION_ID}, which Stripe fills in."""
    if plus_source(user) == "subscription":
        raise CheckoutRefused("You already have Plus. Manage your subscription from the billing page.")
    session = stripe_client().v1.checkout.sessions.create(params={
        "mode": "subscription",
        "customer": customer_ensure(user=user),
        "client_reference_id": str(user.pk),
        "line_items": [{"price": settings.STRIPE_PRICE_PLUS, "quantity": 1}],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "subscription_data": {"metadata": {"user_id": str(user.pk), "plan": PLUS}},
    })
    return session["url"]


def checkout_session_complete(*, user, session_id: str) -> Subscription | None:
    """Apply a finished checkout at once, when the user lands on the success page, instead of
    waiting for the webhook (which does the same, so whichever comes second changes nothing)."""
    session = as_dict(stripe_client().v1.checkout.sessions.retrieve(session_id))
    if session.get("client_reference_id") != str(user.pk) or not session.get("subscription"):
        return None
    customer_link(user=user, customer_id=session["customer"])
    subscription = session["subscription"]
    subscription_id = subscription["id"] if isinstance(subscription, dict) else subscription
    return subscription_sync(subscription_id=subscription_id, customer_id=session["customer"])


def portal_session_create(*, user, return_url: str) -> str:
    """A Billing Portal session where the user changes card or cancels; returns its URL."""
    customer = StripeCustomer.objects.filter(user=user).first()
    if customer is None:
        raise CheckoutRefused("You have no subscription to manage yet.")
    session = stripe_client().v1.billing_portal.sessions.create(
        params={"customer": customer.stripe_id, "return_url": return_url}
    )
    return session["url"]
