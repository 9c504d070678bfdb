"""Pages: sign-up, the chat page (new or existing conversation), the health check."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from billing.plans import plan_for_user
from billing.quota import quota_status
from chatsite import health
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


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker and a worker answer, else 503; JSON either way.
    The broker and the ping wait on the network, so they run off the thread that serves the
    other pages."""
    database = await sync_to_async(health.database_check)()
    broker = await sync_to_async(health.broker_check, thread_sensitive=False)()
    workers = await sync_to_async(health.workers_check, thread_sensitive=False)() if health.answered(broker) else 0
    body, healthy = health.health_report(database=database, broker=broker, workers=workers)
    return JsonResponse(body, status=200 if healthy else 503)
