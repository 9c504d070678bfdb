"""Reads of the chat domain. Every read is scoped to its owner: others' rows do not exist."""
from __future__ import annotations

import logging

from django.core.cache import cache

from chatsite.models import Conversation, Message

logger = logging.getLogger(__name__)


def conversation_get(*, user, conversation_id: int) -> Conversation:
    """The user's conversation; raises Conversation.DoesNotExist for anyone else's."""
    return Conversation.objects.get(id=conversation_id, owner=user)


def conversation_list(*, user, limit: int = 100) -> list[Conversation]:
    return list(
        Conversation.objects.filter(owner=user, source=Conversation.Source.CHAT).order_by("-updated_at")[:limit]
    )


def conversation_branch(*, conversation: Conversation, leaf_id: int | None = None) -> list[Message]:
    """The messages from the root to `leaf_id` (default: the conversation's current message),
    oldest first: the branch the user sees and the model is given. One query."""
    leaf_id = leaf_id if leaf_id is not None else conversation.current_id
    if leaf_id is None:
        return []
    by_id = {message.id: message for message in conversation.messages.all()}
    branch = []
    message = by_id.get(leaf_id)
    while message is not None:
        branch.append(message)
        message = by_id.get(message.parent_id)
    branch.reverse()
    return branch


def stop_key(message_id: int) -> str:
    return f"chatsite:stop:{message_id}"


def reply_stop_requested(*, message_id: int) -> bool:
    """Whether a stop was asked for. While the cache (Redis) is unreachable, no stop can have
    been asked for either (asking fails the same way), so the answer is no."""
    try:
        return bool(cache.get(stop_key(message_id)))
    except Exception as error:
        logger.warning("could not read the stop flag of message %s: %r", message_id, error)
        return False


def replies_ended(*, message_ids) -> list[Message]:
    """Those of the replies `message_ids` that have ended (done, stopped or failed)."""
    return list(
        Message.objects.filter(id__in=list(message_ids)).exclude(
            status__in=[Message.Status.PENDING, Message.Status.STREAMING]
        )
    )
