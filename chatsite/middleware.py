"""Headers every page gets that Django 5.2's own middleware does not set."""
from __future__ import annotations

from django.conf import settings


class SecurityHeadersMiddleware:
    """The Content Security Policy, and `Cache-Control: no-store` on pages of a logged-in user:
    they show conversations, API keys and billing, which no shared or back-button cache should
    keep."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:  # static files never get here: WhiteNoise answers first
            response.headers["Cache-Control"] = "no-store"
        return response
