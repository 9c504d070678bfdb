"""Account pages: the plan and its upgrade (Stripe Checkout, Billing Portal), API keys, and
Stripe's webhook."""
import logging

import stripe
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from billing.api_keys import ApiKeyError, api_key_create, api_key_list, api_key_revoke
from billing.checkout import CheckoutRefused, checkout_session_complete, checkout_session_create, portal_session_create
from billing.models import StripeCustomer, Subscription
from billing.plans import FREE, PLUS, plan_for_user, plan_get, plus_source
from billing.quota import quota_status
from billing.stripe_client import billing_enabled
from billing.webhooks import BadEvent, event_process, event_verify

logger = logging.getLogger(__name__)


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    new_key = None
    if request.method == "POST":
        try:
            _, new_key = api_key_create(user=request.user, name=request.POST.get("name", ""))
        except ApiKeyError as error:
            messages.error(request, str(error))
    return render(
        request,
        "billing/api_keys.html",
        {
            "keys": api_key_list(user=request.user),
            "new_key": new_key,
            "plan": plan_for_user(request.user),
            "model_name": settings.CHAT_MODEL_NAME,
        },
    )


@login_required
@require_POST
def api_key_revoke_view(request: HttpRequest, key_id: int) -> HttpResponse:
    if api_key_revoke(user=request.user, key_id=key_id):
        messages.success(request, "The key is revoked; requests using it now get 401.")
    else:
        messages.error(request, "No such active key.")
    return redirect("api-keys")


def _billing_page(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("billing"))


@login_required
@require_http_methods(["GET"])
def billing(request: HttpRequest) -> HttpResponse:
    """The plan page: what the user has, what is left, and the way to Plus or to manage it."""
    plan = plan_for_user(request.user)
    return render(
        request,
        "billing/billing.html",
        {
            "plan": plan,
            "plus": plan_get(PLUS),
            "free": plan_get(FREE),
            "source": plus_source(request.user),
            "quota": quota_status(user=request.user, plan=plan),
            "subscription": Subscription.objects.filter(user=request.user).first(),
            "has_customer": StripeCustomer.objects.filter(user=request.user).exists(),
            "billing_enabled": billing_enabled(),
            "price_label": settings.PLUS_PRICE_LABEL,
            "window_hours": settings.BILLING_QUOTA_WINDOW_S / 3600,
        },
    )


@login_required
@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    # Built as an absolute URL first: Stripe fills in {CHECKOUT_SESSION_ID} only if the
    # braces reach it unescaped.
    success_url = request.build_absolute_uri(reverse("billing-success")) + "?session_id={CHECKOUT_SESSION_ID}"
    cancel_url = request.build_absolute_uri(reverse("billing-cancelled"))
    return _to_stripe(
        request,
        lambda: checkout_session_create(user=request.user, success_url=success_url, cancel_url=cancel_url),
        "We could not reach our payment provider. Nothing was charged; please try again.",
    )


@login_required
@require_POST
def portal(request: HttpRequest) -> HttpResponse:
    return _to_stripe(
        request,
        lambda: portal_session_create(user=request.user, return_url=_billing_page(request)),
        "We could not reach our payment provider; please try again.",
    )


def _to_stripe(request: HttpRequest, create_session, unreachable: str) -> HttpResponse:
    """Redirect to the Stripe page `create_session` returns, or back to the plan page with a
    message saying why not."""
    if not billing_enabled():
        messages.error(request, "Billing is not configured on this server.")
        return redirect("billing")
    try:
        url = create_session()
    except CheckoutRefused as refused:
        messages.error(request, str(refused))
        return redirect("billing")
    except stripe.StripeError:
        logger.exception("creating a Stripe session failed")
        messages.error(request, unreachable)
        return redirect("billing")
    return redirect(url, permanent=False)


@login_required
@require_http_methods(["GET"])
def success(request: HttpRequest) -> HttpResponse:
    """Where Checkout returns after payment. The subscription is applied now if Stripe already
    has it; otherwise the webhook brings it moments later."""
    session_id = request.GET.get("session_id", "")
    if billing_enabled() and session_id.startswith("cs_"):
        try:
            checkout_session_complete(user=request.user, session_id=session_id)
        except stripe.StripeError:
            logger.exception("reading Checkout session %s failed; the webhook will apply it", session_id)
    source = plus_source(request.user)
    return render(request, "billing/success.html", {"active": source is not None})


@login_required
@require_http_methods(["GET"])
def cancelled(request: HttpRequest) -> HttpResponse:
    return render(request, "billing/cancelled.html")


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe's events. 400: not signed by Stripe with our secret, or too old — nothing changes.
    200: processed, a duplicate, or a type we ignore. 500: we failed; Stripe retries."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        return JsonResponse({"error": "Billing is not configured on this server."}, status=404)
    try:
        event = event_verify(payload=request.body, signature=request.headers.get("Stripe-Signature"))
    except BadEvent as error:
        logger.warning("Stripe webhook refused: %s", error)
        return JsonResponse({"error": "Invalid signature."}, status=400)
    try:
        outcome = event_process(event=event)
    except Exception:
        logger.exception("Stripe event %s (%s) failed; Stripe will retry it", event["id"], event["type"])
        return JsonResponse({"error": "The event could not be processed."}, status=500)
    return JsonResponse({"received": True, "outcome": outcome.value})
