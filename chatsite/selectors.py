"""Reads of the chat domain. Every read is scoped to its owner: others' rows do not exist."""
from __future__ import annotations

import logging

from django.core.cache import cache
from django.db.models import Exists, OuterRef, Q

from chatsite.models import Conversation, Feedback, Message

logger = logging.getLogger(__name__)


def conversation_get(*, user, conversation_id: int) -> Conversation:
    """The user's conversation; raises Conversation.DoesNotExist for anyone else's."""
    return Conversation.objects.get(id=conversation_id, owner=user, source=Conversation.Source.CHAT)


PAGE_SIZE = 50


def conversation_list(
    *, user, limit: int = PAGE_SIZE, before: tuple | None = None, query: str = ""
) -> list[Conversation]:
    """The user's chat conversations, most recently active first; `before` (an updated_at and
    an id, from the last of the previous page) pages on; `query` keeps those whose title or
    any message contains it."""
    conversations = Conversation.objects.filter(owner=user, source=Conversation.Source.CHAT)
    if query:
        matching = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
        conversations = conversations.filter(Q(title__icontains=query) | Exists(matching))
    if before is not None:
        updated_at, conversation_id = before
        conversations = conversations.filter(Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, id__lt=conversation_id))
    return list(conversations.order_by("-updated_at", "-id")[:limit])


def _branch_to(by_id: dict[int, Message], leaf_id: int | None) -> list[Message]:
    """The messages of `by_id` from the root to `leaf_id`, oldest first, following parents."""
    branch = []
    message = by_id.get(leaf_id)
    while message is not None:
        branch.append(message)
        message = by_id.get(message.parent_id)
    branch.reverse()
    return branch


def replies_with_branch(*, message_ids: list[int]) -> list[tuple[Message, list[Message]] | None]:
    """Each reply of `message_ids` with its conversation and the conversation's owner, and
    the branch above it (root to its parent, oldest first); None for one that no longer
    exists. One query for the messages of their conversations: a worker makes this read for
    every reply it generates, and the ORM's work (compiling the query, building the rows) is
    most of its cost."""
    messages = Message.objects.select_related("conversation__owner").filter(conversation__messages__id__in=message_ids)
    # A conversation with several of the replies comes once per reply: the same rows again.
    by_id = {message.id: message for message in messages.order_by()}
    found = []
    for message_id in message_ids:
        reply = by_id.get(message_id)
        found.append(None if reply is None else (reply, _branch_to(by_id, reply.parent_id)))
    return found


def stop_key(message_id: int) -> str:
    return f"chatsite:stop:{message_id}"


# Changed after every stop flag is set: a worker reads this one key to learn whether any
# reply's flag may have been set since its last look, instead of reading every flag.
STOPS_CHANGED_KEY = "chatsite:stops-changed"


def stops_changed_mark() -> str | None:
    """The mark of the last stop asked for anywhere (None: none, or the cache unreachable)."""
    try:
        return cache.get(STOPS_CHANGED_KEY)
    except Exception as error:
        logger.warning("could not read whether a stop was asked for: %r", error)
        return None


def replies_stop_requested(*, message_ids) -> set[int]:
    """Those of `message_ids` whose stop was asked for, in one trip to the cache. While the
    cache (Redis) is unreachable, no stop can have been asked for either (asking fails the
    same way), so the answer is none."""
    keys = {stop_key(message_id): message_id for message_id in message_ids}
    try:
        found = cache.get_many(list(keys))
    except Exception as error:
        logger.warning("could not read the stop flags of %d replies: %r", len(keys), error)
        return set()
    return {keys[key] for key, value in found.items() if value}


def replies_ended(*, message_ids) -> list[Message]:
    """Those of the replies `message_ids` that have ended (done, stopped or failed)."""
    return list(
        Message.objects.filter(id__in=list(message_ids)).exclude(
            status__in=[Message.Status.PENDING, Message.Status.STREAMING]
        )
    )


def branch_out(*, conversation: Conversation) -> list[dict]:
    """The shown branch as the page draws it: each message with its alternatives (the
    messages with the same parent, oldest first) and where it stands among them."""
    messages = list(conversation.messages.all())
    by_id = {message.id: message for message in messages}
    siblings: dict[int | None, list[int]] = {}
    for message in messages:
        siblings.setdefault(message.parent_id, []).append(message.id)
    branch = _branch_to(by_id, conversation.current_id)
    ratings = dict(
        Feedback.objects.filter(user_id=conversation.owner_id, message__in=branch).values_list("message_id", "rating")
    )
    return [
        {
            "id": message.id, "role": message.role, "content": message.content, "status": message.status,
            "parent": message.parent_id, "finish_reason": message.finish_reason, "error": message.error,
            "siblings": sorted(siblings[message.parent_id]), "rating": ratings.get(message.id, 0),
        }
        for message in branch
    ]
