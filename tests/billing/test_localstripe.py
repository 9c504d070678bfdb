"""Against localstripe, a stateful fake of Stripe's API (PyPI), run on 127.0.0.1: our code
creates the customer there, the subscription lives there, and localstripe's own signed
webhooks reach our endpoint on a live server, which reads the subscription back from it.

localstripe has no Checkout or Billing Portal sessions; those two calls are answered by the
in-process FakeStripe, which forwards every other request to localstripe.
"""
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import stripe
from django.utils import timezone

from billing.models import StripeCustomer, StripeEvent, Subscription
from billing.plans import FREE, PLUS, plan_for_user
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.fake_stripe import FakeStripe
from tests.e2e.servers import ROOT, free_port

PRICE = "price_plus_monthly"


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("localstripe") / "localstripe.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "tests.billing.localstripe_server", str(port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("localstripe did not start")
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    sdk = stripe.StripeClient("sk_test_localstripe", base_addresses={"api": url})
    product = sdk.v1.products.create(params={"name": "chatsite Plus"})
    sdk.v1.plans.create(params={"id": PRICE, "product": product["id"], "amount": 2000, "currency": "usd", "interval": "month"})
    yield url, sdk
    process.terminate()
    process.wait(10)
    log.close()


@pytest.fixture
def billing_on_localstripe(settings, localstripe, live_server):
    url, sdk = localstripe
    fake = FakeStripe(forward_to=url)
    settings.STRIPE_SECRET_KEY = "sk_test_localstripe"
    settings.STRIPE_PRICE_PLUS = PRICE
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = url
    settings.STRIPE_HTTP_CLIENT = fake
    # localstripe signs what it sends to this URL with this secret.
    form = urllib.parse.urlencode({"url": live_server.url + "/stripe/webhook/", "secret": WEBHOOK_SECRET}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{url}/_config/webhooks/chatsite", data=form,
                                                  headers={"Authorization": "Bearer sk_test_localstripe"}), timeout=10)
    return sdk, fake


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.django_db(transaction=True)
def test_a_subscription_made_in_stripe_reaches_us_by_webhook_and_a_cancel_ends_it(
    billing_on_localstripe, client, make_user
):
    sdk, fake = billing_on_localstripe
    user = make_user(email="carol@example.com")
    client.force_login(user)

    # Upgrade: our code creates the customer in localstripe, and a Checkout session (stub).
    response = client.post("/account/billing/checkout/")
    assert response.status_code == 302 and "checkout.stripe.com" in response["Location"]
    customer_id = StripeCustomer.objects.get(user=user).stripe_id
    assert sdk.v1.customers.retrieve(customer_id)["metadata"]["user_id"] == str(user.pk)

    # The customer pays: what Checkout does, done in localstripe.
    sdk.v1.payment_methods.attach("pm_card_visa", params={"customer": customer_id})
    sdk.v1.customers.update(customer_id, params={"invoice_settings": {"default_payment_method": "pm_card_visa"}})
    created = sdk.v1.subscriptions.create(params={"customer": customer_id, "items": [{"plan": PRICE}]})
    assert created["status"] == "active"

    # localstripe's signed customer.subscription.created reaches the endpoint about 1 s later.
    assert wait_for(lambda: Subscription.objects.filter(stripe_id=created["id"]).exists())
    subscription = Subscription.objects.get(stripe_id=created["id"])
    assert (subscription.user, subscription.status, subscription.price_id) == (user, "active", PRICE)
    assert plan_for_user(user).code == PLUS
    assert fake.requests_to("GET", f"/v1/subscriptions/{created['id']}")  # read back from localstripe

    # Cancelled in Stripe: the deleted event arrives; Plus lasts to the end of the paid period.
    sdk.v1.subscriptions.cancel(created["id"])
    assert wait_for(lambda: Subscription.objects.get(stripe_id=created["id"]).status == "canceled")
    subscription.refresh_from_db()
    assert plan_for_user(user).code == PLUS
    assert plan_for_user(user, now=subscription.current_period_end + timezone.timedelta(seconds=1)).code == FREE
    types = set(StripeEvent.objects.values_list("type", flat=True))
    assert {"customer.subscription.created", "customer.subscription.deleted"} <= types
