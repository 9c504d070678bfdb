"""Plus revenue for the console: who pays, and at what monthly price."""
import datetime

import pytest
from django.utils import timezone

from billing.models import Subscription
from billing.revenue import paying_subscribers, plus_price_usd

pytestmark = pytest.mark.django_db


def test_paying_subscribers_are_active_or_within_the_grace_of_a_failed_renewal(make_user, settings):
    settings.BILLING_PAST_DUE_GRACE_S = 7 * 86400
    now = timezone.now()
    cases = {"active": {}, "trialing": {}, "canceled": {"current_period_end": now + datetime.timedelta(days=3)},
             "past_due": {"past_due_since": now - datetime.timedelta(days=1)}}
    for index, (status, fields) in enumerate(cases.items()):
        Subscription.objects.create(user=make_user(), stripe_id=f"sub_{index}", customer_id=f"cus_{index}",
                                    status=status, **fields)
    lapsed = make_user()
    Subscription.objects.create(user=lapsed, stripe_id="sub_lapsed", customer_id="cus_lapsed", status="past_due",
                                past_due_since=now - datetime.timedelta(days=8))
    twice = make_user()  # two active subscriptions pay once as far as Plus is concerned
    for suffix in "ab":
        Subscription.objects.create(user=twice, stripe_id=f"sub_twice_{suffix}", customer_id="cus_t", status="active")
    assert paying_subscribers(now=now) == 3  # active, past due within grace, the user with two


def test_without_stripe_the_price_is_the_setting(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.PLUS_PRICE_USD = 25
    assert plus_price_usd() == (25, "PLUS_PRICE_USD")


def test_with_stripe_the_price_objects_amount_a_month_read_once(fake_stripe):
    assert plus_price_usd() == (20.0, "Stripe price")
    assert plus_price_usd() == (20.0, "Stripe price")
    assert len(fake_stripe.requests_to("GET", "/v1/prices/price_plus")) == 1


def test_a_yearly_price_is_shown_a_month(fake_stripe):
    fake_stripe.prices["price_plus"].update(unit_amount=24000, recurring={"interval": "year", "interval_count": 1})
    assert plus_price_usd() == (20.0, "Stripe price")


def test_stripe_down_falls_back_to_the_setting_and_says_so(fake_stripe, settings):
    settings.PLUS_PRICE_USD = 20
    fake_stripe.fail_with = 500
    price, source = plus_price_usd()
    assert price == 20 and "unreachable" in source
