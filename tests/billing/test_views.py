"""The plan page, Checkout and the Billing Portal (through the SDK to the fake Stripe), the
page without Stripe keys, and staff grants in the admin."""
import pytest

from billing.models import PlanGrant, StripeCustomer
from billing.plans import FREE, PLUS, plan_for_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(client, make_user):
    user = make_user(email="alice@example.com")
    client.force_login(user)
    return user


def test_without_stripe_keys_the_page_says_billing_is_off(client, member):
    page = client.get("/account/billing/").content.decode()
    assert "Billing is not configured on this server" in page and 'id="upgrade"' not in page
    response = client.post("/account/billing/checkout/", follow=True)
    assert "Billing is not configured on this server." in response.content.decode()


def test_the_page_shows_the_plan_and_what_is_left(client, member, settings):
    page = client.get("/account/billing/").content.decode()
    assert "Your plan: Free" in page and "20 of 20 messages left" in page


def test_checkout_creates_a_customer_and_a_subscription_session_for_the_plus_price(client, member, fake_stripe):
    response = client.post("/account/billing/checkout/")
    assert response.status_code == 302 and response["Location"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    customer = fake_stripe.requests_to("POST", "/v1/customers")[0].params
    assert customer["email"] == "alice@example.com" and customer["metadata[user_id]"] == str(member.pk)
    sent = fake_stripe.requests_to("POST", "/v1/checkout/sessions")[0].params
    assert sent["mode"] == "subscription"
    assert (sent["line_items[0][price]"], sent["line_items[0][quantity]"]) == ("price_plus", "1")
    assert sent["customer"] == StripeCustomer.objects.get(user=member).stripe_id
    assert sent["client_reference_id"] == str(member.pk)
    assert sent["success_url"] == "http://testserver/account/billing/success/?session_id={CHECKOUT_SESSION_ID}"
    assert sent["cancel_url"] == "http://testserver/account/billing/cancelled/"
    # A second checkout reuses the customer.
    client.post("/account/billing/checkout/")
    assert len(fake_stripe.requests_to("POST", "/v1/customers")) == 1


def test_the_success_page_applies_the_subscription_without_waiting_for_the_webhook(client, member, fake_stripe):
    session_id = client.post("/account/billing/checkout/")["Location"].rsplit("/", 1)[1]
    fake_stripe.complete_checkout(session_id, "sub_now")
    page = client.get(f"/account/billing/success/?session_id={session_id}").content.decode()
    assert "Plus is active on your account." in page
    assert plan_for_user(member).code == PLUS


def test_someone_elses_checkout_session_grants_nothing(client, member, make_user, fake_stripe):
    session_id = client.post("/account/billing/checkout/")["Location"].rsplit("/", 1)[1]
    fake_stripe.complete_checkout(session_id, "sub_theirs")
    client.force_login(make_user())
    client.get(f"/account/billing/success/?session_id={session_id}")
    assert plan_for_user(member).code == FREE  # not applied by someone else's visit either


def test_a_plus_subscriber_is_sent_to_the_portal_not_to_a_second_checkout(client, member, fake_stripe):
    session_id = client.post("/account/billing/checkout/")["Location"].rsplit("/", 1)[1]
    fake_stripe.complete_checkout(session_id, "sub_1")
    client.get(f"/account/billing/success/?session_id={session_id}")
    page = client.get("/account/billing/").content.decode()
    assert 'id="manage"' in page and 'id="upgrade"' not in page
    response = client.post("/account/billing/checkout/", follow=True)
    assert "You already have Plus" in response.content.decode()
    assert len(fake_stripe.requests_to("POST", "/v1/checkout/sessions")) == 1

    response = client.post("/account/billing/portal/")
    assert response["Location"].startswith("https://billing.stripe.com/p/session/")
    sent = fake_stripe.requests_to("POST", "/v1/billing_portal/sessions")[0].params
    assert sent == {"customer": StripeCustomer.objects.get(user=member).stripe_id,
                    "return_url": "http://testserver/account/billing/"}


def test_when_stripe_is_down_the_user_gets_a_message_not_a_traceback(client, member, fake_stripe):
    fake_stripe.fail_with = 500
    response = client.post("/account/billing/checkout/", follow=True)
    assert response.status_code == 200
    assert "We could not reach our payment provider" in response.content.decode()
    assert not StripeCustomer.objects.exists()


def test_the_portal_without_a_customer_explains(client, member, fake_stripe):
    response = client.post("/account/billing/portal/", follow=True)
    assert "You have no subscription to manage yet." in response.content.decode()


def test_the_cancel_page_says_nothing_was_charged(client, member):
    assert "Nothing was charged" in client.get("/account/billing/cancelled/").content.decode()


def test_staff_grant_and_revoke_plus_in_the_admin_with_a_reason(client, make_user):
    staff = make_user(is_staff=True, is_superuser=True)
    user = make_user()
    client.force_login(staff)
    response = client.post("/admin/billing/plangrant/add/", {"user": user.pk, "action": "grant", "reason": "conference speaker"})
    assert response.status_code == 302
    assert plan_for_user(user).code == PLUS
    grant = PlanGrant.objects.get()
    assert (grant.granted_by, grant.reason) == (staff, "conference speaker")
    # A reason is required; a grant cannot be edited or deleted afterwards.
    response = client.post("/admin/billing/plangrant/add/", {"user": user.pk, "action": "revoke", "reason": ""})
    assert response.status_code == 200 and PlanGrant.objects.count() == 1
    assert client.post(f"/admin/billing/plangrant/{grant.pk}/change/", {"user": user.pk, "action": "revoke",
                                                                         "reason": "x"}).status_code == 403
    assert client.post(f"/admin/billing/plangrant/{grant.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post("/admin/billing/plangrant/add/", {"user": user.pk, "action": "revoke", "reason": "talk cancelled"})
    assert plan_for_user(user).code == FREE
