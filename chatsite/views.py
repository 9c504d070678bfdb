"""Pages: sign-up, the chat page (new or existing conversation), a health check."""
from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from billing.plans import plan_for_user
from billing.quota import quota_status
from chatsite.forms import SignupForm
from chatsite.models import Conversation
from chatsite.selectors import conversation_branch, conversation_get, conversation_list


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def chat(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    conversation = None
    branch = []
    if conversation_id is not None:
        try:
            conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        except Conversation.DoesNotExist:
            raise Http404("No such conversation") from None
        branch = conversation_branch(conversation=conversation)
    plan = plan_for_user(request.user)
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": conversation,
            "branch": branch,
            "conversations": conversation_list(user=request.user),
            "plan": plan,
            "quota": quota_status(user=request.user, plan=plan),
        },
    )


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
