"""Which plan a user is on: subscriptions by status, staff grants, limits from settings."""
import datetime

import pytest
from django.utils import timezone

from billing.models import PlanGrant, Subscription
from billing.plans import FREE, PLUS, plan_for_user, plan_get, plus_source

pytestmark = pytest.mark.django_db

NOW = timezone.now()
DAY = datetime.timedelta(days=1)


def subscribe(user, status, **fields):
    return Subscription.objects.create(
        user=user, stripe_id=f"sub_{user.pk}_{status}", customer_id="cus_x", status=status,
        current_period_end=fields.pop("current_period_end", NOW + 20 * DAY), **fields,
    )


def test_limits_come_from_settings(settings):
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "messages_per_window": 3}}
    assert plan_get(FREE).messages_per_window == 3
    assert plan_get(PLUS).messages_per_window == 200


def test_the_defaults_are_the_advertised_plans():
    free, plus = plan_get(FREE), plan_get(PLUS)
    assert (free.messages_per_window, free.max_input_chars, free.max_output_tokens, free.max_best_of) == (20, 4000, 512, 1)
    assert (plus.messages_per_window, plus.max_output_tokens, plus.max_best_of) == (200, 2048, 4)
    assert plus.priority > free.priority and (free.queue, plus.queue) == ("free", "plus")


def test_an_unknown_plan_code_falls_back_to_free():
    assert plan_get("gold").code == FREE


def test_a_user_without_subscription_or_grant_is_free(make_user):
    assert plan_for_user(make_user()).code == FREE


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_active_and_trialing_subscriptions_give_plus(make_user, status):
    user = make_user()
    subscribe(user, status)
    assert plan_for_user(user, now=NOW).code == PLUS and plus_source(user, now=NOW) == "subscription"


@pytest.mark.parametrize("status", ["incomplete", "incomplete_expired", "unpaid", "paused"])
def test_unpaid_subscriptions_do_not(make_user, status):
    user = make_user()
    subscribe(user, status)
    assert plan_for_user(user, now=NOW).code == FREE


def test_past_due_keeps_plus_for_the_grace_period_only(make_user, settings):
    settings.BILLING_PAST_DUE_GRACE_S = 3 * 86400
    user = make_user()
    subscribe(user, "past_due", past_due_since=NOW)
    assert plan_for_user(user, now=NOW + 2 * DAY).code == PLUS
    assert plan_for_user(user, now=NOW + 3 * DAY + datetime.timedelta(seconds=1)).code == FREE


def test_a_cancelled_subscription_keeps_plus_until_the_paid_period_ends(make_user):
    user = make_user()
    subscribe(user, "canceled", current_period_end=NOW + 5 * DAY, canceled_at=NOW)
    assert plan_for_user(user, now=NOW + 4 * DAY).code == PLUS
    assert plan_for_user(user, now=NOW + 5 * DAY).code == FREE


def test_a_staff_grant_gives_plus_until_revoked_or_expired(make_user):
    user, staff = make_user(), make_user(is_staff=True)
    PlanGrant.objects.create(user=user, reason="beta tester", granted_by=staff)
    assert plus_source(user) == "grant"
    PlanGrant.objects.create(user=user, action=PlanGrant.Action.REVOKE, reason="beta over", granted_by=staff)
    assert plan_for_user(user).code == FREE
    PlanGrant.objects.create(user=user, reason="one week", expires_at=NOW + 7 * DAY, granted_by=staff)
    assert plan_for_user(user, now=NOW + 6 * DAY).code == PLUS
    assert plan_for_user(user, now=NOW + 8 * DAY).code == FREE
