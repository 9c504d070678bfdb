"""A fake Stripe for the official SDK: a `stripe.HTTPClient` that answers in-process.

Stripe's real API cannot be reached from tests, and localstripe lacks Checkout and Billing
Portal sessions. This client answers those two (and, unless `forward_to` names a localstripe,
customers and subscriptions, from state the test sets) with objects of the real API's shape,
and records every request, so a test can assert what the SDK sent.
"""
from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import stripe


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, str]  # form fields as the SDK encoded them: "line_items[0][price]" → "price_plus"


class FakeStripe(stripe.HTTPClient):
    name = "fake"

    def __init__(self, forward_to: str | None = None) -> None:
        super().__init__()
        self.forward_to = forward_to
        self.requests: list[Recorded] = []
        self.customers: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.checkout_sessions: dict[str, dict] = {}
        self.fail_with: int | None = None  # answer every request with this status (Stripe down)
        self.prices: dict[str, dict] = {"price_plus": {
            "id": "price_plus", "object": "price", "currency": "usd", "unit_amount": 2000, "type": "recurring",
            "recurring": {"interval": "month", "interval_count": 1}, "active": True, "livemode": False,
        }}

    # What the SDK calls.
    def request(self, method, url, headers, post_data=None, *, _usage=None):
        parsed = urllib.parse.urlsplit(url)
        query = parsed.query if method == "get" else (post_data.decode() if isinstance(post_data, bytes) else post_data or "")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        self.requests.append(Recorded(method.upper(), parsed.path, params))
        if self.fail_with:
            return self._error(self.fail_with, "api_error", "Stripe is down (fake)")
        route = self._route(method.upper(), parsed.path.rstrip("/").split("/")[1:], params)
        if route is not None:
            status, body = route
            return json.dumps(body), status, {"request-id": "req_fake"}
        if self.forward_to:
            return self._forward(method, parsed, headers, post_data)
        return self._error(404, "invalid_request_error", f"Unrecognized request URL ({method.upper()}: {parsed.path})")

    def close(self):
        pass

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # The state a test sets, in the current API's shape.
    def set_subscription(self, subscription_id: str, *, customer: str, status: str, period_end: int | None = None,
                         cancel_at_period_end: bool = False, price: str = "price_plus") -> dict:
        period_end = period_end or int(time.time()) + 30 * 86400
        self.subscriptions[subscription_id] = {
            "id": subscription_id,
            "object": "subscription",
            "customer": customer,
            "status": status,
            "cancel_at_period_end": cancel_at_period_end,
            "canceled_at": int(time.time()) if status == "canceled" or cancel_at_period_end else None,
            "ended_at": int(time.time()) if status == "canceled" else None,
            "created": int(time.time()) - 60,
            "livemode": False,
            "metadata": {},
            "items": {
                "object": "list",
                "data": [{
                    "id": "si_" + subscription_id[4:],
                    "object": "subscription_item",
                    "current_period_start": period_end - 30 * 86400,
                    "current_period_end": period_end,
                    "price": {"id": price, "object": "price", "recurring": {"interval": "month"}, "unit_amount": 2000},
                    "quantity": 1,
                }],
                "has_more": False,
            },
        }
        return self.subscriptions[subscription_id]

    def complete_checkout(self, session_id: str, subscription_id: str) -> dict:
        """What Stripe does when the customer pays: the session completes with a subscription."""
        session = self.checkout_sessions[session_id]
        self.set_subscription(subscription_id, customer=session["customer"], status="active")
        session.update(status="complete", payment_status="paid", subscription=subscription_id)
        return session

    def _route(self, method: str, parts: list[str], params: dict) -> tuple[int, dict] | None:
        if parts[:3] == ["v1", "checkout", "sessions"]:
            if method == "POST" and len(parts) == 3:
                return 200, self._checkout_session(params)
            if method == "GET" and len(parts) == 4:
                session = self.checkout_sessions.get(parts[3])
                return (200, session) if session else self._missing("checkout.session", parts[3])
        if parts == ["v1", "billing_portal", "sessions"] and method == "POST":
            return 200, {
                "id": "bps_" + secrets.token_hex(8), "object": "billing_portal.session",
                "url": "https://billing.stripe.com/p/session/test_" + secrets.token_hex(8),
                "customer": params["customer"], "return_url": params.get("return_url"),
                "created": int(time.time()), "livemode": False, "configuration": "bpc_fake", "flow": None,
                "locale": None, "on_behalf_of": None,
            }
        if self.forward_to:
            return None
        if parts == ["v1", "customers"] and method == "POST":
            customer = {"id": "cus_" + secrets.token_hex(7), "object": "customer", "email": params.get("email"),
                        "name": params.get("name"), "metadata": {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")},
                        "created": int(time.time()), "livemode": False}
            self.customers[customer["id"]] = customer
            return 200, customer
        if parts[:2] == ["v1", "prices"] and method == "GET" and len(parts) == 3:
            price = self.prices.get(parts[2])
            return (200, price) if price else self._missing("price", parts[2])
        if parts[:2] == ["v1", "subscriptions"] and method == "GET" and len(parts) == 3:
            subscription = self.subscriptions.get(parts[2])
            return (200, subscription) if subscription else self._missing("subscription", parts[2])
        return None

    def _checkout_session(self, params: dict) -> dict:
        session_id = "cs_test_" + secrets.token_hex(12)
        session = {
            "id": session_id, "object": "checkout.session",
            "url": "https://checkout.stripe.com/c/pay/" + session_id,
            "mode": params.get("mode"), "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "success_url": params.get("success_url"), "cancel_url": params.get("cancel_url"),
            "subscription": None, "status": "open", "payment_status": "unpaid",
            "created": int(time.time()), "expires_at": int(time.time()) + 86400, "livemode": False, "metadata": {},
        }
        self.checkout_sessions[session_id] = session
        return session

    def _missing(self, kind: str, object_id: str):
        return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                               "message": f"No such {kind}: '{object_id}'", "param": "id"}}

    def _error(self, status: int, kind: str, message: str):
        return json.dumps({"error": {"type": kind, "message": message}}), status, {}

    def _forward(self, method, parsed, headers, post_data):
        request = urllib.request.Request(
            self.forward_to.rstrip("/") + parsed.path + (f"?{parsed.query}" if parsed.query else ""),
            data=post_data.encode() if isinstance(post_data, str) else post_data,
            headers=dict(headers), method=method.upper(),
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode(), response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.read().decode(), error.code, dict(error.headers)
