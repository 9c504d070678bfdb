import json
import secrets
import time

import pytest
import stripe

from tests.billing.fake_stripe import FakeStripe

WEBHOOK_SECRET = "whsec_test_" + "s" * 24


@pytest.fixture
def fake_stripe(settings):
    """Billing switched on, with the SDK talking to an in-process fake Stripe."""
    fake = FakeStripe()
    settings.STRIPE_SECRET_KEY = "sk_test_fake"
    settings.STRIPE_PRICE_PLUS = "price_plus"
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_HTTP_CLIENT = fake
    return fake


def stripe_event(event_type: str, obj: dict, *, event_id: str | None = None, created: int | None = None) -> dict:
    return {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": event_type,
        "created": created or int(time.time()),
        "api_version": "2025-09-30.clover",
        "livemode": False,
        "data": {"object": obj},
    }


def signed(event: dict, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send for `event`."""
    payload = json.dumps(event)
    return payload.encode(), stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


@pytest.fixture
def post_event(client):
    def post(event: dict, **signing):
        body, header = signed(event, **signing)
        return client.post("/stripe/webhook/", body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)

    return post
