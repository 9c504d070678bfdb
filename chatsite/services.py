"""Writes of the chat domain: create messages, enqueue their replies, stop them."""
from __future__ import annotations

import enum

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from billing.plans import Plan, plan_get
from billing.quota import QuotaStatus, quota_consume, quota_refund
from chatsite.celery import app as celery_app
from chatsite.leases import pending_lease_expiry
from chatsite.models import Conversation, Message
from chatsite.selectors import stop_key

TITLE_CHARS = 60
GENERATE_REPLY_TASK = "chatsite.tasks.generate_reply"  # sent by name: web processes need no torch
STOP_KEY_TTL_S = 3600


@transaction.atomic
def message_send(
    *, user, plan: Plan, conversation_id: int | None, content: str
) -> tuple[Message, Message, QuotaStatus]:
    """Count the message against the user's quota, then save it and a pending assistant reply
    after the conversation's current message (a new conversation when `conversation_id` is
    None). Raises QuotaExceeded, or Conversation.DoesNotExist for a conversation the user does
    not own, having saved nothing. Queue the reply with `reply_send`."""
    quota = quota_consume(user=user, plan=plan)
    if conversation_id is None:
        conversation = Conversation.objects.create(owner=user, title=_title_from(content))
    else:
        conversation = Conversation.objects.select_for_update().get(id=conversation_id, owner=user)
    user_message = Message.objects.create(
        conversation=conversation, parent_id=conversation.current_id, role=Message.Role.USER, content=content
    )
    reply = Message.objects.create(
        conversation=conversation, parent=user_message, role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING, plan=plan.code, lease_expires_at=pending_lease_expiry(),
    )
    conversation.current = reply
    conversation.save(update_fields=["current", "updated_at"])
    return user_message, reply, quota


@transaction.atomic
def api_completion_create(
    *, user, plan: Plan, messages: list[dict[str, str]], sampling: dict, n: int = 1
) -> tuple[list[Message], QuotaStatus]:
    """Count the call as one message against the user's quota (QuotaExceeded: nothing saved),
    then save its messages as a conversation of their own (not listed in the chat) and `n`
    pending replies to them, siblings, each carrying the call's sampling parameters."""
    quota = quota_consume(user=user, plan=plan)
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "API request")
    conversation = Conversation.objects.create(owner=user, title=_title_from(first_user) or "API request",
                                               source=Conversation.Source.API)
    parent = None
    for message in messages:
        parent = Message.objects.create(
            conversation=conversation, parent=parent, role=message["role"], content=message["content"]
        )
    replies = [
        Message.objects.create(
            conversation=conversation, parent=parent, role=Message.Role.ASSISTANT,
            status=Message.Status.PENDING, sampling=sampling, plan=plan.code, lease_expires_at=pending_lease_expiry(),
        )
        for _ in range(n)
    ]
    conversation.current = replies[0]
    conversation.save(update_fields=["current", "updated_at"])
    return replies, quota


def reply_send(*, reply: Message) -> None:
    """Queue `reply` on its plan's queue with its plan's priority. Call once the reply is
    committed and the caller listens to its group; touches no database, so it need not take
    one of the threads that do."""
    plan = plan_get(reply.plan)
    celery_app.send_task(GENERATE_REPLY_TASK, args=[reply.id], queue=plan.queue, priority=plan.priority)


class ServiceUnavailable(Exception):
    """The broker, the channel layer or the cache cannot be reached; nothing was done."""


UNAVAILABLE = "The service is temporarily unavailable; nothing was sent or charged. Please try again in a moment."


@transaction.atomic
def message_send_withdraw(*, user_message: Message, reply: Message, quota: QuotaStatus) -> None:
    """Undo `message_send` when its reply could not be queued: delete both messages (and the
    conversation if they were all it had), put the conversation back on the message before,
    and give the quota use back."""
    conversation = Conversation.objects.select_for_update().get(id=reply.conversation_id)
    Message.objects.filter(id__in=[reply.id, user_message.id]).delete()
    if not conversation.messages.exists():
        conversation.delete()
    else:
        conversation.current_id = user_message.parent_id
        conversation.save(update_fields=["current", "updated_at"])
    quota_refund(user=conversation.owner, at=quota.now)


@transaction.atomic
def api_completion_withdraw(*, replies: list[Message], quota: QuotaStatus) -> None:
    """Undo `api_completion_create` when its replies could not be queued: the call's
    conversation goes, and the quota use is given back."""
    conversation = replies[0].conversation
    owner = conversation.owner
    conversation.delete()
    quota_refund(user=owner, at=quota.now)


class StopOutcome(enum.Enum):
    STOPPED = "stopped"  # it was still queued and is now stopped; no worker will report on it
    STOPPING = "stopping"  # it is being generated; the worker stops it and reports `done`
    NOTHING = "nothing"  # not the user's, or already finished


def reply_stop(*, user, message_id: int) -> StopOutcome:
    """Stop the user's reply `message_id`. A reply still queued is marked stopped at once (the
    task will skip it); one being generated is told through the cache and ends at the engine's
    next step, keeping its text."""
    owned = Message.objects.filter(id=message_id, conversation__owner=user, role=Message.Role.ASSISTANT)
    if owned.filter(status=Message.Status.PENDING).update(
        status=Message.Status.STOPPED, finish_reason="stop", updated_at=timezone.now()
    ):
        return StopOutcome.STOPPED
    if owned.filter(status=Message.Status.STREAMING).exists():
        try:
            cache.set(stop_key(message_id), True, STOP_KEY_TTL_S)
        except Exception as error:  # the cache is Redis in the distributed mode
            raise ServiceUnavailable(str(error)) from error
        return StopOutcome.STOPPING
    return StopOutcome.NOTHING


def _title_from(content: str) -> str:
    first_line = " ".join(content.split())
    return first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"
