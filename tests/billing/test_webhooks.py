"""The Stripe webhook: signatures, duplicates, out-of-order events, and the whole life of a
subscription — each event signed as Stripe signs it and posted to our endpoint, with the SDK
reading subscriptions from an in-process fake Stripe (tests/billing/fake_stripe.py)."""
import datetime
import time

import pytest
from django.utils import timezone

from billing.models import StripeCustomer, StripeEvent, Subscription
from billing.plans import FREE, PLUS, plan_for_user
from tests.billing.conftest import signed, stripe_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def customer(make_user):
    user = make_user()
    StripeCustomer.objects.create(user=user, stripe_id="cus_alice")
    return user


def subscription_event(fake, event_type="customer.subscription.created", sub_id="sub_1", **state):
    obj = fake.set_subscription(sub_id, customer="cus_alice", **state) if state else fake.subscriptions[sub_id]
    return stripe_event(event_type, dict(obj))


def test_a_signed_subscription_event_makes_the_customer_plus(fake_stripe, post_event, customer):
    response = post_event(subscription_event(fake_stripe, status="active"))
    assert response.status_code == 200 and response.json()["outcome"] == "processed"
    subscription = Subscription.objects.get(stripe_id="sub_1")
    assert (subscription.user, subscription.status, subscription.price_id) == (customer, "active", "price_plus")
    assert subscription.current_period_end > timezone.now()
    assert plan_for_user(customer).code == PLUS


@pytest.mark.parametrize("tamper", ["body", "secret", "expired", "future", "missing"])
def test_a_bad_or_stale_signature_is_refused_and_changes_nothing(fake_stripe, client, customer, tamper):
    event = subscription_event(fake_stripe, status="active")
    signing = {
        "secret": {"secret": "whsec_wrong"},
        "expired": {"timestamp": int(time.time()) - 301},
        "future": {"timestamp": int(time.time()) + 24 * 3600},
    }.get(tamper, {})
    body, header = signed(event, **signing)
    if tamper == "body":
        body = body.replace(b'"active"', b'"trialing"')
    headers = {} if tamper == "missing" else {"HTTP_STRIPE_SIGNATURE": header}
    response = client.post("/stripe/webhook/", body, content_type="application/json", **headers)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists() and not Subscription.objects.exists()
    assert fake_stripe.requests == []  # not even a read
    assert plan_for_user(customer).code == FREE


def test_a_duplicate_event_answers_200_and_changes_nothing(fake_stripe, post_event, customer):
    event = subscription_event(fake_stripe, status="active")
    assert post_event(event).json()["outcome"] == "processed"
    fake_stripe.set_subscription("sub_1", customer="cus_alice", status="canceled", period_end=int(time.time()) - 10)
    response = post_event(event)
    assert response.status_code == 200 and response.json()["outcome"] == "duplicate"
    assert Subscription.objects.get(stripe_id="sub_1").status == "active"
    assert len(fake_stripe.requests_to("GET", "/v1/subscriptions/sub_1")) == 1


def test_an_old_event_arriving_late_does_not_undo_a_newer_one(fake_stripe, post_event, customer):
    created = subscription_event(fake_stripe, status="active")
    ended = int(time.time()) - 5
    deleted = subscription_event(fake_stripe, "customer.subscription.deleted", status="canceled", period_end=ended)
    assert post_event(deleted).status_code == 200
    assert post_event(created).status_code == 200  # its payload still says "active"
    subscription = Subscription.objects.get(stripe_id="sub_1")
    assert subscription.status == "canceled"
    assert plan_for_user(customer).code == FREE


def test_unknown_event_types_answer_200_and_change_nothing(fake_stripe, post_event, customer):
    response = post_event(stripe_event("customer.tax_id.created", {"id": "txi_1", "customer": "cus_alice"}))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert fake_stripe.requests == [] and not Subscription.objects.exists()


def test_a_subscription_of_a_customer_we_do_not_know_is_ignored(fake_stripe, post_event, customer):
    fake_stripe.set_subscription("sub_other", customer="cus_stranger", status="active")
    response = post_event(stripe_event("customer.subscription.created", fake_stripe.subscriptions["sub_other"]))
    assert response.status_code == 200 and not Subscription.objects.exists()


def test_when_stripe_cannot_be_read_the_event_fails_and_a_retry_processes_it(fake_stripe, post_event, customer):
    event = subscription_event(fake_stripe, status="active")
    fake_stripe.fail_with = 500
    assert post_event(event).status_code == 500
    assert not StripeEvent.objects.exists()  # so Stripe's retry is not taken for a duplicate
    fake_stripe.fail_with = None
    assert post_event(event).json()["outcome"] == "processed"
    assert plan_for_user(customer).code == PLUS


def test_the_webhook_is_off_without_stripe_keys(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert client.post("/stripe/webhook/", b"{}", content_type="application/json").status_code == 404


def test_subscribe_plus_payment_failed_grace_cancel_free(fake_stripe, post_event, client, customer, settings):
    """The whole life: checkout → Plus → a renewal fails → Plus through the grace period →
    card fixed → cancel at period end → Plus until it ends → Free."""
    settings.BILLING_PAST_DUE_GRACE_S = 3 * 86400
    client.force_login(customer)
    now = timezone.now()
    day = datetime.timedelta(days=1)

    # Checkout: the user pays; Stripe sends checkout.session.completed.
    session_url = client.post("/account/billing/checkout/")["Location"]
    session_id = session_url.rsplit("/", 1)[1]
    session = fake_stripe.complete_checkout(session_id, "sub_life")
    assert post_event(stripe_event("checkout.session.completed", session)).status_code == 200
    assert plan_for_user(customer).code == PLUS

    # The renewal's payment fails: Stripe marks the subscription past_due and says so.
    fake_stripe.set_subscription("sub_life", customer="cus_alice", status="past_due")
    invoice = {"id": "in_1", "object": "invoice", "customer": "cus_alice",
               "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_life"}}}
    assert post_event(stripe_event("invoice.payment_failed", invoice)).status_code == 200
    subscription = Subscription.objects.get(stripe_id="sub_life")
    assert subscription.status == "past_due" and subscription.past_due_since is not None
    assert plan_for_user(customer, now=now + 2 * day).code == PLUS  # grace
    assert plan_for_user(customer, now=now + 4 * day).code == FREE  # grace over

    # A retry succeeds (older API versions name the field `subscription`).
    fake_stripe.set_subscription("sub_life", customer="cus_alice", status="active")
    old_shape_invoice = {"id": "in_2", "object": "invoice", "customer": "cus_alice", "subscription": "sub_life"}
    assert post_event(stripe_event("invoice.paid", old_shape_invoice)).status_code == 200
    assert Subscription.objects.get(stripe_id="sub_life").past_due_since is None
    assert plan_for_user(customer, now=now + 4 * day).code == PLUS

    # Cancel in the portal, at the period's end: still Plus until then.
    period_end = int((now + 10 * day).timestamp())
    updated = subscription_event(fake_stripe, "customer.subscription.updated", "sub_life", status="active",
                                 cancel_at_period_end=True, period_end=period_end)
    assert post_event(updated).status_code == 200
    assert plan_for_user(customer, now=now + 9 * day).code == PLUS

    # The period ends: Stripe deletes the subscription.
    deleted = subscription_event(fake_stripe, "customer.subscription.deleted", "sub_life", status="canceled",
                                 period_end=period_end)
    assert post_event(deleted).status_code == 200
    assert Subscription.objects.get(stripe_id="sub_life").status == "canceled"
    assert plan_for_user(customer, now=now + 9 * day).code == PLUS  # paid until period_end
    assert plan_for_user(customer, now=now + 11 * day).code == FREE


def test_a_signed_body_nested_too_deep_is_refused_not_a_server_error(fake_stripe, client):
    import stripe

    from tests.billing.conftest import WEBHOOK_SECRET

    payload = '{"id": "evt_deep", "type": "x", "data": ' + "[" * 5000 + "]" * 5000 + "}"
    header = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    response = client.post("/stripe/webhook/", payload.encode(), content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=header)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()
