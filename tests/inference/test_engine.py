from dataclasses import replace

import pytest
import torch

from inference import Engine, EngineConfig, FinishEvent, RequestStatus, SamplingParams, TokenEvent
from inference.prompts import build_prompt_ids

# What the engine promises holds on both runners: the CPU runner's padded batch and the GPU
# runner's slots (here on the CPU, without CUDA graphs; tests/inference/test_cuda.py on a GPU).
RUNNERS = ["cpu", "gpu"]


@pytest.fixture(params=RUNNERS)
def engine(tiny_engine_config, request):
    engine = Engine.load(replace(tiny_engine_config, runner=request.param))
    yield engine
    engine.shutdown()


@pytest.fixture(params=RUNNERS)
def one_slot_engine(tiny_engine_config, request):
    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", max_running=1, runner=request.param))
    yield engine
    engine.shutdown()


def prompt(engine, text="Hello"):
    return build_prompt_ids(engine.tokenizer, [{"role": "user", "content": text}], context_length=1024, reserve_tokens=64)


def collect(request, timeout: float = 30) -> list:
    """Every event of `request` up to its finish; fails (rather than waits for ever) if none
    comes for `timeout` seconds."""
    events = []
    for event in request.events(timeout=timeout):
        assert event is not None, f"the engine went quiet for {timeout} s"
        events.append(event)
    return events


def run(request):
    events = collect(request)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    return "".join(t.text for t in tokens), tokens, finish


def test_generates_up_to_max_new_tokens_and_reports_usage(engine):
    ids = prompt(engine)
    text, tokens, finish = run(engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=12)))
    assert finish.status is RequestStatus.DONE and finish.reason == "length"
    assert [t.index for t in tokens] == list(range(12))
    assert text
    usage = finish.usage
    assert usage.prompt_tokens == len(ids) and usage.completion_tokens == 12
    assert 0 <= usage.queue_wait_s <= usage.ttft_s
    assert usage.decode_s > 0 and usage.compute_s > 0


def test_greedy_and_seeded_sampling_repeat_exactly(engine):
    ids = prompt(engine)
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    assert run(engine.submit(ids, greedy))[0] == run(engine.submit(ids, greedy))[0]
    seeded = SamplingParams(temperature=1.0, max_new_tokens=16, seed=42)
    assert run(engine.submit(ids, seeded))[0] == run(engine.submit(ids, seeded))[0]
    other = SamplingParams(temperature=1.0, max_new_tokens=16, seed=43)
    assert run(engine.submit(ids, seeded))[0] != run(engine.submit(ids, other))[0]


def test_concurrent_requests_each_get_their_own_answer(engine):
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    alone = {text: run(engine.submit(prompt(engine, text), greedy))[0] for text in ("one", "two", "three")}
    together = {text: engine.submit(prompt(engine, text), greedy) for text in alone}
    assert {text: run(request)[0] for text, request in together.items()} == alone


def test_cancel_ends_the_request_keeping_its_text_and_frees_the_slot(one_slot_engine):
    engine = one_slot_engine
    long = engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=900))
    queued = engine.submit(prompt(engine, "next"), SamplingParams(temperature=0, max_new_tokens=4))
    first = next(long.events(timeout=30))
    assert isinstance(first, TokenEvent)
    long.cancel("stop")
    finish = run(long)[2]
    assert finish.status is RequestStatus.STOPPED and finish.reason == "stop"
    assert 1 <= finish.usage.completion_tokens < 900
    assert len(long.output_ids) == finish.usage.completion_tokens
    assert run(queued)[2].status is RequestStatus.DONE  # the freed slot was reused


def test_waiting_requests_are_admitted_by_priority(one_slot_engine):
    engine = one_slot_engine
    blocker = engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=900))
    next(blocker.events(timeout=30))
    free = engine.submit(prompt(engine, "free"), SamplingParams(temperature=0, max_new_tokens=2), priority=0)
    plus = engine.submit(prompt(engine, "plus"), SamplingParams(temperature=0, max_new_tokens=2), priority=10)
    blocker.cancel()
    run(blocker)
    plus_finish, free_finish = run(plus)[2], run(free)[2]
    assert plus.arrival_time > free.arrival_time
    assert plus.arrival_time + plus_finish.usage.queue_wait_s < free.arrival_time + free_finish.usage.queue_wait_s


def test_compute_seconds_of_all_requests_sum_to_the_engine_busy_time(engine):
    requests = [engine.submit(prompt(engine, str(n)), SamplingParams(temperature=0, max_new_tokens=8)) for n in range(5)]
    total = sum(run(request)[2].usage.compute_s for request in requests)
    assert total == pytest.approx(engine.snapshot().busy_s, rel=1e-9)


def test_shutdown_stops_running_requests_with_their_text(tiny_engine_config):
    engine = Engine.load(tiny_engine_config)
    request = engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=900))
    next(request.events(timeout=30))
    engine.shutdown()
    _, _, finish = run(request)
    assert finish.status is RequestStatus.STOPPED and finish.reason == "shutdown"
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(prompt(engine), SamplingParams())


def test_a_prompt_longer_than_the_context_is_refused(engine):
    with pytest.raises(ValueError, match="context"):
        engine.submit(list(range(5, 2000)), SamplingParams())


def test_a_bf16_engine_decodes_with_prepacked_weights_where_onednn_computes_bf16(tiny_engine_config):
    from inference.decoder import can_prepack

    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="bf16"))
    try:
        assert engine.runner.prepacked is can_prepack(torch.bfloat16, engine.runner.device)
        _, tokens, finish = run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=8)))
        assert finish.status is RequestStatus.DONE and len(tokens) == 8
    finally:
        engine.shutdown()


def test_auto_dtype_without_native_bf16_decodes_small_steps_with_a_bf16_copy(tiny_engine_config, monkeypatch):
    from inference import runner

    monkeypatch.setattr(runner, "_cpu_supports_bf16", lambda: False)
    engines = {dtype: Engine.load(EngineConfig(model=tiny_engine_config.model, dtype=dtype)) for dtype in ("auto", "fp32")}
    try:
        assert engines["auto"].runner.small_batch_dtype is torch.bfloat16
        assert engines["fp32"].runner.small_batch_dtype is None
        for engine in engines.values():
            _, tokens, finish = run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=8)))
            assert finish.status is RequestStatus.DONE and len(tokens) == 8
    finally:
        for engine in engines.values():
            engine.shutdown()


@pytest.mark.real_model
def test_the_real_model_knows_the_capital_of_france():
    engine = Engine.load(EngineConfig())
    try:
        ids = build_prompt_ids(
            engine.tokenizer,
            [{"role": "user", "content": "What is the capital of France?"}],
            context_length=engine.context_length,
            reserve_tokens=64,
        )
        text, _, finish = run(engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=40)))
    finally:
        engine.shutdown()
    assert "Paris" in text
    assert finish.status is RequestStatus.DONE


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_preempted_request_resumes_with_its_text_intact(tiny_engine_config, runner):
    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", max_running=1, runner=runner))
    try:
        greedy = SamplingParams(temperature=0, max_new_tokens=60)
        expected = run(engine.submit(prompt(engine, "free"), greedy))[0]
        free = engine.submit(prompt(engine, "free"), greedy, priority=0)
        next(free.events(timeout=30))
        plus = engine.submit(prompt(engine, "plus"), SamplingParams(temperature=0, max_new_tokens=5), priority=10)
        plus_finish = run(plus)[2]
        text, _, finish = run(free)
        assert free.preemptions == 1 and engine.snapshot().preemptions == 1
        assert plus_finish.status is RequestStatus.DONE
        # the first token event was taken above; the rest, joined, completes the same text
        assert expected.endswith(text) and len(text) < len(expected)
        assert finish.usage.completion_tokens == 60
    finally:
        engine.shutdown()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_preempted_seeded_answer_is_the_answer_it_gives_alone(tiny_engine_config, runner):
    """Preempted while a step of its is on the device (the GPU runner launches the next step
    before reading the last back), a seeded request keeps that step's token and its draws
    stay in order."""
    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", max_running=1, runner=runner))
    try:
        seeded = SamplingParams(temperature=1.0, seed=11, max_new_tokens=60, ignore_eos=True)
        alone = engine.submit(prompt(engine, "free"), seeded)
        run(alone)
        free = engine.submit(prompt(engine, "free"), seeded, priority=0)
        next(free.events(timeout=30))
        plus = engine.submit(prompt(engine, "plus"), SamplingParams(temperature=0, max_new_tokens=5), priority=10)
        assert run(plus)[2].status is RequestStatus.DONE
        assert run(free)[2].usage.completion_tokens == 60
        assert free.preemptions == 1
        assert free.output_ids == alone.output_ids
    finally:
        engine.shutdown()


def test_the_gpu_runner_launches_a_step_before_reading_the_last_one_back(tiny_engine_config, monkeypatch):
    """The host's work on a step's tokens (text, finishes) overlaps the device's next step:
    each step is launched before the one before it is read back."""
    from inference import engine as engine_module

    engine = Engine.load(replace(tiny_engine_config, runner="gpu"))
    calls = []
    real_forward, real_result = engine.runner.forward, engine_module._Launched.result
    monkeypatch.setattr(engine.runner, "forward", lambda known: calls.append("launch") or real_forward(known))
    monkeypatch.setattr(engine_module._Launched, "result", lambda self: calls.append("read") or real_result(self))
    try:
        finish = run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)))[2]
        assert finish.usage.completion_tokens == 6
        # The first token comes from the prefill, the other five from five steps, each read
        # back after the next is launched; the sixth step's token is dropped (the answer was
        # done), read back at once since nothing is left to launch.
        assert calls == ["launch", *["launch", "read"] * 5, "read"]
    finally:
        engine.shutdown()


def test_stop_strings_end_the_answer_before_them_and_are_never_streamed(engine):
    ids = prompt(engine)
    sampled = SamplingParams(temperature=1.0, seed=5, max_new_tokens=40)
    full = run(engine.submit(ids, sampled))[0]
    stop = full[20:24]
    assert stop.strip(), "pick a stop string with visible text"
    text, tokens, finish = run(engine.submit(ids, SamplingParams(**{**sampled.__dict__, "stop": (stop, "never seen")})))
    assert finish.reason == "stop_string"
    assert text == full[: full.index(stop)]
    assert all(stop not in t.text for t in tokens)


def test_min_tokens_and_ignore_eos_hold_off_the_end_of_sequence(engine):
    eos = next(iter(engine.eos_token_ids))
    # A prompt that ends in the chat template's end token makes the tiny model likely to repeat it;
    # whatever it does, it may not end before min_tokens nor ever with ignore_eos.
    ids = [*prompt(engine), eos]
    finish = run(engine.submit(ids, SamplingParams(temperature=1.0, seed=3, max_new_tokens=20, min_tokens=20)))[2]
    assert finish.usage.completion_tokens == 20 and finish.reason == "length"
    _, _, finish = run(engine.submit(ids, SamplingParams(temperature=1.0, seed=3, max_new_tokens=30, ignore_eos=True)))
    assert finish.usage.completion_tokens == 30


def test_best_of_returns_the_candidate_with_the_highest_normalised_log_probability(engine):
    ids = prompt(engine)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=100)
    singles = [
        engine.submit(ids, SamplingParams(temperature=1.0, max_new_tokens=12, seed=100 + n)) for n in range(4)
    ]
    results = [(run(r)[0], r.cumulative_logprob / len(r.output_ids)) for r in singles]
    best = engine.submit(ids, SamplingParams(**{**params.__dict__, "best_of": 4}))
    text, tokens, finish = run(best)
    assert text == max(results, key=lambda result: result[1])[0]
    assert len(tokens) == 1  # candidates are not streamed; the winner comes whole
    assert finish.usage.completion_tokens == 48  # all four candidates were paid for


def test_a_best_of_answer_ends_before_its_stop_string(engine):
    ids = prompt(engine)
    fulls = [run(engine.submit(ids, SamplingParams(temperature=1.0, max_new_tokens=16, seed=200 + n)))[0] for n in range(3)]
    stop = " "
    assert all(stop in full.strip() for full in fulls), "every candidate's text should reach the stop string"
    text, _, finish = run(engine.submit(ids, SamplingParams(temperature=1.0, max_new_tokens=16, seed=200, best_of=3, stop=(stop,))))
    assert finish.status is RequestStatus.DONE and finish.reason == "stop_string"
    assert stop not in text and any(full.startswith(text) for full in fulls)


def test_cancelling_a_best_of_request_stops_every_candidate(engine):
    request = engine.submit(prompt(engine), SamplingParams(temperature=1.0, max_new_tokens=900, best_of=3))
    while not all(c.output_ids for c in request.candidates):
        pass
    request.cancel("stop")
    _, _, finish = run(request)
    assert finish.status is RequestStatus.STOPPED
    assert all(c.status is RequestStatus.STOPPED for c in request.candidates)


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_shared_prefix_cache_changes_no_answer(tiny_engine_config, runner):
    cached = Engine.load(replace(tiny_engine_config, runner=runner))
    plain = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", prefix_cache=False, runner=runner))
    try:
        assert cached.runner._prefix and not plain.runner._prefix
        greedy = SamplingParams(temperature=0, max_new_tokens=24)
        texts = ("one", "a longer question about many things", "three")
        with_cache = [cached.submit(prompt(cached, text), greedy) for text in texts]  # prefilled together
        without = [run(plain.submit(prompt(plain, text), greedy))[0] for text in texts]
        assert [run(request)[0] for request in with_cache] == without
    finally:
        cached.shutdown()
        plain.shutdown()


def _submit_plus_mid_step(engine, frees, params, *, after=None):
    """Submit a Plus request from inside the engine's thread, between two layers of a decode
    step of `frees` (once each has 2 tokens); record the Free lengths then and at the Plus
    request's first token. `after(plus)` runs right after the engine's own between-layers work."""
    seen = {}
    original = engine._interject

    def interject():
        if "plus" not in seen and all(len(f.output_ids) >= 2 for f in frees):
            plus = engine.submit(prompt(engine, "plus"), params, priority=10)
            seen["plus"], seen["at_submit"] = plus, [len(f.output_ids) for f in frees]
            emit = plus.emit

            def recording_emit(event):
                seen.setdefault("at_first_token", [len(f.output_ids) for f in frees])
                emit(event)

            plus.emit = recording_emit
            original()
            if after:
                after(plus)
            return
        original()

    engine._interject = interject
    return seen


def test_a_plus_request_gets_its_first_token_within_the_decode_step_under_way(tiny_engine_config):
    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", max_running=2))
    try:
        greedy, short = SamplingParams(temperature=0, max_new_tokens=40), SamplingParams(temperature=0, max_new_tokens=8)
        alone = {text: run(engine.submit(prompt(engine, text), params))[0]
                 for text, params in (("one", greedy), ("two", greedy), ("plus", short))}
        frees = [engine.submit(prompt(engine, text), greedy, priority=0) for text in ("one", "two")]
        seen = _submit_plus_mid_step(engine, frees, short)
        plus_text, _, plus_finish = run(_wait_for(seen, "plus"))
        assert seen["at_first_token"] == seen["at_submit"]  # no step of the Free rows ended first
        assert plus_finish.status is RequestStatus.DONE and plus_text == alone["plus"]
        assert plus_finish.usage.completion_tokens == 8 and plus_finish.usage.compute_s > 0
        assert [run(free)[0] for free in frees] == [alone["one"], alone["two"]]  # the preempted one resumed intact
        assert sum(f.preemptions for f in frees) == 1
        requests = [*frees, seen["plus"]]
        assert engine.snapshot().busy_s >= sum(r.usage.compute_s for r in requests)
    finally:
        engine.shutdown()


def _wait_for(seen, key, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while key not in seen:
        assert time.monotonic() < deadline, f"{key} never came"
        time.sleep(0.01)
    return seen[key]


def test_compute_seconds_still_sum_to_busy_time_with_a_request_prefilled_mid_step(tiny_engine_config):
    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", max_running=2))
    try:
        greedy = SamplingParams(temperature=0, max_new_tokens=30)
        frees = [engine.submit(prompt(engine, text), greedy) for text in ("one", "two")]
        seen = _submit_plus_mid_step(engine, frees, SamplingParams(temperature=0, max_new_tokens=5))
        plus = _wait_for(seen, "plus")
        total = sum(run(request)[2].usage.compute_s for request in [*frees, plus])
        assert seen["at_first_token"] == seen["at_submit"]
        assert total == pytest.approx(engine.snapshot().busy_s, rel=1e-9)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("case", ["cancelled before it joins", "done at its first token"])
def test_a_request_prefilled_mid_step_that_never_joins_leaves_no_row_behind(tiny_engine_config, case):
    engine = Engine.load(EngineConfig(model=tiny_engine_config.model, dtype="fp32", max_running=2))
    try:
        greedy = SamplingParams(temperature=0, max_new_tokens=30)
        alone = [run(engine.submit(prompt(engine, text), greedy))[0] for text in ("one", "two")]
        frees = [engine.submit(prompt(engine, text), greedy) for text in ("one", "two")]
        tokens = 1 if case == "done at its first token" else 20
        after = (lambda plus: plus.cancel("stop")) if case == "cancelled before it joins" else None
        seen = _submit_plus_mid_step(engine, frees, SamplingParams(temperature=0, max_new_tokens=tokens), after=after)
        text, events, finish = run(_wait_for(seen, "plus"))
        assert len(events) == 1 and text  # its first token went out either way
        expected = RequestStatus.STOPPED if after else RequestStatus.DONE
        assert finish.status is expected and finish.usage.completion_tokens == 1
        assert [run(free)[0] for free in frees] == alone  # nobody lost text, nobody was preempted
        assert sum(f.preemptions for f in frees) == 0
        assert engine.runner.rows == [] and engine.runner._pending == []
        assert not engine.snapshot().waiting
    finally:
        engine.shutdown()


def test_a_vanishing_temperature_is_greedy_beside_another_running_request(engine):
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    alone = run(engine.submit(prompt(engine, "one"), greedy))[0]
    running = engine.submit(prompt(engine, "two"), SamplingParams(temperature=0.8, seed=1, max_new_tokens=40))
    tiny = engine.submit(prompt(engine, "one"), SamplingParams(temperature=1e-300, max_new_tokens=24))
    text, _, finish = run(tiny)
    assert finish.status is RequestStatus.DONE and text == alone
    assert run(running)[2].status is RequestStatus.DONE


def test_a_request_whose_sampling_fails_fails_alone(engine, sampling_fails_for_seed):
    others = [engine.submit(prompt(engine, text), SamplingParams(temperature=0.7, seed=n, max_new_tokens=30))
              for n, text in enumerate(("one", "two", "three"))]
    doomed = engine.submit(prompt(engine, "four"), SamplingParams(temperature=0.7, seed=sampling_fails_for_seed, max_new_tokens=30))
    finish = run(doomed)[2]
    assert finish.status is RequestStatus.FAILED and finish.reason.startswith("error:")
    for request in others:
        _, tokens, finish = run(request)
        assert finish.status is RequestStatus.DONE and len(tokens) > 0
    assert run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=4)))[2].status is RequestStatus.DONE


def step_method(engine) -> str:
    """The runner's call that runs a decode step: the GPU runner's `forward` launches one whose
    input tokens stay on the device."""
    return "forward" if engine.runner.overlap else "decode"


def test_a_step_that_fails_once_is_retried_and_the_answers_are_unchanged(engine, monkeypatch):
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    alone = {text: run(engine.submit(prompt(engine, text), greedy))[0] for text in ("one", "two")}
    method = step_method(engine)
    real_decode, calls = getattr(engine.runner, method), []

    def decode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("a device error in the middle of a step")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(engine.runner, method, decode)
    together = {text: engine.submit(prompt(engine, text), greedy) for text in alone}
    results = {text: run(request) for text, request in together.items()}
    assert len(calls) > 5
    assert {text: result[0] for text, result in results.items()} == alone
    assert all(result[2].status is RequestStatus.DONE for result in results.values())


def test_requests_in_two_failed_steps_fail_and_the_engine_serves_on(engine, monkeypatch):
    method = step_method(engine)
    real_decode, broken = getattr(engine.runner, method), [True]

    def decode(*args, **kwargs):
        if broken[0]:
            raise RuntimeError("the device is gone")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(engine.runner, method, decode)
    finish = run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=8)))[2]
    assert finish.status is RequestStatus.FAILED
    broken[0] = False
    assert run(engine.submit(prompt(engine), SamplingParams(temperature=0, max_new_tokens=8)))[2].status is RequestStatus.DONE


@pytest.mark.real_model
def test_the_4_bit_decode_path_answers_as_the_de_quantized_one():
    """CHAT_QUANT=auto decodes single streams on the GGUF's own int4 weights (where the CPU
    computes bf16); greedy answers match the de-quantized bf16 weights'."""
    questions = ["What is the capital of France?", "Name three colours of the rainbow."]
    answers = {}
    for quant in ("auto", "none"):
        engine = Engine.load(EngineConfig(quant=quant))
        try:
            if quant == "auto" and not engine.runner.quantized:
                pytest.skip(f"CHAT_QUANT=auto keeps the de-quantized weights on this CPU: {engine.quantization}")
            answers[quant] = [
                run(engine.submit(build_prompt_ids(engine.tokenizer, [{"role": "user", "content": question}],
                                                   context_length=engine.context_length, reserve_tokens=48),
                                  SamplingParams(temperature=0, max_new_tokens=48)))[0]
                for question in questions
            ]
        finally:
            engine.shutdown()
    assert answers["auto"] == answers["none"]
    assert "Paris" in answers["auto"][0]


def test_the_gpu_runner_answers_as_the_cpu_runner(tiny_engine_config):
    """Greedy and seeded answers of requests joining and leaving a running batch are the same
    text on both runners; the GPU runner's KV is one slot of max_kv_tokens / max_running
    tokens per sequence."""
    # A prefill budget of 40 tokens a step: the six prompts (~30 tokens each) are prefilled
    # over several steps, some whole and some in parts, while the first ones decode.
    engines = {runner: Engine.load(replace(tiny_engine_config, runner=runner, max_kv_tokens=8 * 300, prefill_tokens=40))
               for runner in RUNNERS}
    try:
        assert type(engines["gpu"].runner).__name__ == "GpuRunner" and engines["gpu"].context_length == 300
        answers = {}
        for name, engine in engines.items():
            requests = [
                engine.submit(prompt(engine, f"question {n}"), SamplingParams(
                    temperature=0 if n % 2 else 0.8, seed=n, max_new_tokens=10 + 7 * n, top_k=0 if n % 3 else 20,
                ))
                for n in range(6)
            ]
            answers[name] = [run(request)[0] for request in requests]
        assert answers["gpu"] == answers["cpu"]
    finally:
        for engine in engines.values():
            engine.shutdown()


def test_a_long_prompt_is_prefilled_in_parts_while_running_streams_go_on(tiny_engine_config):
    """GPU runner, 16 prompt tokens a step: a 300-token prompt is prefilled over 19 steps, a
    running answer gets a token at each of them, and the long prompt's answer is the one it
    gets prefilled whole (CPU runner)."""
    chunked = Engine.load(replace(tiny_engine_config, runner="gpu", prefill_tokens=16))
    whole = Engine.load(replace(tiny_engine_config, runner="cpu"))
    try:
        long_prompt = prompt(chunked, "tell me " * 140)
        assert 290 < len(long_prompt) < 320
        greedy = SamplingParams(temperature=0, max_new_tokens=12)
        running = chunked.submit(prompt(chunked), SamplingParams(temperature=0, max_new_tokens=400))
        next(running.events(timeout=30))
        before = len(running.output_ids)
        request = chunked.submit(long_prompt, greedy)
        first = next(request.events(timeout=30))
        assert isinstance(first, TokenEvent)
        assert len(running.output_ids) - before >= len(long_prompt) // 16 - 1
        text, _, finish = run(request)
        assert finish.status is RequestStatus.DONE
        assert first.text + text == run(whole.submit(long_prompt, greedy))[0]
        running.cancel()
        run(running)
    finally:
        chunked.shutdown()
        whole.shutdown()


def test_an_unknown_quant_setting_is_refused():
    with pytest.raises(ValueError, match="quant"):
        EngineConfig(quant="int3")
    with pytest.raises(ValueError, match="runner"):
        EngineConfig(runner="tpu")
