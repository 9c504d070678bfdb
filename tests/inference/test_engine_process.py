"""The engine in a process of its own answers as the engine in this process does, and a child
that dies or stops leaves no request waiting for ever."""
import os
import signal
import threading
import time
from dataclasses import replace

import pytest

from inference import Engine, FinishEvent, RequestStatus, SamplingParams, TokenEvent
from inference.engine import EngineShuttingDown
from inference.engine_process import EngineProcess, Watchdog, coalesce, uses_process
from inference.worker import engine_get, engine_set, engine_shutdown
from tests.inference.test_engine import collect, prompt, run


@pytest.fixture(scope="module")
def process_config(tiny_engine_config):
    return replace(tiny_engine_config, process="on")


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def engine_process(process_config, request):
    """Both runners in the child: on a GPU it runs the GPU runner, steps overlapped."""
    engine = EngineProcess.start(replace(process_config, runner=request.param))
    yield engine
    engine.shutdown()


@pytest.fixture
def own_engine_process(process_config):
    engine = EngineProcess.start(process_config)
    yield engine
    engine.shutdown()


PARAMS = [
    SamplingParams(temperature=0, max_new_tokens=24),
    SamplingParams(temperature=0.8, top_p=0.9, top_k=40, max_new_tokens=24, seed=7),
    SamplingParams(temperature=0, repetition_penalty=1.3, max_new_tokens=24),
    SamplingParams(temperature=0.9, max_new_tokens=16, best_of=3, seed=11),
]


def test_answers_equal_the_engine_in_this_process(engine_process, tiny_engine_config):
    local = Engine.load(tiny_engine_config)
    try:
        texts = ["Hello", "What is the capital of France?", "Write a poem", "Tell me a joke"]
        expected = [run(local.submit(prompt(local, text), params)) for text, params in zip(texts, PARAMS, strict=True)]
    finally:
        local.shutdown()
    # All four at once in the child: batched together, as they were not in this process.
    requests = [engine_process.submit(prompt(engine_process, text), params) for text, params in zip(texts, PARAMS, strict=True)]
    for request, (text, _, finish) in zip(requests, expected, strict=True):
        got_text, tokens, got_finish = run(request)
        assert got_text == text and text
        assert (got_finish.status, got_finish.reason) == (finish.status, finish.reason)
        assert got_finish.usage.completion_tokens == finish.usage.completion_tokens
        assert got_finish.usage.compute_s > 0 and got_finish.usage.ttft_s is not None
        assert request.status is finish.status and request.usage == got_finish.usage
        # Indices rise: each event's index is its first token's.
        indices = [t.index for t in tokens]
        assert indices == sorted(indices) and indices[0] == 0


def test_a_stop_string_ends_the_answer_before_it(engine_process):
    ids = prompt(engine_process)
    text, _, _ = run(engine_process.submit(ids, SamplingParams(temperature=0, max_new_tokens=24)))
    stop = text[6:9]
    cut, _, finish = run(engine_process.submit(ids, SamplingParams(temperature=0, max_new_tokens=24, stop=(stop,))))
    assert finish.reason == "stop_string" and cut == text[: text.index(stop)]


def test_cancel_ends_a_long_request_within_moments_keeping_its_text(engine_process):
    request = engine_process.submit(prompt(engine_process), SamplingParams(temperature=0, max_new_tokens=900, ignore_eos=True))
    first = request.next_event(timeout=30)
    assert isinstance(first, TokenEvent)
    request.cancel("stop")
    started = time.monotonic()
    events = collect(request)
    finish = events[-1]
    assert (finish.status, finish.reason) == (RequestStatus.STOPPED, "stop")
    assert time.monotonic() - started < 5
    assert 0 < finish.usage.completion_tokens < 900


def test_a_higher_priority_request_overtakes_a_full_batch(process_config):
    engine = EngineProcess.start(replace(process_config, max_running=1))
    try:
        low = engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=600, ignore_eos=True))
        assert isinstance(low.next_event(timeout=30), TokenEvent)
        high = engine.submit(prompt(engine, "Quick"), SamplingParams(temperature=0, max_new_tokens=4), priority=10)
        _, _, finish = run(high)
        assert finish.status is RequestStatus.DONE
        assert not low.wait_finished(0)  # it was preempted, not waited for
        low.cancel()
        assert run(low)[2].status is RequestStatus.STOPPED
    finally:
        engine.shutdown()


def test_a_prompt_too_long_is_refused_in_the_caller(engine_process):
    with pytest.raises(ValueError, match="context holds"):
        engine_process.submit(list(range(5, 5 + engine_process.context_length)), SamplingParams())


def test_snapshot_reports_the_childs_counters(engine_process):
    run(engine_process.submit(prompt(engine_process), SamplingParams(temperature=0, max_new_tokens=4)))
    deadline = time.monotonic() + 5
    while engine_process.snapshot().finished == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = engine_process.snapshot()
    assert stats.finished >= 1 and stats.steps >= 4 and stats.max_running == 8


def test_shutdown_ends_running_requests_as_shutdown_and_refuses_more(own_engine_process):
    request = own_engine_process.submit(prompt(own_engine_process), SamplingParams(temperature=0, max_new_tokens=900, ignore_eos=True))
    assert isinstance(request.next_event(timeout=30), TokenEvent)
    own_engine_process.shutdown()
    finish = run(request)[2]
    assert (finish.status, finish.reason) == (RequestStatus.STOPPED, "shutdown")
    assert finish.usage.completion_tokens > 0
    assert not own_engine_process.alive
    with pytest.raises(EngineShuttingDown):
        own_engine_process.submit(prompt(own_engine_process), SamplingParams())


def test_a_child_that_dies_ends_open_requests_and_the_worker_starts_another(own_engine_process, process_config):
    request = own_engine_process.submit(prompt(own_engine_process), SamplingParams(temperature=0, max_new_tokens=900, ignore_eos=True))
    assert isinstance(request.next_event(timeout=30), TokenEvent)
    os.kill(own_engine_process.pid, signal.SIGKILL)
    events = collect(request)
    assert isinstance(events[-1], FinishEvent)
    assert (events[-1].status, events[-1].reason) == (RequestStatus.STOPPED, "shutdown")
    assert not own_engine_process.alive
    engine_set(own_engine_process)
    try:
        fresh = engine_get(process_config)
        assert fresh is not own_engine_process and fresh.alive
        assert run(fresh.submit(prompt(fresh), SamplingParams(temperature=0, max_new_tokens=4)))[2].status is RequestStatus.DONE
    finally:
        engine_shutdown()


def test_a_model_that_cannot_load_raises_in_the_caller(process_config, tmp_path):
    with pytest.raises(Exception, match=r"tokenizer|model|No such|not"):
        EngineProcess.start(replace(process_config, model=str(tmp_path / "missing")))


def test_coalesce_joins_each_requests_tokens_in_order():
    finish = FinishEvent(status=RequestStatus.DONE, reason="length", usage=None)
    batch = [(1, TokenEvent("a", 0)), (2, TokenEvent("x", 5)), (1, TokenEvent("", 1)), (1, TokenEvent("b", 2)),
             (1, finish), (2, TokenEvent("y", 6)), (3, finish)]
    assert coalesce(batch) == [(1, "ab", 0, finish), (2, "xy", 5, None), (3, "", -1, finish)]


def test_the_process_is_used_on_cuda_or_when_asked(process_config):
    assert uses_process(process_config)
    assert not uses_process(replace(process_config, process="off"))
    assert not uses_process(replace(process_config, process="auto", device="cpu"))


def test_the_watchdog_leaves_an_idle_or_busy_engine_alone_and_calls_out_a_hung_one(tiny_engine_config):
    engine = Engine.load(tiny_engine_config)
    decode, stuck, released = engine.runner.decode, threading.Event(), threading.Event()

    def decode_slowly_or_hang(*args, **kwargs):
        time.sleep(0.02)
        if stuck.is_set():
            released.wait(30)
        return decode(*args, **kwargs)

    engine.runner.decode = decode_slowly_or_hang
    hung: list[float] = []
    try:
        Watchdog(engine, 1.0, hung=hung.append)
        time.sleep(2.5)  # idle, more than twice the limit
        tokens = run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=60, ignore_eos=True)))[1]
        assert len(tokens) == 60 and hung == []  # busy for longer than the limit, in 20 ms steps
        stuck.set()
        request = engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=60, ignore_eos=True))
        deadline = time.monotonic() + 10
        while not hung and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(hung) == 1 and hung[0] > 1.0
    finally:
        released.set()
        engine.shutdown()
    assert run(request)[2].status in (RequestStatus.DONE, RequestStatus.STOPPED)
