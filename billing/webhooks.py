"""Stripe webhook events: verify, process each event id once, keep subscriptions true.

Handlers never trust the order of events or the state inside them: they find which
subscription an event is about and sync it from Stripe (`subscription_sync`).
"""
from __future__ import annotations

import datetime
import enum
import json
import logging
import time

import stripe
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from billing.models import StripeEvent
from billing.subscriptions import customer_link, subscription_sync

logger = logging.getLogger(__name__)


class BadEvent(Exception):
    """The request is not a genuine, fresh Stripe event; answer 400 and change nothing."""


class Outcome(enum.Enum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"  # this event id was processed before
    IGNORED = "ignored"  # a type we do not act on


def event_verify(*, payload: bytes, signature: str | None) -> dict:
    """The event, if `signature` is Stripe's for `payload` with STRIPE_WEBHOOK_SECRET and at
    most five minutes old (the SDK's tolerance, against replays)."""
    if not signature:
        raise BadEvent("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=stripe.Webhook.DEFAULT_TOLERANCE
        )
        event = json.loads(payload)
    # RecursionError: JSON nested too deep for Python's parser (only a signed body gets this far).
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadEvent(str(error)) from None
    # The SDK refuses a timestamp too far in the past, not one in the future: a signature
    # dated ahead would stay replayable until then.
    if _signed_at(signature) > time.time() + stripe.Webhook.DEFAULT_TOLERANCE:
        raise BadEvent("the signature's timestamp is in the future")
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise BadEvent("not a Stripe event")
    return event


def _signed_at(signature: str) -> int:
    """The `t=` of a Stripe-Signature header (verify_header has checked that it parses)."""
    for part in signature.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            return int(value)
    return 0


def event_process(*, event: dict) -> Outcome:
    """Act on a verified event once. A failure rolls everything back, the event included,
    so Stripe's retry runs it again."""
    handler = HANDLERS.get(event["type"])
    with transaction.atomic():
        try:
            with transaction.atomic():
                StripeEvent.objects.create(
                    id=event["id"],
                    type=event["type"],
                    created=datetime.datetime.fromtimestamp(int(event.get("created") or 0), tz=datetime.UTC),
                )
        except IntegrityError:
            return Outcome.DUPLICATE
        if handler is None:
            return Outcome.IGNORED
        handler(event["data"]["object"])
    return Outcome.PROCESSED


def _checkout_completed(session: dict) -> None:
    if session.get("mode") != "subscription" or not session.get("subscription"):
        return
    user = get_user_model().objects.filter(pk=_int(session.get("client_reference_id"))).first()
    if user is not None and session.get("customer"):
        customer_link(user=user, customer_id=session["customer"])
    subscription_sync(subscription_id=_id(session["subscription"]), customer_id=_id(session["customer"]))


def _subscription_changed(subscription: dict) -> None:
    subscription_sync(subscription_id=subscription["id"], customer_id=_id(subscription["customer"]))


def _invoice_settled(invoice: dict) -> None:
    """A renewal paid or failed: the subscription's status moved (active / past_due)."""
    # API 2025-03 and later: invoice.parent.subscription_details.subscription; before: invoice.subscription.
    details = ((invoice.get("parent") or {}).get("subscription_details") or {})
    subscription = details.get("subscription") or invoice.get("subscription")
    if subscription and invoice.get("customer"):
        subscription_sync(subscription_id=_id(subscription), customer_id=_id(invoice["customer"]))


HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.paid": _invoice_settled,
    "invoice.payment_succeeded": _invoice_settled,  # older API versions' name for invoice.paid
    "invoice.payment_failed": _invoice_settled,
}


def _id(value) -> str:
    """An expandable field: an id, or the object itself."""
    return value["id"] if isinstance(value, dict) else value


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
