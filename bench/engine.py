"""`make bench`: the engine against plain `model.generate`, on the default model.

Prints a table and writes bench/results/<name>.json, by default named by the machine's kind
and the date (`cpu-intel-bf16-2026-12-04`). Every request generates exactly NEW_TOKENS tokens
(ignore_eos / min_new_tokens) so runs compare.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from bench.http import HttpBench
from bench.prompts import question
from inference import Engine, EngineConfig, FinishEvent, SamplingParams
from inference.loading import load_model, load_tokenizer, resolve_model_source
from inference.prompts import build_prompt_ids
from inference.runner import pick_device, pick_dtype

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = 64
CONCURRENCY = (1, 8, 32)
NAIVE_REQUESTS = 2  # per naive run; one run alternates with each engine run of (b)
IDLE_SETTLE_S = 0.5  # for the engine to notice it is idle before memory is read
REPEATS = 3
PRIORITY_SAMPLES = 9  # this machine's speed drifts by ±15 % over minutes: medians of runs made side by side


def prompt_ids(engine: Engine, n: int) -> list[int]:
    return build_prompt_ids(
        engine.tokenizer, [{"role": "user", "content": question(n)}], context_length=engine.context_length, reserve_tokens=NEW_TOKENS
    )


def greedy(tokens: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=tokens, ignore_eos=True)


def finish_of(request) -> FinishEvent:
    for event in request.events(timeout=600):
        if isinstance(event, FinishEvent):
            return event
    raise RuntimeError("no finish")


class Baselines:
    """(a) the same requests one at a time through plain model.generate, and, for the record,
    transformers' own continuous batching (`generate_batch`) with 32 requests; in a process of
    their own whose main thread does all the torch work (their best case). The process stays
    up so that naive runs can alternate with the engine's: this machine's speed drifts by
    ±15 % over minutes, and a naive figure from the first minute made the ratio a coin toss."""

    def __init__(self) -> None:
        self._pool = multiprocessing.get_context("spawn").Pool(1, initializer=_baseline_load)

    def naive(self) -> float:
        return self._pool.apply(_naive_run)

    def generate_batch(self) -> float:
        return self._pool.apply(_generate_batch_run)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


_baseline: dict = {}


def _baseline_load() -> None:
    source = resolve_model_source("")
    _baseline["tokenizer"] = load_tokenizer(source)
    _baseline["model"] = model = load_model(source, dtype=pick_dtype(pick_device("auto")))
    with torch.inference_mode():
        model.generate(_baseline_ids(0), max_new_tokens=4, do_sample=False)  # warm-up


def _baseline_ids(n: int) -> torch.Tensor:
    messages = [{"role": "user", "content": question(n)}]
    return torch.tensor([build_prompt_ids(_baseline["tokenizer"], messages, context_length=8192, reserve_tokens=NEW_TOKENS)])


def _naive_run() -> float:
    model, tokens, elapsed = _baseline["model"], 0, 0.0
    with torch.inference_mode():
        for n in range(NAIVE_REQUESTS):
            prompt = _baseline_ids(n)
            started = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            elapsed += time.perf_counter() - started
            tokens += out.shape[1] - prompt.shape[1]
    return tokens / elapsed


def _generate_batch_run() -> float:
    model, tokenizer = _baseline["model"], _baseline["tokenizer"]
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    inputs = [_baseline_ids(n)[0].tolist() for n in range(32)]
    model.generate_batch(inputs[:2], generation_config=config)  # warm-up
    started = time.perf_counter()
    outputs = model.generate_batch(inputs, generation_config=config)
    generated = sum(len(output.generated_tokens) for output in outputs.values())
    return generated / (time.perf_counter() - started)


def concurrent(engine: Engine, n: int, *, offset: int = 0, gap_s: float = 0.0) -> dict:
    """(b) n requests submitted together (or `gap_s` apart, from the first submission);
    aggregate tokens/s and time to first token."""
    started = time.time()
    requests = []
    for i in range(n):
        requests.append(engine.submit(prompt_ids(engine, offset + i), greedy(), arrival_time=started))
        if gap_s:
            time.sleep(gap_s)
    finishes = [finish_of(request) for request in requests]
    elapsed = time.time() - started
    ttfts = sorted(f.usage.ttft_s for f in finishes)
    tokens = sum(f.usage.completion_tokens for f in finishes)
    return {
        "tok_s": tokens / elapsed,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
    }


def priority(engine: Engine, free_requests: int = 64, free_tokens: int = NEW_TOKENS) -> dict:
    """(c) a Plus request's time to first token with `free_requests` Free requests queued
    (more than the batch holds, so some wait), against idle. Plus requests arrive after random
    pauses: a fixed pause locks onto the engine's step rhythm and always lands at the same
    point of a step."""
    plus_ids = prompt_ids(engine, 5)
    pauses = random.Random(0)
    idle = []
    for _ in range(PRIORITY_SAMPLES):
        idle.append(finish_of(engine.submit(plus_ids, greedy(4), priority=10)).usage.ttft_s)
        time.sleep(pauses.uniform(0.05, 0.3))
    free = [engine.submit(prompt_ids(engine, i), greedy(free_tokens), priority=0) for i in range(free_requests)]
    while sum(1 for r in free if r.output_ids) < min(free_requests, engine.config.max_running) // 2:  # the batch is decoding
        time.sleep(0.01)
    loaded = []
    for _ in range(PRIORITY_SAMPLES):
        loaded.append(finish_of(engine.submit(plus_ids, greedy(4), priority=10)).usage.ttft_s)
        time.sleep(pauses.uniform(0.05, 0.3))
    for request in free:
        request.cancel()
    for request in free:
        finish_of(request)
    waiting = max(0, free_requests - engine.config.max_running)
    return {"plus_ttft_s": statistics.median(loaded), "idle_ttft_s": statistics.median(idle),
            "free_requests": free_requests, "free_waiting": waiting}


def _median(runs: list[dict]) -> dict:
    return dict(sorted(runs, key=lambda run: run["tok_s"])[len(runs) // 2])


def rss_mb() -> float:
    """Resident memory now (Linux), not the peak that getrusage reports."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def memory(engine: Engine) -> dict:
    """(e) resident memory after 100 and after 1,000 requests (32 at a time, 16 tokens each),
    read once the engine has gone idle (it hands freed KV memory back then)."""
    marks, done = {}, 0
    while done < 1000:
        batch = [engine.submit(prompt_ids(engine, done + i), greedy(16)) for i in range(min(32, 1000 - done))]
        for request in batch:
            finish_of(request)
        done += len(batch)
        if done >= 100 and "100" not in marks:
            time.sleep(IDLE_SETTLE_S)
            marks["100"] = rss_mb()
    time.sleep(IDLE_SETTLE_S)
    marks["1000"] = rss_mb()
    return marks


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_kind(device: str, dtype: torch.dtype) -> str:
    """What results are filed under: the device, the CPU's maker and the dtype the engine
    picked (`cpu-amd-fp32`, `cpu-intel-bf16`, `cuda-bf16`). Figures differ most between these."""
    short_dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))
    if device != "cpu":
        return f"{device}-{short_dtype}"
    name = cpu_model().lower()
    maker = "intel" if "intel" in name else "amd" if "amd" in name else platform.machine()
    return f"cpu-{maker}-{short_dtype}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="", help="results file name; default: the machine's kind and the date")
    parser.add_argument("--skip-http", action="store_true", help="leave out (d), the HTTP end-to-end part")
    args = parser.parse_args()

    result: dict = {"new_tokens": NEW_TOKENS}
    baselines = Baselines()
    result["transformers_generate_batch_32_tok_s"] = baselines.generate_batch()
    print(f"    transformers generate_batch x32: {result['transformers_generate_batch_32_tok_s']:.1f} tok/s")
    time.sleep(IDLE_SETTLE_S)  # the baselines' process quiet before the engine's load-time checks run
    engine = Engine.load(EngineConfig(max_running=32))
    time.sleep(IDLE_SETTLE_S)
    result["rss_after_load_mb"] = rss_mb()
    result["quantization"] = engine.quantization
    print(f"engine on {engine.runner.device} in {engine.runner.dtype}; torch threads {torch.get_num_threads()}; "
          f"resident {result['rss_after_load_mb']:.0f} MB after load; {engine.quantization or 'not quantized'}")
    http = None if args.skip_http else HttpBench()  # its own server, idle while the engine runs
    concurrent(engine, 2)  # warm-up
    result["engine"], result["http"] = {}, {}
    naive_runs = []
    for n in CONCURRENCY:
        engine_runs, http_runs = [], []
        for _ in range(REPEATS):  # alternated, so all three see the machine in the same state
            naive_runs.append(baselines.naive())
            engine_runs.append(concurrent(engine, n))
            if http:
                http_runs.append(http.run(n))
        result["engine"][str(n)] = _median(engine_runs)
        if http:
            result["http"][str(n)] = _median(http_runs)
    baselines.close()
    if http:
        http.close()
    result["naive_tok_s"] = statistics.median(naive_runs)
    result["naive_tok_s_range"] = [min(naive_runs), max(naive_runs)]
    print(f"(a) naive model.generate: {result['naive_tok_s']:.1f} tok/s (median of {len(naive_runs)} runs, "
          f"{min(naive_runs):.1f}–{max(naive_runs):.1f})")
    for n in CONCURRENCY:
        row = result["engine"][str(n)]
        row["speedup_vs_naive"] = row["tok_s"] / result["naive_tok_s"]
        print(f"(b) engine x{n:>2}: {row['tok_s']:7.1f} tok/s  ttft p50 {row['ttft_p50_s']:.3f} s  p95 {row['ttft_p95_s']:.3f} s  {row['speedup_vs_naive']:.1f}x naive")
        if http:
            http_row = result["http"][str(n)]
            http_row["ratio_to_engine"] = http_row["tok_s"] / row["tok_s"]
            print(f"(d) http   x{n:>2}: {http_row['tok_s']:7.1f} tok/s  {http_row['ratio_to_engine'] * 100:.0f} % of the engine alone")
    result["priority"] = priority(engine)
    p = result["priority"]
    print(f"(c) plus ttft with 64 free waiting: {p['plus_ttft_s']:.3f} s; idle: {p['idle_ttft_s']:.3f} s ({p['plus_ttft_s'] / p['idle_ttft_s']:.2f}x)")
    result["rss_mb"] = memory(engine)
    r = result["rss_mb"]
    print(f"(e) rss after load {result['rss_after_load_mb']:.0f} MB, after 100 requests {r['100']:.0f} MB, "
          f"after 1000 {r['1000']:.0f} MB ({(r['1000'] / r['100'] - 1) * 100:+.1f} %)")
    engine.shutdown()
    result["machine"] = f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; {engine.runner.dtype}"
    result["kind"] = machine_kind(engine.runner.device.type, engine.runner.dtype)
    result["date"] = datetime.date.today().isoformat()
    write_result(result, args.name or f"{result['kind']}-{result['date']}")


def write_result(result: dict, name: str) -> None:
    """bench/results/<name>.json (an absolute `name` is written where it says)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
