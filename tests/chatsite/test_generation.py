"""The task body, run in the test thread with the tiny model."""
import pytest

from billing.plans import FREE, plan_get
from chatsite.generation import reply_generate
from chatsite.models import Message
from chatsite.services import message_send
from tests.chatsite.factories import conversation_with_reply

pytestmark = pytest.mark.django_db


def test_a_pending_reply_is_generated_and_saved_with_its_accounting(make_user):
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "done" and reply.finish_reason in {"eos", "length"}
    assert reply.content
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert reply.queue_wait_s >= 0 and reply.ttft_s >= reply.queue_wait_s
    assert reply.decode_s >= 0 and reply.compute_s > 0


def test_running_the_task_twice_changes_nothing_the_second_time(make_user):
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    first = (reply.content, reply.updated_at)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert (reply.content, reply.updated_at) == first


def test_a_reply_stopped_while_queued_is_not_generated(make_user):
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    Message.objects.filter(id=reply.id).update(status=Message.Status.STOPPED)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "stopped" and reply.content == "" and reply.completion_tokens == 0


def test_the_model_is_given_the_whole_branch(make_user, tiny_engine_config):
    from inference.loading import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(tiny_engine_config.model))
    user = make_user()
    conversation, _, _ = conversation_with_reply(user, content="My name is Ada.", reply_text="Hello Ada!")
    _, reply, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=conversation.id, content="What is my name?")
    _, alone, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="What is my name?")
    reply_generate(message_id=reply.id)
    reply_generate(message_id=alone.id)
    reply.refresh_from_db()
    alone.refresh_from_db()
    history_tokens = len(tokenizer.encode("My name is Ada.")) + len(tokenizer.encode("Hello Ada!"))
    assert reply.prompt_tokens >= alone.prompt_tokens + history_tokens


def test_a_conversation_too_long_for_the_model_fails_with_a_clear_error(make_user):
    # the tiny model's context is 1024 tokens; this is about 1,600
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="lorem ipsum " * 400)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "failed"
    assert "too long" in reply.error


def test_a_reply_running_past_the_timeout_is_stopped_keeping_its_text(make_user, slow_engine, settings):
    settings.CHAT_GENERATION_TIMEOUT_S = 0.3
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert (reply.status, reply.finish_reason) == ("stopped", "timeout")
    assert reply.content and 0 < reply.completion_tokens < 100  # 20 ms a token, 512 allowed


@pytest.mark.django_db(transaction=True)  # the task runs on a thread, with a connection of its own
def test_a_stop_is_heard_at_once_between_frames(make_user, slow_engine, settings, monkeypatch):
    """Frames 60 s apart (as when many replies share the frame budget): the stop still ends
    the answer within moments, not at its next frame, which here is after its last token."""
    import threading

    from chatsite import generation, services

    settings.CHAT_STREAM_INTERVAL_S = 60.0
    first_text = threading.Event()
    monkeypatch.setattr(generation.publisher, "publish_token", lambda message_id, **_: first_text.set())
    user = make_user()
    _, reply, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello")
    Message.objects.filter(id=reply.id).update(sampling={"ignore_eos": True})  # 512 tokens at 20 ms: 10 s
    task = threading.Thread(target=reply_generate, kwargs={"message_id": reply.id})
    task.start()
    assert first_text.wait(30)
    assert services.reply_stop(user=user, message_id=reply.id) is services.StopOutcome.STOPPING
    task.join(60)
    reply.refresh_from_db()
    assert (reply.status, reply.finish_reason) == ("stopped", "stop")
    assert 0 < reply.completion_tokens < 200


def test_a_finished_generation_leaves_a_usage_record(make_user):
    from billing.models import UsageRecord

    user = make_user()
    _, reply, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    record = UsageRecord.objects.get(message_id=reply.id)
    assert (record.user, record.plan, record.source, record.status) == (user, "free", "chat", "done")
    assert (record.prompt_tokens, record.completion_tokens) == (reply.prompt_tokens, reply.completion_tokens)
    assert record.compute_s == reply.compute_s > 0 and record.ttft_s == reply.ttft_s


def test_the_plan_that_admitted_a_message_caps_its_answer(make_user):
    from billing.plans import PLUS
    from chatsite.generation import _sampling_params

    user = make_user()
    _, free_reply, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello")
    _, plus_reply, _ = message_send(user=user, plan=plan_get(PLUS), conversation_id=None, content="Hello")
    assert (free_reply.plan, plus_reply.plan) == ("free", "plus")
    assert _sampling_params(free_reply, plan_get(FREE)).max_new_tokens == 512
    assert _sampling_params(plus_reply, plan_get(PLUS)).max_new_tokens == 2048
    free_reply.sampling = {"max_new_tokens": 4000}  # an API call asking for more than its plan
    assert _sampling_params(free_reply, plan_get(FREE)).max_new_tokens == 512


def test_a_database_error_before_the_claim_runs_the_task_again(make_user, monkeypatch):
    from django.db import OperationalError

    from chatsite import generation
    from chatsite.tasks import generate_reply

    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    real_claim, calls = generation.leases_claim, []

    def flaky_claim(*, message_ids):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("too many clients already")
        return real_claim(message_ids=message_ids)

    monkeypatch.setattr(generation, "leases_claim", flaky_claim)
    monkeypatch.setattr(generate_reply, "retry_backoff", False)  # retry at once
    generate_reply.apply(args=[reply.id])
    reply.refresh_from_db()
    assert reply.status == "done" and reply.content and len(calls) == 2


def test_streaming_text_goes_out_first_at_once_then_once_per_interval(make_user, slow_engine, settings, monkeypatch):
    """The first text is published as soon as it exists; after it, the task looks once per
    CHAT_STREAM_INTERVAL_S (here 60 s, four times the whole answer), at the process's frame
    ticks: the rest is one frame, or two where a tick falls inside the answer."""
    from chatsite import generation

    settings.CHAT_STREAM_INTERVAL_S = 60.0
    frames = []
    monkeypatch.setattr(generation.publisher, "publish_token", lambda message_id, *, text, index, offset: frames.append((index, text)))
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.completion_tokens > 3
    assert 1 <= len(frames) <= 3
    assert frames[0][0] == 0
    assert "".join(text for _, text in frames) == reply.content


def test_the_stream_interval_stretches_so_that_all_replies_together_keep_to_the_frame_budget(settings):
    from chatsite.generation import stream_interval_s

    settings.CHAT_STREAM_INTERVAL_S = 0.1
    settings.CHAT_STREAM_FRAMES_PER_S = 100.0
    assert stream_interval_s(1) == 0.1
    assert stream_interval_s(10) == 0.1  # 10 replies × 10 frames/s: within the budget
    assert stream_interval_s(32) == pytest.approx(0.32)  # 32 replies share 100 frames/s
    settings.CHAT_STREAM_FRAMES_PER_S = 0.0  # no budget
    assert stream_interval_s(500) == 0.1


def test_every_reply_of_the_process_waits_for_the_same_frame_tick(settings):
    from chatsite.generation import until_next_frame_s

    settings.CHAT_STREAM_INTERVAL_S = 0.1
    settings.CHAT_STREAM_FRAMES_PER_S = 100.0
    # Two replies looking at different moments of one interval wake at the same tick, 10.1 s.
    assert 10.03 + until_next_frame_s(4, now=10.03) == pytest.approx(10.1)
    assert 10.08 + until_next_frame_s(4, now=10.08) == pytest.approx(10.1)
    # 32 replies: ticks 0.32 s apart.
    assert 10.0 + until_next_frame_s(32, now=10.0) == pytest.approx(10.24)


@pytest.mark.parametrize(("frames_per_s", "few"), [(1 / 60, True), (0.0, False)])
def test_the_frame_budget_is_what_the_streaming_loop_keeps_to(make_user, slow_engine, settings, monkeypatch, frames_per_s, few):
    """Tokens come every 20 ms and the interval is 10 ms; a budget of one frame a minute
    stretches the one reply's interval past the whole answer (a frame for the first token, at
    most one at a tick, the rest at the end), no budget leaves a frame a token."""
    from chatsite import generation

    settings.CHAT_STREAM_INTERVAL_S = 0.01
    settings.CHAT_STREAM_FRAMES_PER_S = frames_per_s
    frames = []
    monkeypatch.setattr(generation.publisher, "publish_token", lambda message_id, *, text, index, offset: frames.append(text))
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.completion_tokens > 4
    assert (len(frames) <= 3) is few
    assert "".join(frames) == reply.content


@pytest.fixture
def engine_in_a_process(tiny_engine_config):
    """The worker's engine is an EngineProcess (as on a GPU) for one test."""
    from dataclasses import replace

    from inference.engine_process import EngineProcess
    from inference.worker import engine_current, engine_set

    before = engine_current()
    engine = EngineProcess.start(replace(tiny_engine_config, process="on"))
    engine_set(engine)
    yield engine
    engine_set(before)
    engine.shutdown()


def test_an_engine_in_its_own_process_generates_the_same_reply(make_user, engine_in_a_process, tiny_engine_config):
    from inference import Engine
    from inference.worker import engine_set

    user = make_user()
    _, remote, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Tell me a story")
    reply_generate(message_id=remote.id)
    local_engine = Engine.load(tiny_engine_config)
    engine_set(local_engine)
    try:
        _, local, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Tell me a story")
        reply_generate(message_id=local.id)
    finally:
        local_engine.shutdown()
    remote.refresh_from_db()
    local.refresh_from_db()
    assert remote.status == "done" and remote.content == local.content and remote.content
    assert remote.completion_tokens == local.completion_tokens > 0
    assert remote.compute_s > 0 and remote.ttft_s >= remote.queue_wait_s >= 0


def test_a_reply_whose_engine_server_is_not_there_waits_in_the_queue(make_user, settings, monkeypatch, tmp_path):
    """A worker fed by an engine server that is down gives the reply back, unfailed and not
    counted as an attempt, and tells the next tasks at once rather than after another wait."""
    import time

    from inference import engine_process
    from inference.worker import engine_current, engine_set

    before = engine_current()
    engine_set(None)
    monkeypatch.setattr(engine_process, "CONNECT_WAIT_S", 0.3)
    settings.INFERENCE_ENGINE = {**settings.INFERENCE_ENGINE, "address": str(tmp_path / "nobody.sock")}
    user = make_user()
    try:
        _, first, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello")
        _, second, _ = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello")
        reply_generate(message_id=first.id)
        started = time.monotonic()
        reply_generate(message_id=second.id)
        assert time.monotonic() - started < 0.25  # told at once, not after another 0.3 s wait
    finally:
        engine_set(before)
    for reply in (first, second):
        reply.refresh_from_db()
        assert (reply.status, reply.attempts, reply.lease_owner, reply.content) == ("pending", 0, "", "")


def test_the_stop_watcher_reads_new_replies_flags_and_all_flags_after_a_stop_anywhere():
    from django.core.cache import cache

    from chatsite.generation import _Streams
    from chatsite.selectors import STOPS_CHANGED_KEY, stop_key

    class Request:
        def __init__(self) -> None:
            self.cancels = []

        def cancel(self, reason: str) -> None:
            self.cancels.append(reason)

    streams, early, running = _Streams(), Request(), Request()
    cache.set(stop_key(9001), True)  # asked before the reply began streaming here (a takeover)
    with streams.streaming(9001, early), streams.streaming(9002, running):
        streams.stops_apply()
        assert (early.cancels, running.cancels) == (["stop"], [])
        cache.set(stop_key(9002), True)
        streams.stops_apply()
        assert running.cancels == []  # nothing says a stop was asked for: the flags are not read
        cache.set(STOPS_CHANGED_KEY, object().__repr__())  # a new mark, as services.reply_stop sets after the flag
        streams.stops_apply()
        streams.stops_apply()
        assert (early.cancels, running.cancels) == (["stop"], ["stop"])  # each told once
    assert streams.count == 0
    cache.delete_many([stop_key(9001), stop_key(9002)])


def test_a_page_resuming_while_the_end_is_saved_is_sent_the_whole_answer(make_user, monkeypatch):
    """Between a reply's last frame and its end in the database, the row still says streaming
    with the last periodic save: what a resume sends then is the live text, which must still
    hold everything (the last frames went out before that page listened)."""
    from chatsite import generation
    from chatsite.live import live_text

    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    seen_while_saving = []
    end = generation._end

    def saving(item):
        seen_while_saving.append((live_text(item.reply_id, ""), item.columns["content"]))
        return end(item)

    monkeypatch.setattr(generation, "_end", saving)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "done" and reply.content
    assert seen_while_saving == [(reply.content, reply.content)]
    assert live_text(reply.id, "") == ""  # gone once the row has it


@pytest.fixture
def free_cut_at_8(settings):
    """Free answers are cut at 8 tokens (the tiny model rarely ends before)."""
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "max_output_tokens": 8}}
    return plan_get(FREE)


def cut_answer(user, plan):
    _, reply, _ = message_send(user=user, plan=plan, conversation_id=None, content="Count to a hundred")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert (reply.status, reply.finish_reason, reply.completion_tokens) == ("done", "length", 8)
    return reply


def test_an_answer_can_be_continued_again_and_again(make_user, free_cut_at_8, settings):
    """Each Continue is a round of its own: the claims of earlier rounds do not count towards
    CHAT_MAX_ATTEMPTS (the fourth round once failed as "could not be finished after 3 tries")."""
    from chatsite.services import reply_continue

    user = make_user()
    reply = cut_answer(user, free_cut_at_8)
    for round_ in range(2, settings.CHAT_MAX_ATTEMPTS + 3):
        before = reply.content
        reply_continue(user=user, plan=free_cut_at_8, message_id=reply.id)
        reply_generate(message_id=reply.id)
        reply.refresh_from_db()
        assert (reply.status, reply.finish_reason, reply.error) == ("done", "length", ""), round_
        assert reply.completion_tokens == 8 * round_ and reply.content.startswith(before)


def test_a_stop_that_came_as_the_answer_ended_does_not_stop_its_continuation(make_user, free_cut_at_8, slow_engine):
    from chatsite.services import StopOutcome, reply_continue, reply_stop

    user = make_user()
    reply = cut_answer(user, free_cut_at_8)
    # The stop arrived while the reply was still streaming, and the engine ended it at its
    # length before hearing it: the flag stayed.
    Message.objects.filter(id=reply.id).update(status=Message.Status.STREAMING)
    assert reply_stop(user=user, message_id=reply.id) is StopOutcome.STOPPING
    Message.objects.filter(id=reply.id).update(status=Message.Status.DONE)
    reply_continue(user=user, plan=free_cut_at_8, message_id=reply.id)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert (reply.status, reply.finish_reason, reply.completion_tokens) == ("done", "length", 16)


def test_a_continued_round_is_timed_from_the_continue_not_from_the_question(make_user, free_cut_at_8):
    """Its queue wait and time to first token feed the console's histograms: a Continue an
    hour after the question waited no hour."""
    import datetime

    from django.utils import timezone

    from billing.models import UsageRecord
    from chatsite.services import reply_continue

    user = make_user()
    reply = cut_answer(user, free_cut_at_8)
    Message.objects.filter(id=reply.id).update(created_at=timezone.now() - datetime.timedelta(hours=1))
    reply_continue(user=user, plan=free_cut_at_8, message_id=reply.id)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.completion_tokens == 16
    assert 0 <= reply.queue_wait_s <= reply.ttft_s < 60
    assert all(ttft < 60 for ttft in UsageRecord.objects.filter(message_id=reply.id).values_list("ttft_s", flat=True))


def test_a_nul_the_model_writes_is_streamed_and_saved_as_the_replacement_character(make_user, monkeypatch):
    """A byte-level vocabulary has a token for the NUL byte, which PostgreSQL refuses in text
    (the reply failed, and with it every reply saved in the same batch)."""
    from chatsite import publisher
    from inference.detokenize import IncrementalDetokenizer

    add = IncrementalDetokenizer.add
    monkeypatch.setattr(IncrementalDetokenizer, "add", lambda self, token_id: add(self, token_id) + "\x00")
    streamed = []
    publish_token = publisher.publish_token
    monkeypatch.setattr(publisher, "publish_token",
                        lambda message_id, **frame: streamed.append(frame["text"]) or publish_token(message_id, **frame))
    _, reply, _ = message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="Hello")
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "done"
    assert "\x00" not in reply.content and reply.content.count("\ufffd") == reply.completion_tokens
    assert "".join(streamed) == reply.content
