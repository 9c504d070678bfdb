"""Generate one assistant reply: the body of the Celery task `generate_reply`.

Claim the pending row → build the prompt from its branch → run it through the process's
engine → publish text as it comes → save the result. Safe to run twice for one message.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from billing.plans import plan_for_user, plan_get
from billing.usage import usage_record
from chatsite import publisher
from chatsite.models import Message
from chatsite.selectors import conversation_branch, reply_stop_requested
from inference import EngineConfig, FinishEvent, SamplingParams, TokenEvent
from inference.prompts import PromptTooLong, build_prompt_ids
from inference.requests import Request
from inference.worker import engine_get

logger = logging.getLogger(__name__)


def reply_generate(*, message_id: int) -> None:
    """Generate the reply `message_id` if it is still pending; otherwise do nothing."""
    # As Django does at each request: a connection kept from an earlier task on this thread
    # (SQLite: CELERY_DB_REUSE_MAX) is dropped if that task left it broken or it is too old.
    _release_connection()
    claimed = Message.objects.filter(
        id=message_id, role=Message.Role.ASSISTANT, status=Message.Status.PENDING
    ).update(status=Message.Status.STREAMING, updated_at=timezone.now())
    if not claimed:
        return  # stopped while queued, or already handled by an earlier delivery
    reply = Message.objects.select_related("conversation__owner").get(id=message_id)
    try:
        _generate(reply)
    except Exception:
        logger.exception("generating message %s failed", message_id)
        _fail(reply, "The model could not answer. Please try again.")


def _generate(reply: Message) -> None:
    engine = engine_get(EngineConfig(**settings.INFERENCE_ENGINE))
    # The plan that admitted the message governs it; rows from before plans were recorded
    # take the owner's plan now.
    plan = plan_get(reply.plan) if reply.plan else plan_for_user(reply.conversation.owner)
    reply.plan = plan.code
    params = _sampling_params(reply, plan)
    try:
        prompt_ids = build_prompt_ids(
            engine.tokenizer,
            _chat_messages(reply),
            context_length=engine.context_length,
            reserve_tokens=min(params.max_new_tokens, engine.context_length // 2),
        )
    except PromptTooLong as error:
        _fail(reply, str(error).capitalize() + ".")
        return
    request = engine.submit(
        prompt_ids, params, priority=plan.priority, arrival_time=reply.created_at.timestamp()
    )
    _release_connection()
    with _STREAMS:
        _stream(reply, request)


def _stream(reply: Message, request: Request) -> None:
    started = time.monotonic()
    last_save = started
    last_stop_check = 0.0
    pieces: list[str] = []
    while True:
        if pieces:
            # Text is flowing: look once per stream interval (or as soon as it ends) rather
            # than at every token; the web side gets one frame per interval either way.
            request.wait_finished(until_next_frame_s(_STREAMS.count))
            events = request.drain()
        else:
            # Until the first text goes out, every event counts: time to first token.
            event = request.next_event(timeout=settings.CHAT_STOP_POLL_S)
            events = [event, *request.drain()] if event is not None else []
        tokens = [e for e in events if isinstance(e, TokenEvent) and e.text]
        finish = next((e for e in events if isinstance(e, FinishEvent)), None)
        if tokens:
            text = "".join(token.text for token in tokens)
            pieces.append(text)
            publisher.publish_token(reply.id, text=text, index=tokens[0].index)
        if finish is not None:
            _finish(reply, "".join(pieces), finish)
            return
        now = time.monotonic()
        if now - last_stop_check >= settings.CHAT_STOP_POLL_S:
            last_stop_check = now
            if reply_stop_requested(message_id=reply.id):
                request.cancel("stop")
            elif now - started > settings.CHAT_GENERATION_TIMEOUT_S:
                request.cancel("timeout")
        if now - last_save >= settings.CHAT_SAVE_EVERY_S:
            last_save = now
            Message.objects.filter(id=reply.id).update(content="".join(pieces), updated_at=timezone.now())
            _release_connection()


def _release_connection() -> None:
    """Hand this thread's database connection back while the reply streams, as Django does
    between requests. With a pool (PostgreSQL, CONN_MAX_AGE=0) a reply held one connection for
    its whole generation, so a worker ran at most DATABASE_POOL_SIZE replies at once and the
    rest waited (up to the pool's timeout) instead of joining the batch. A kept connection
    (SQLite, CONN_MAX_AGE>0) stays open, and so does one inside a transaction (tests run in one)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def stream_interval_s(streams: int) -> float:
    """Seconds between two token frames of a reply while this process streams `streams`
    replies: CHAT_STREAM_INTERVAL_S, or longer where the replies together would send more than
    CHAT_STREAM_FRAMES_PER_S frames a second. Each frame costs the server and the client the
    same CPU whatever it carries, and on a busy worker that CPU is taken from the model."""
    budget = settings.CHAT_STREAM_FRAMES_PER_S
    return max(settings.CHAT_STREAM_INTERVAL_S, streams / budget if budget > 0 else 0.0)


def until_next_frame_s(streams: int, now: float | None = None) -> float:
    """Seconds until the process's next frame tick. Ticks are `stream_interval_s` apart on the
    monotonic clock, the same for every reply of the process, so the replies' threads wake
    and publish together, once a tick, instead of one after another all the time: each wake
    takes a core from the model mid-operation."""
    interval = stream_interval_s(streams)
    now = time.monotonic() if now is None else now
    return interval - now % interval


class _Streams:
    """How many replies this process is streaming now; `with _STREAMS:` counts one."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> _Streams:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *_) -> None:
        with self._lock:
            self.count -= 1


_STREAMS = _Streams()


def _sampling_params(reply: Message, plan) -> SamplingParams:
    """The chat's defaults, overridden by what an API call asked for, capped by the plan."""
    requested = dict(reply.sampling)
    requested["stop"] = tuple(requested.get("stop", ()))
    requested["max_new_tokens"] = min(requested.get("max_new_tokens", plan.max_output_tokens), plan.max_output_tokens)
    return SamplingParams(**{"temperature": settings.CHAT_TEMPERATURE, "top_p": settings.CHAT_TOP_P, **requested})


def _chat_messages(reply: Message) -> list[dict[str, str]]:
    """The branch above `reply`, as the chat template wants it; failed and empty turns left out.
    CHAT_SYSTEM_PROMPT goes first unless the branch brings its own system message."""
    branch = conversation_branch(conversation=reply.conversation, leaf_id=reply.parent_id)
    messages = [
        {"role": message.role, "content": message.content}
        for message in branch
        if message.content and message.status != Message.Status.FAILED
    ]
    if settings.CHAT_SYSTEM_PROMPT and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT})
    return messages


def _finish(reply: Message, content: str, finish: FinishEvent) -> None:
    usage = finish.usage
    reply.content = content
    reply.status = finish.status.value
    reply.finish_reason = finish.reason
    if finish.status.value == Message.Status.FAILED:
        reply.error = "The model stopped with an error. Please try again."
    reply.prompt_tokens = usage.prompt_tokens
    reply.completion_tokens = usage.completion_tokens
    reply.queue_wait_s = usage.queue_wait_s
    reply.ttft_s = usage.ttft_s
    reply.decode_s = usage.decode_s
    reply.compute_s = usage.compute_s
    with transaction.atomic():
        reply.save()
        usage_record(
            user=reply.conversation.owner,
            message_id=reply.id,
            plan=reply.plan,
            source=reply.conversation.source,
            status=reply.status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            queue_wait_s=usage.queue_wait_s,
            ttft_s=usage.ttft_s,
            decode_s=usage.decode_s,
            compute_s=usage.compute_s,
        )
    if reply.status == Message.Status.FAILED:  # its text so far is saved; the reader is told it failed
        publisher.publish_error(reply.id, error=reply.error)
        return
    publisher.publish_done(
        reply.id, status=reply.status, finish_reason=reply.finish_reason, content=content, usage=asdict(usage)
    )


def _fail(reply: Message, error: str) -> None:
    Message.objects.filter(id=reply.id).update(
        status=Message.Status.FAILED, error=error, finish_reason="error", updated_at=timezone.now()
    )
    publisher.publish_error(reply.id, error=error)
