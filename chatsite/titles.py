"""A conversation's title, written by the model after the first exchange.

Until then (and whenever the model's attempt is unusable) the title is the first message cut
off. The title is asked for in a task of its own, at the lowest priority, once the first answer
is done, so it never delays an answer; a title the user gave is never overwritten.
"""
from __future__ import annotations

import logging
import re

from django.conf import settings
from django.db.models import Count, Q

from chatsite import publisher
from chatsite.models import Conversation, Message
from chatsite.untrusted import text_storable

logger = logging.getLogger(__name__)

TITLE_TASK = "chatsite.tasks.title_conversation"
TITLE_PRIORITY = -1  # below every plan: any answer goes first
MAX_TITLE_CHARS = 60
SOURCE_CHARS = 400  # of the question and of the answer, given to the model
PROMPT = (
    "Write a title of at most six words for the conversation below. Answer with the title only.\n\n"
    "Question: {question}\n\nAnswer: {answer}"
)


def title_request(*, conversation: Conversation) -> None:
    """After an answer is done: ask for a title if this was the conversation's first exchange
    and its title is still the first message."""
    if not settings.CHAT_MODEL_TITLES or conversation.source != Conversation.Source.CHAT:
        return
    if conversation.title_source != Conversation.TitleSource.MESSAGE:
        return
    answers = conversation.messages.aggregate(n=Count("id", filter=Q(role=Message.Role.ASSISTANT, status=Message.Status.DONE)))
    if answers["n"] != 1:
        return
    from chatsite.celery import app as celery_app
    from chatsite.celery import broker_priority

    try:
        celery_app.send_task(TITLE_TASK, args=[conversation.id], queue=settings.CHAT_QUEUE_FREE,
                             priority=broker_priority(TITLE_PRIORITY))
    except Exception as error:  # a title is a nicety: the first message stays the title
        logger.warning("could not ask for a title for conversation %s: %r", conversation.id, error)


def title_generate(*, conversation_id: int) -> str | None:
    """Ask the model for a title and save it, unless the user named the conversation meanwhile.
    Returns the title saved, or None."""
    conversation = Conversation.objects.filter(id=conversation_id).first()
    if conversation is None or conversation.title_source != Conversation.TitleSource.MESSAGE:
        return None
    question = conversation.messages.filter(role=Message.Role.USER).order_by("id").first()
    answer = conversation.messages.filter(role=Message.Role.ASSISTANT, status=Message.Status.DONE).order_by("id").first()
    if question is None or answer is None:
        return None
    written = _ask_model(PROMPT.format(question=question.content[:SOURCE_CHARS], answer=answer.content[:SOURCE_CHARS]))
    title = title_clean(written or "")
    if title is None:
        return None
    saved = Conversation.objects.filter(id=conversation_id, title_source=Conversation.TitleSource.MESSAGE).update(
        title=title, title_source=Conversation.TitleSource.MODEL
    )
    if not saved:
        return None
    publisher.publish_conversation(conversation.owner_id, conversation_id=conversation_id, title=title)
    return title


def _ask_model(prompt: str) -> str | None:
    """The model's greedy answer to `prompt`, at the lowest priority; None if it is swamped."""
    from inference import EngineConfig, SamplingParams, TokenEvent
    from inference.prompts import build_prompt_ids
    from inference.worker import engine_get

    engine = engine_get(EngineConfig(**settings.INFERENCE_ENGINE))
    ids = build_prompt_ids(engine.tokenizer, [{"role": "user", "content": prompt}],
                           context_length=engine.context_length, reserve_tokens=24)
    request = engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=20), priority=TITLE_PRIORITY)
    pieces = []
    for event in request.events(timeout=120):
        if event is None:
            request.cancel("timeout")
            return None
        if isinstance(event, TokenEvent):
            pieces.append(event.text)
    return "".join(pieces)


def title_clean(text: str) -> str | None:
    """One line of words without quotes or a "Title:" label, at most MAX_TITLE_CHARS; None when
    nothing like a title is left."""
    text = text_storable(text)
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"^(title|conversation title)\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip(" \t\"'“”‘’*#`.").strip()
    if len(re.findall(r"[^\W\d_]", line)) < 3:
        return None
    if len(line) > MAX_TITLE_CHARS:
        line = line[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return line
