"""Generate one assistant reply: the body of the Celery task `generate_reply`.

Claim the pending row → build the prompt from its branch → run it through the process's
engine → publish text as it comes → save the result. Safe to run twice for one message.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, replace

from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from billing.models import UsageRecord
from billing.plans import plan_for_user, plan_get
from billing.usage import usage_record_many
from chatsite import metrics, publisher
from chatsite.group_commit import GroupCommit
from chatsite.leases import in_id_order, lease_release, leases_claim, leases_renew, update_sql
from chatsite.live import live_append, live_clear, live_reset
from chatsite.models import Message
from chatsite.selectors import replies_stop_requested, replies_with_branch, stops_changed_mark
from chatsite.titles import title_request
from chatsite.untrusted import text_storable
from inference import EngineConfig, FinishEvent, RequestStatus, SamplingParams, TokenEvent
from inference.engine import EngineShuttingDown
from inference.prompts import PromptTooLong, build_prompt_ids, continuation_ids
from inference.requests import Request
from inference.worker import engine_get

logger = logging.getLogger(__name__)


def reply_generate(*, message_id: int) -> None:
    """Generate the reply `message_id` if it is pending or its worker's lease lapsed (then
    continuing from its saved text); otherwise do nothing."""
    # As Django does at each request: a connection kept from an earlier task on this thread
    # (SQLite: CELERY_DB_REUSE_MAX) is dropped if that task left it broken or it is too old.
    _release_connection()
    owner, found = _open(message_id)
    if owner is None:
        return  # stopped while queued, finished, or another worker holds it
    if found is None:
        return  # deleted with its conversation since it was claimed
    reply, branch = found
    if reply.attempts > settings.CHAT_MAX_ATTEMPTS:
        _fail(reply, owner, f"This answer could not be finished after {settings.CHAT_MAX_ATTEMPTS} tries. "
                            "What was written is kept; regenerate to try again.")
        return
    try:
        _generate(reply, owner, branch)
    except EngineShuttingDown:
        lease_release(message_id=reply.id, owner=owner, content=reply.content)
        live_clear(reply.id)  # as _finish does for a shutdown: this process streams it no more
    except Exception:
        logger.exception("generating message %s failed", message_id)
        _fail(reply, owner, "The model could not answer. Please try again.")


def _open_all(message_ids: list[int]) -> list[tuple[str | None, tuple[Message, list[Message]] | None]]:
    """Claim each reply and read it with its branch: (the lease's token, the reply and its
    branch), (token, None) when it was deleted, (None, None) when it could not be claimed.
    One transaction, so that a batch that failed can be run again (chatsite/group_commit.py)."""
    with transaction.atomic():
        owners = leases_claim(message_ids=message_ids)
        claimed = [message_id for message_id, owner in zip(message_ids, owners, strict=True) if owner]
        found = dict(zip(claimed, replies_with_branch(message_ids=claimed), strict=True)) if claimed else {}
    return [(owner, found.get(message_id) if owner else None) for message_id, owner in zip(message_ids, owners, strict=True)]


# The worker's three writes for every reply — claim (with the read), renew, end — each made
# for all the replies that want it at the same moment (chatsite/group_commit.py). Looked up
# by name at each batch, so that tests can replace the functions.
_open = GroupCommit(lambda message_ids: _open_all(message_ids))
_renew = GroupCommit(lambda renewals: leases_renew(renewals=renewals))
_end = GroupCommit(lambda ends: _ends_save(ends))


def _generate(reply: Message, owner: str, branch: list[Message]) -> None:
    engine = engine_get(EngineConfig(**settings.INFERENCE_ENGINE))
    # The plan that admitted the message governs it; rows from before plans were recorded
    # take the owner's plan now.
    plan = plan_get(reply.plan) if reply.plan else plan_for_user(reply.conversation.owner)
    reply.plan = plan.code
    params = _sampling_params(reply, plan)
    # A reply taken over from a worker that stopped, or that the user asked to continue, goes on
    # from its saved text; what it wrote in this round (since `tokens_before`) counts against
    # the plan's cap.
    continued = continuation_ids(engine.tokenizer, reply.content) if reply.content else []
    written = max(0, len(continued) - reply.tokens_before)
    if written:
        params = replace(params, max_new_tokens=max(1, params.max_new_tokens - written),
                         min_tokens=max(0, params.min_tokens - written))
    try:
        prompt_ids = build_prompt_ids(
            engine.tokenizer,
            _chat_messages(branch),
            context_length=engine.context_length - len(continued),
            reserve_tokens=min(params.max_new_tokens, engine.context_length // 2),
        )
    except PromptTooLong as error:
        _fail(reply, owner, str(error).capitalize() + ".")
        return
    request = engine.submit(
        prompt_ids + continued, params, priority=plan.priority,
        arrival_time=(reply.continued_at or reply.created_at).timestamp(),
    )
    _release_connection()
    with _STREAMS.streaming(reply.id, request):
        # Tokens the answer had before this round: counted when the answer was cut (a Continue),
        # else its saved text's (a takeover, whose first round was never counted).
        earlier = max(reply.tokens_before, len(continued))
        _stream(reply, owner, request, Carried(prompt_tokens=len(continued), answer_tokens=earlier))


@dataclass(frozen=True)
class Carried:
    """What a continued answer brings into this round: its text's tokens, appended to the
    prompt, and the tokens it counts as written already."""

    prompt_tokens: int = 0
    answer_tokens: int = 0


# Before its first text, the longest a reply's loop sleeps between looks at its clock (the
# timeout, the lease's renewal); an event wakes it at once. Stops are heard by _STREAMS.
QUIET_WAIT_S = 0.5


def _stream(reply: Message, owner: str, request: Request, carried: Carried = Carried()) -> None:
    started = time.monotonic()
    last_save = started
    pieces: list[str] = [reply.content] if reply.content else []
    length = len(reply.content)  # characters in `pieces`: the next text's offset
    live_reset(reply.id, reply.content)
    streamed = bool(pieces)
    while True:
        if streamed:
            # Text is flowing: look once per stream interval (or as soon as it ends) rather
            # than at every token; the web side gets one frame per interval either way.
            request.wait_finished(until_next_frame_s(_STREAMS.count))
            events = request.drain()
        else:
            # Until the first text goes out, every event counts: time to first token.
            event = request.next_event(timeout=QUIET_WAIT_S)
            events = [event, *request.drain()] if event is not None else []
        tokens = [e for e in events if isinstance(e, TokenEvent) and e.text]
        finish = next((e for e in events if isinstance(e, FinishEvent)), None)
        if tokens:
            text = text_storable("".join(token.text for token in tokens))  # streamed as saved
            pieces.append(text)
            streamed = True
            live_append(reply.id, length, text)
            publisher.publish_token(reply.id, text=text, index=carried.answer_tokens + tokens[0].index, offset=length)
            length += len(text)
        if finish is not None:
            _finish(reply, owner, "".join(pieces), finish, carried)
            return
        now = time.monotonic()
        if now - started > settings.CHAT_GENERATION_TIMEOUT_S:
            request.cancel("timeout")
        if now - last_save >= settings.CHAT_SAVE_EVERY_S:
            last_save = now
            if not _renew((reply.id, owner, "".join(pieces))):
                # Another worker took the reply over (this one stalled past its lease): it
                # writes from now on, so this one stops without writing anything more.
                logger.warning("lost the lease on message %s; stopping", reply.id)
                request.cancel("lease_lost")
                return
            _release_connection()


def _release_connection() -> None:
    """Hand this thread's database connection back while the reply streams, as Django does
    between requests. With a pool (PostgreSQL, CONN_MAX_AGE=0) a reply held one connection for
    its whole generation, so a worker ran at most DATABASE_POOL_SIZE replies at once and the
    rest waited (up to the pool's timeout) instead of joining the batch. A kept connection
    (SQLite, CONN_MAX_AGE>0) stays open, and so does one inside a transaction (tests run in one)."""
    for kept in connections.all(initialized_only=True):
        if not kept.in_atomic_block:
            kept.close_if_unusable_or_obsolete()


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
    """The replies this process is streaming now (`with _STREAMS.streaming(id, request):`),
    and one thread that looks for stop requests for all of them every CHAT_STOP_POLL_S. Each
    reply looking for its own at its frame ticks heard a stop only at its next frame, which
    at 256 replies and the default frame budget is 2.5 s away, while the engine wrote on.
    A look reads one key (`stops_changed_mark`) and the flags only of the replies new since
    the last look, or of all of them when a stop was asked for somewhere since: reading
    every flag every look cost the embedded server a third more CPU in a 256-call burst."""

    def __init__(self) -> None:
        self._requests: dict[int, Request] = {}
        self._new: set[int] = set()  # added since the last look: a stop may have been asked before
        self._stopped: set[int] = set()  # told to stop already: once is enough
        self._mark: str | None = None
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def count(self) -> int:
        return len(self._requests)

    @contextlib.contextmanager
    def streaming(self, message_id: int, request: Request):
        with self._lock:
            self._requests[message_id] = request
            self._new.add(message_id)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_for_ever, name="stop-watcher", daemon=True)
                self._watcher.start()
        try:
            yield
        finally:
            with self._lock:
                self._requests.pop(message_id, None)
                self._new.discard(message_id)
                self._stopped.discard(message_id)

    def stops_apply(self) -> None:
        """Cancel every streaming reply whose stop was asked for since the last look."""
        if not self._requests:
            return  # an idle worker does not read the cache 20 times a second
        mark = stops_changed_mark()  # read before the flags: a flag set before it changed is seen below
        with self._lock:
            everything = mark != self._mark
            self._mark = mark
            look = [message_id for message_id in (self._requests if everything else self._new)
                    if message_id not in self._stopped]
            self._new.clear()
        if not look:
            return
        for message_id in replies_stop_requested(message_ids=look):
            with self._lock:
                request = self._requests.get(message_id)
                if request is None:
                    continue  # it ended meanwhile
                self._stopped.add(message_id)
            request.cancel("stop")

    def _watch_for_ever(self) -> None:
        while True:
            time.sleep(settings.CHAT_STOP_POLL_S)
            try:
                self.stops_apply()
            except Exception:  # never let the watcher die: stops would go unheard until a restart
                logger.exception("looking for stop requests failed")


_STREAMS = _Streams()


def _sampling_params(reply: Message, plan) -> SamplingParams:
    """The chat's defaults, overridden by what an API call asked for, capped by the plan."""
    requested = dict(reply.sampling)
    requested["stop"] = tuple(requested.get("stop", ()))
    requested["max_new_tokens"] = min(requested.get("max_new_tokens", plan.max_output_tokens), plan.max_output_tokens)
    return SamplingParams(**{"temperature": settings.CHAT_TEMPERATURE, "top_p": settings.CHAT_TOP_P, **requested})


def _chat_messages(branch: list[Message]) -> list[dict[str, str]]:
    """The branch above a reply, as the chat template wants it; failed and empty turns left
    out. CHAT_SYSTEM_PROMPT goes first unless the branch brings its own system message."""
    messages = [
        {"role": message.role, "content": message.content}
        for message in branch
        if message.content and message.status != Message.Status.FAILED
    ]
    if settings.CHAT_SYSTEM_PROMPT and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT})
    return messages


def _finish(reply: Message, owner: str, content: str, finish: FinishEvent, carried: Carried = Carried()) -> None:
    # The live text goes once the row holds the whole answer, not before: a page resuming in
    # between would be sent the row's last periodic save, while the final frames went out
    # before it listened. Nor where another worker took the reply over: the text is its own.
    if finish.status is RequestStatus.STOPPED and finish.reason == "shutdown":
        # This worker is going away, not the answer: another worker continues it.
        lease_release(message_id=reply.id, owner=owner, content=content)
        live_clear(reply.id)
        return
    usage = finish.usage
    status = finish.status.value
    error = "The model stopped with an error. Please try again." if status == Message.Status.FAILED else ""
    record = UsageRecord(
        user=reply.conversation.owner,
        message_id=reply.id,
        plan=reply.plan,
        source=reply.conversation.source,
        status=status,
        prompt_tokens=usage.prompt_tokens - carried.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        queue_wait_s=usage.queue_wait_s,
        ttft_s=usage.ttft_s,
        decode_s=usage.decode_s,
        compute_s=usage.compute_s,
    )
    columns = {
        "content": content, "status": status, "finish_reason": finish.reason, "error": error,
        "prompt_tokens": usage.prompt_tokens - carried.prompt_tokens,
        "completion_tokens": usage.completion_tokens + carried.answer_tokens,
        "queue_wait_s": usage.queue_wait_s, "ttft_s": usage.ttft_s, "decode_s": usage.decode_s,
        "compute_s": usage.compute_s, "plan": reply.plan,
    }
    if not _end(_End(reply_id=reply.id, owner=owner, columns=columns, record=record)):
        logger.warning("lost the lease on message %s before saving its end; the new owner saves it", reply.id)
        return
    live_clear(reply.id)
    metrics.usage_observe(record)
    if status == Message.Status.FAILED:  # its text so far is saved; the reader is told it failed
        publisher.publish_error(reply.id, error=error)
        return
    usage_out = {**asdict(usage), "prompt_tokens": usage.prompt_tokens - carried.prompt_tokens,
                 "completion_tokens": usage.completion_tokens + carried.answer_tokens}
    publisher.publish_done(reply.id, status=status, finish_reason=finish.reason, content=content, usage=usage_out)
    if status == Message.Status.DONE:
        title_request(conversation=reply.conversation)


@dataclass(frozen=True)
class _End:
    """A reply's end as `_ends_save` writes it: `columns`, a value for each of END_COLUMNS."""

    reply_id: int
    owner: str
    columns: dict
    record: UsageRecord


END_COLUMNS = ("content", "status", "finish_reason", "error", "prompt_tokens", "completion_tokens", "queue_wait_s",
               "ttft_s", "decode_s", "compute_s", "plan")


def _ends_save(ends: list[_End]) -> list[bool]:
    """Save each reply's end and its usage record, in one transaction, where the worker still
    holds the reply's lease; whether each was saved."""
    sql = update_sql((*END_COLUMNS, "lease_owner", "lease_expires_at", "updated_at"), ("id", "lease_owner"))
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    saved = [False] * len(ends)
    with transaction.atomic(), connection.cursor() as cursor:
        for position in in_id_order([end.reply_id for end in ends]):
            end = ends[position]
            values = [end.columns[name] for name in END_COLUMNS]
            cursor.execute(sql, [*values, "", None, now, end.reply_id, end.owner])
            saved[position] = cursor.rowcount > 0
        usage_record_many(records=[end.record for end, kept in zip(ends, saved, strict=True) if kept])
    return saved


def _fail(reply: Message, owner: str, error: str) -> None:
    if Message.objects.filter(id=reply.id, lease_owner=owner).update(
        status=Message.Status.FAILED, error=error, finish_reason="error", lease_owner="", lease_expires_at=None,
        updated_at=timezone.now(),
    ):
        live_clear(reply.id)  # as in _finish: once the row has ended, and only where it was this worker's
    publisher.publish_error(reply.id, error=error)
