"""The account page's API keys: list, create (shown once), revoke."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from billing.api_keys import ApiKeyError, api_key_create, api_key_list, api_key_revoke
from billing.plans import plan_for_user


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
