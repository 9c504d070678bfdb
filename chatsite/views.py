"""Pages: sign-up, the chat page (new or existing conversation), the health check."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from billing.plans import plan_for_user
from billing.quota import quota_status
from billing.stripe_client import billing_enabled
from chatsite import health, throttle
from chatsite.conversation_views import conversations_page
from chatsite.forms import SignupForm
from chatsite.models import Conversation
from chatsite.selectors import branch_out, conversation_get


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("chat")
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        ip = throttle.client_ip(request)
        try:
            throttle.signup_check(ip=ip)
        except throttle.Throttled as refused:
            return _throttled(request, "registration/signup.html", form, refused)
        if form.is_valid():
            user = form.save()
            throttle.signup_done(ip=ip)
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("chat")
    return render(request, "registration/signup.html", {"form": form})


class ThrottledLoginView(LoginView):
    """Django's log-in, refused while the account or the address has failed too often
    (chatsite/throttle.py): 429 with the reason and when to try again."""

    def post(self, request, *args, **kwargs):
        try:
            throttle.login_check(username=request.POST.get("username", ""), ip=throttle.client_ip(request))
        except throttle.Throttled as refused:
            return _throttled(request, self.template_name, self.get_form(), refused)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        throttle.login_succeeded(username=form.get_user().get_username())
        return super().form_valid(form)

    def form_invalid(self, form):
        throttle.login_failed(username=self.request.POST.get("username", ""), ip=throttle.client_ip(self.request))
        return super().form_invalid(form)


def _throttled(request: HttpRequest, template: str, form, refused: throttle.Throttled) -> HttpResponse:
    response = render(request, template, {"form": form, "throttled": str(refused)}, status=429)
    response["Retry-After"] = str(refused.retry_after_s)
    return response


@login_required
def chat(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    conversation = None
    branch = []
    if conversation_id is not None:
        try:
            conversation = conversation_get(user=request.user, conversation_id=conversation_id)
        except Conversation.DoesNotExist:
            raise Http404("No such conversation") from None
        branch = branch_out(conversation=conversation)
    plan = plan_for_user(request.user)
    quota = quota_status(user=request.user, plan=plan)
    page = {
        "conversation": {"id": conversation.id, "title": conversation.title} if conversation else None,
        "branch": branch,
        "conversations": conversations_page(user=request.user),
        "plan": {"code": plan.code, "name": plan.name, "max_input_chars": plan.max_input_chars,
                 "max_output_tokens": plan.max_output_tokens},
        "quota": quota.as_dict(),
        "billing_enabled": billing_enabled(),
    }
    return render(request, "chat/chat.html", {
        "conversation": conversation, "branch": branch, "plan": plan, "quota": quota, "page": page,
        "billing_enabled": billing_enabled(),
    })


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker and a worker answer, else 503; JSON either way.
    The broker and the ping wait on the network, so they run off the thread that serves the
    other pages."""
    database = await sync_to_async(health.database_check)()
    broker = await sync_to_async(health.broker_check, thread_sensitive=False)()
    workers = await sync_to_async(health.workers_check, thread_sensitive=False)() if health.answered(broker) else 0
    body, healthy = health.health_report(database=database, broker=broker, workers=workers)
    return JsonResponse(body, status=200 if healthy else 503)
