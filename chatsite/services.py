"""Writes of the chat domain: create messages, enqueue their replies, stop them."""
from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

from django.core.cache import cache
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from billing.plans import Plan, plan_get
from billing.quota import QuotaExceeded, QuotaStatus, quota_consume, quota_consume_many, quota_refund
from chatsite.celery import app as celery_app
from chatsite.celery import broker_priority
from chatsite.leases import pending_lease_expiry
from chatsite.models import Conversation, Feedback, Message
from chatsite.selectors import STOPS_CHANGED_KEY, stop_key

TITLE_CHARS = 60
GENERATE_REPLY_TASK = "chatsite.tasks.generate_reply"  # sent by name: web processes need no torch
STOP_KEY_TTL_S = 3600


@dataclass(frozen=True)
class Turn:
    """What a send, an edit, a regeneration or a continuation did: the question and the pending
    reply (its conversation loaded: the socket builds its frames in async code, where a lazy
    load is refused), the quota after counting it, and what `turn_withdraw` needs to undo it."""

    question: Message
    reply: Message
    quota: QuotaStatus
    created: tuple[int, ...]  # ids of the messages it created
    previous_current_id: int | None  # the conversation's shown message before it
    new_conversation: bool = False
    continued: bool = False  # `reply` existed, done at its length limit

    def __iter__(self):
        """Unpacks as (question, reply, quota)."""
        return iter((self.question, self.reply, self.quota))


@transaction.atomic
def message_send(*, user, plan: Plan, conversation_id: int | None, content: str) -> Turn:
    """Count the message against the user's quota, then save it and a pending assistant reply
    after the conversation's current message (a new conversation when `conversation_id` is
    None). Raises QuotaExceeded, or Conversation.DoesNotExist for a conversation the user does
    not own, having saved nothing. Queue the reply with `reply_send`."""
    if conversation_id is None:
        conversation = Conversation.objects.create(owner=user, title=_title_from(content))
    else:
        conversation = _conversation_to_extend(user=user, conversation_id=conversation_id)
    previous = conversation.current_id
    quota = quota_consume(user=user, plan=plan)
    question = Message.objects.create(
        conversation=conversation, parent_id=conversation.current_id, role=Message.Role.USER, content=content
    )
    reply = _reply_create(conversation=conversation, parent=question, plan=plan)
    return Turn(question, reply, quota, (question.id, reply.id), previous, new_conversation=conversation_id is None)


@transaction.atomic
def message_edit(*, user, plan: Plan, message_id: int, content: str) -> Turn:
    """A new version of the user's message `message_id`: a sibling of it (the old one stays, as
    an alternative) with a pending reply, shown from now on. Counts as a message."""
    original = _own_message(user=user, message_id=message_id, role=Message.Role.USER)
    conversation = _conversation_to_extend(user=user, conversation_id=original.conversation_id)
    previous = conversation.current_id
    quota = quota_consume(user=user, plan=plan)
    question = Message.objects.create(
        conversation=conversation, parent_id=original.parent_id, role=Message.Role.USER, content=content
    )
    reply = _reply_create(conversation=conversation, parent=question, plan=plan)
    return Turn(question, reply, quota, (question.id, reply.id), previous)


@transaction.atomic
def reply_regenerate(*, user, plan: Plan, message_id: int) -> Turn:
    """Another answer to the question of the answer `message_id`, its sibling, shown from now
    on. Counts as a message."""
    original = _own_message(user=user, message_id=message_id, role=Message.Role.ASSISTANT)
    conversation = _conversation_to_extend(user=user, conversation_id=original.conversation_id)
    previous = conversation.current_id
    quota = quota_consume(user=user, plan=plan)
    question = Message.objects.get(id=original.parent_id)
    reply = _reply_create(conversation=conversation, parent=question, plan=plan)
    return Turn(question, reply, quota, (reply.id,), previous)


@transaction.atomic
def reply_continue(*, user, plan: Plan, message_id: int) -> Turn:
    """Let the answer `message_id`, cut at the plan's cap, go on for another cap's worth of
    tokens from where it stopped. Counts as a message."""
    reply = _own_message(user=user, message_id=message_id, role=Message.Role.ASSISTANT)
    if reply.status != Message.Status.DONE or reply.finish_reason != "length":
        raise CannotContinue("Only an answer that was cut off at its length limit can be continued.")
    conversation = _conversation_to_extend(user=user, conversation_id=reply.conversation_id)
    previous = conversation.current_id
    quota = quota_consume(user=user, plan=plan)
    try:
        # A stop asked for as the answer ended (it was still streaming) left its flag behind:
        # the new round would be stopped at once.
        cache.delete(stop_key(reply.id))
    except Exception as error:  # the cache is Redis in the distributed mode
        raise ServiceUnavailable(str(error)) from error
    now = timezone.now()
    Message.objects.filter(id=reply.id).update(
        status=Message.Status.PENDING, finish_reason="", tokens_before=reply.completion_tokens, plan=plan.code,
        attempts=0, continued_at=now, lease_expires_at=pending_lease_expiry(now), updated_at=now,
    )
    conversation.current_id = _latest_leaf(reply).id
    conversation.save(update_fields=["current", "updated_at"])
    reply = Message.objects.select_related("conversation").get(id=reply.id)  # the socket reads its conversation
    return Turn(Message.objects.get(id=reply.parent_id), reply, quota, (), previous, continued=True)


def conversation_show_branch(*, user, conversation_id: int, message_id: int) -> Conversation:
    """Show the branch through `message_id` (an alternative picked with ‹ ›): it continues to
    that message's latest descendant. New messages continue it."""
    conversation = Conversation.objects.get(id=conversation_id, owner=user, source=Conversation.Source.CHAT)
    message = conversation.messages.get(id=message_id)
    conversation.current_id = _latest_leaf(message).id
    conversation.save(update_fields=["current"])  # not updated_at: looking is not a change
    return conversation


def conversation_rename(*, user, conversation_id: int, title: str) -> Conversation:
    title = " ".join(title.split())[:200]
    if not title:
        raise ValueError("A title cannot be empty.")
    conversation = Conversation.objects.get(id=conversation_id, owner=user, source=Conversation.Source.CHAT)
    conversation.title = title
    conversation.title_source = Conversation.TitleSource.USER
    conversation.save(update_fields=["title", "title_source"])
    return conversation


@transaction.atomic
def conversation_delete(*, user, conversation_id: int) -> None:
    """Delete the conversation and its messages (usage records stay: they are billing's).
    Locked as a send locks it, so a send racing the delete either lands first (and the
    delete is refused as busy) or finds the conversation gone."""
    _idle_conversation_locked(
        user=user, conversation_id=conversation_id,
        busy="An answer is still being written in this conversation. Stop it first.",
    ).delete()


def feedback_give(*, user, message_id: int, rating: int, comment: str = "") -> Feedback | None:
    """Thumbs up (1) or down (-1) on an answer, with an optional comment; 0 takes it back."""
    message = _own_message(user=user, message_id=message_id, role=Message.Role.ASSISTANT)
    if rating == 0:
        Feedback.objects.filter(message=message, user=user).delete()
        return None
    if rating not in (1, -1):
        raise ValueError("A rating is 1 or -1.")
    feedback, _ = Feedback.objects.update_or_create(
        message=message, user=user, defaults={"rating": rating, "comment": comment.strip()[:2000]}
    )
    return feedback


class ConversationBusy(Exception):
    """An answer is being written in the conversation: a new one would branch off mid-answer."""


class CannotContinue(Exception):
    pass


def _own_message(*, user, message_id: int, role: str) -> Message:
    return Message.objects.get(id=message_id, role=role, conversation__owner=user,
                               conversation__source=Conversation.Source.CHAT)


def _conversation_to_extend(*, user, conversation_id: int) -> Conversation:
    """The user's conversation, locked, or ConversationBusy while one of its answers is being
    written (two tabs sending at once must not both branch off the same message)."""
    return _idle_conversation_locked(
        user=user, conversation_id=conversation_id,
        busy="An answer is still being written in this conversation. Wait for it, or stop it.",
    )


def _idle_conversation_locked(*, user, conversation_id: int, busy: str) -> Conversation:
    """The user's conversation, its row locked until the transaction ends; ConversationBusy
    (saying `busy`) while one of its answers is being written."""
    conversation = Conversation.objects.select_for_update().get(
        id=conversation_id, owner=user, source=Conversation.Source.CHAT
    )
    if conversation.messages.filter(status__in=[Message.Status.PENDING, Message.Status.STREAMING]).exists():
        raise ConversationBusy(busy)
    return conversation


def _reply_create(*, conversation: Conversation, parent: Message, plan: Plan) -> Message:
    reply = Message.objects.create(
        conversation=conversation, parent=parent, role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING, plan=plan.code, lease_expires_at=pending_lease_expiry(),
    )
    conversation.current = reply
    conversation.save(update_fields=["current", "updated_at"])
    return reply


def _latest_leaf(message: Message) -> Message:
    """Follow the newest child down to a message without children."""
    while (child := message.children.order_by("-id").first()) is not None:
        message = child
    return message


@dataclass(frozen=True)
class ApiCall:
    """One /v1/chat/completions call, validated: whose, under which plan, what to save."""

    user: object
    plan: Plan
    messages: list[dict[str, str]]
    sampling: dict
    n: int = 1


@transaction.atomic
def api_completions_create(calls: list[ApiCall]) -> list[tuple[list[Message], QuotaStatus] | QuotaExceeded]:
    """Save API calls that arrived together, in one transaction and a handful of queries
    whatever their number. Each call counts as one message against its user's quota (per user
    one count for all of their calls, admitted in order while the window has room;
    QuotaExceeded for the rest, which save nothing); each admitted call's messages become a
    conversation of its own (not listed in the chat) with `n` pending replies to them,
    siblings carrying the call's sampling parameters. Returns each call's (replies, quota) or
    its QuotaExceeded, in order."""
    outcomes: list = [None] * len(calls)
    by_user: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        by_user.setdefault(call.user.pk, []).append(index)
    for indices in by_user.values():
        first = calls[indices[0]]
        counted, refused = quota_consume_many(user=first.user, plan=first.plan, count=len(indices))
        for index, quota in zip(indices, counted, strict=False):
            outcomes[index] = quota
        for index in indices[len(counted):]:
            outcomes[index] = QuotaExceeded(refused)
    admitted = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, QuotaStatus)]
    if not admitted:
        return outcomes
    conversations = Conversation.objects.bulk_create([
        Conversation(
            owner=calls[index].user, source=Conversation.Source.API,
            title=_title_from(next((m["content"] for m in calls[index].messages if m["role"] == "user"), "API request"))
            or "API request",
        )
        for index in admitted
    ])
    # Each call's messages are a chain (each the parent of the next): saved a position at a
    # time across calls, so every parent has its id before its child is saved.
    parents: list[Message | None] = [None] * len(admitted)
    for position in range(max(len(calls[index].messages) for index in admitted)):
        rows = [
            (slot, Message(conversation=conversation, parent=parents[slot], role=calls[index].messages[position]["role"],
                           content=calls[index].messages[position]["content"]))
            for slot, (index, conversation) in enumerate(zip(admitted, conversations, strict=True))
            if position < len(calls[index].messages)
        ]
        Message.objects.bulk_create([message for _, message in rows])
        for slot, message in rows:
            parents[slot] = message
    expiry = pending_lease_expiry()
    replies = Message.objects.bulk_create([
        Message(conversation=conversation, parent=parents[slot], role=Message.Role.ASSISTANT,
                status=Message.Status.PENDING, sampling=calls[index].sampling, plan=calls[index].plan.code,
                lease_expires_at=expiry)
        for slot, (index, conversation) in enumerate(zip(admitted, conversations, strict=True))
        for _ in range(calls[index].n)
    ])
    now = timezone.now()
    taken = 0
    for index, conversation in zip(admitted, conversations, strict=True):
        own = replies[taken : taken + calls[index].n]
        taken += calls[index].n
        conversation.current, conversation.updated_at = own[0], now
        outcomes[index] = (own, outcomes[index])
    # One UPDATE whatever the number of conversations (bulk_update's CASE per row is a large
    # statement to build): each conversation's current message is its first pending reply.
    first_reply = Message.objects.filter(
        conversation=OuterRef("pk"), role=Message.Role.ASSISTANT, status=Message.Status.PENDING
    ).order_by("id").values("id")[:1]
    Conversation.objects.filter(id__in=[c.id for c in conversations]).update(current=Subquery(first_reply), updated_at=now)
    return outcomes


def reply_send(*, reply: Message) -> None:
    """Queue `reply` on its plan's queue with its plan's priority. Call once the reply is
    committed and the caller listens to its group; touches no database, so it need not take
    one of the threads that do."""
    plan = plan_get(reply.plan)
    celery_app.send_task(GENERATE_REPLY_TASK, args=[reply.id], queue=plan.queue, priority=broker_priority(plan.priority))


class ServiceUnavailable(Exception):
    """The broker, the channel layer or the cache cannot be reached; nothing was done."""


UNAVAILABLE = "The service is temporarily unavailable; nothing was sent or charged. Please try again in a moment."


@transaction.atomic
def turn_withdraw(*, turn: Turn) -> None:
    """Undo a turn whose reply could not be queued: delete what it created (the conversation,
    if it was new), put a continued reply back as it was, show the message shown before, and
    give the quota use back."""
    conversation = Conversation.objects.select_for_update().get(id=turn.reply.conversation_id)
    if turn.new_conversation:
        conversation.delete()
    else:
        Message.objects.filter(id__in=turn.created).delete()
        if turn.continued:
            Message.objects.filter(id=turn.reply.id).update(
                status=Message.Status.DONE, finish_reason="length", tokens_before=0, lease_expires_at=None
            )
        conversation.current_id = turn.previous_current_id
        conversation.save(update_fields=["current"])
    quota_refund(user=conversation.owner, at=turn.quota.now)


@transaction.atomic
def api_completion_withdraw(*, replies: list[Message], quota: QuotaStatus) -> None:
    """Undo `api_completions_create` for one call when its replies could not be queued: the call's
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
            cache.set(STOPS_CHANGED_KEY, secrets.token_hex(8), None)  # after the flag: see stops_changed_mark
        except Exception as error:  # the cache is Redis in the distributed mode
            raise ServiceUnavailable(str(error)) from error
        return StopOutcome.STOPPING
    return StopOutcome.NOTHING


def _title_from(content: str) -> str:
    first_line = " ".join(content.split())
    return first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"
