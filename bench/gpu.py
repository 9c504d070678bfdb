"""`python -m bench.gpu`: the engine alone on a GPU against transformers' own `generate`.

Random weights in the SmolLM2-135M shape and in SmolLM2-1.7B's (throughput does not depend on
the weights' values), saved once to a temporary folder and loaded the way the product loads a
model; 64 new tokens per request, end of sequence ignored. For each shape: the engine at 1, 8,
32, 128 and 256 concurrent requests (tokens/s, milliseconds a decode step, time to first
token), transformers' plain `generate` one request at a time, its compiled static-cache
`generate` (CUDA graphs) on batches of 1, 32 and 256, the kernels a decode step launches, and,
for the first shape, a Plus
request's time to first token with 64 Free requests queued. `--e2e` adds the product in its
embedded mode on the same GPU (`--web-processes`, default 4 then 8, Daphne processes in front
of one engine server): `/v1/chat/completions` streamed by 1, 32, 128 and 256 clients, against
the engine alone in the same run. Writes bench/results/gpu.json (`--name`; an absolute path
is written where it says) after each part, so a run stopped at a time limit keeps what it
measured.

The tokenizer is SmolLM2's: from the default model when it is installed, else `--tokenizer
DIR` (a folder `--save-tokenizer DIR` wrote where it is installed; the GPU machine's image has
no registry and the 98 MB model file is not carried there).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bench.engine import concurrent, priority, write_result
from inference import Engine, EngineConfig
from inference.loading import load_tokenizer, resolve_model_source

NEW_TOKENS = 64
LEVELS = (1, 8, 32, 128, 256)
HF_LEVELS = (1, 32, 256)
E2E_LEVELS = (1, 32, 128, 256)
REPEATS = 3  # medians of alternated runs
DEVICE = "cuda"  # `--smoke`: cpu
PROMPT_TOKENS = 32  # transformers' batches: prompts of one length, so nothing is padded
KV_PER_SEQUENCE = 512  # the engine's slot: the chat template, a question and 64 tokens fit
SHAPES = {
    # SmolLM2-135M-Instruct's config.json and SmolLM2-1.7B-Instruct's.
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "rope_theta": 100000.0},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "rope_theta": 130000.0},
    # `--smoke`: the whole script on a CPU in seconds (tests/test_bench_gpu.py), to find its
    # mistakes before a GPU's time is spent.
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "rope_theta": 10000.0},
}
COMMON = {"vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu"}


def save_random_model(shape: str, folder: Path, tokenizer) -> Path:
    """A transformers folder with random weights of `shape` in bf16 and SmolLM2's tokenizer."""
    config = LlamaConfig(**COMMON, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def engine_levels(engine: Engine, levels: tuple[int, ...]) -> dict:
    """Tokens/s, time to first token and ms a decode step at each level: a warm-up run (which
    captures the step's graphs), then the median of REPEATS."""
    results = {}
    for n in levels:
        concurrent(engine, n)
        runs = []
        for _ in range(REPEATS):
            steps, busy = engine.stats.steps, engine.stats.busy_s
            run = concurrent(engine, n)
            run["ms_per_step"] = (engine.stats.busy_s - busy) / max(1, engine.stats.steps - steps) * 1e3
            runs.append(run)
        results[str(n)] = dict(sorted(runs, key=lambda run: run["tok_s"])[len(runs) // 2])
        row = results[str(n)]
        print(f"  engine x{n:>3}: {row['tok_s']:9.1f} tok/s  {row['ms_per_step']:6.2f} ms a step  "
              f"ttft p50 {row['ttft_p50_s']:.3f} s", flush=True)
    return results


def hf_generate(folder: Path, levels: tuple[int, ...], *, compiled: bool) -> dict:
    """transformers' `generate` on batches of n prompts of PROMPT_TOKENS random tokens: plain
    (a dynamic cache), or with `cache_implementation="static"`, which compiles the forward
    and replays it as CUDA graphs. A warm-up call per batch size (the compile), then the
    median of REPEATS."""
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(DEVICE).eval()
    extra = {"cache_implementation": "static"} if compiled else {}
    results = {}
    generator = torch.Generator().manual_seed(0)
    for n in levels:
        prompts = torch.randint(3, 49152, (n, PROMPT_TOKENS), generator=generator).to(DEVICE)

        _generate_tok_s(model, prompts, extra)  # warm-up (and the compile)
        results[str(n)] = {"tok_s": statistics.median(_generate_tok_s(model, prompts, extra) for _ in range(REPEATS))}
        print(f"  transformers {'compiled' if compiled else 'plain'} generate x{n:>3}: {results[str(n)]['tok_s']:9.1f} tok/s",
              flush=True)
    del model
    _empty_cache()
    return results


def _synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _generate_tok_s(model, prompts: torch.Tensor, extra: dict) -> float:
    _synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, **extra)
    _synchronize()
    return (out.shape[1] - prompts.shape[1]) * prompts.shape[0] / (time.perf_counter() - started)


def load_engine(folder: Path) -> Engine:
    return Engine.load(EngineConfig(model=str(folder), device=DEVICE, runner="gpu", max_running=max(LEVELS),
                                    max_kv_tokens=max(LEVELS) * KV_PER_SEQUENCE))


def e2e(folder: Path, engine_alone: dict, web_processes: int) -> dict:
    """The product in its embedded mode on this GPU (`python -m chatsite.serve`: the engine
    server and `web_processes` Daphne processes, each with its worker; SQLite), `/v1/`
    streamed by n clients, against the engine alone at the same n in this run."""
    from bench.http import HttpBench

    http = HttpBench(settings={"CHAT_MODEL": str(folder), "CHAT_DEVICE": DEVICE, "CHAT_RUNNER": "gpu",
                               "CHAT_MAX_RUNNING": str(max(LEVELS)),
                               "CHAT_MAX_KV_TOKENS": str(max(LEVELS) * KV_PER_SEQUENCE)},
                     web_processes=web_processes)
    print(f"  e2e, {web_processes} web processes:", flush=True)
    results = {}
    try:
        for n in E2E_LEVELS:
            http.run(n)  # warm-up: the worker's graphs for this size
            runs = [http.run(n) for _ in range(REPEATS)]
            row = dict(sorted(runs, key=lambda run: run["tok_s"])[len(runs) // 2])
            row["ratio_to_engine"] = row["tok_s"] / engine_alone[str(n)]["tok_s"]
            results[str(n)] = row
            print(f"  e2e x{n:>3}: {row['tok_s']:9.1f} tok/s  {row['ratio_to_engine'] * 100:.0f} % of the engine alone"
                  + (f"  ttft p50 {row['ttft_p50_s']:.3f} s" if "ttft_p50_s" in row else ""), flush=True)
    finally:
        http.close()
    return results


def kernels_a_step(runner) -> dict:
    """The kernels a decode step launches (what its CUDA graph holds) and their summed time on
    the device, at 1 and 256 rows over 128 columns, run once without a graph and with every
    row empty (as before a capture) under torch's profiler: a step whose graph replays in much
    more than its kernels' time is bound by the graph's launches, not by its arithmetic."""
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    real = runner._inputs.clone()
    runner._inputs[1].fill_(runner.capacity)
    try:
        with torch.inference_mode():
            for batch in (1, max(LEVELS)):
                runner._step(batch, 128)
                _synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as profiler:
                    runner._step(batch, 128)
                    _synchronize()
                kernels = [event for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA]
                device_ms = sum(event.time_range.elapsed_us() for event in kernels) / 1e3
                counts[str(batch)] = {"kernels": len(kernels), "device_ms": device_ms}
                print(f"  a step of {batch} rows: {len(kernels)} kernels, {device_ms:.2f} ms on the device", flush=True)
    except Exception as error:  # a diagnostic: the benchmark goes on without it
        print(f"  kernels a step: not counted ({error!r})", flush=True)
    runner._inputs.copy_(real)
    return counts


def measure_shape(shape: str, folder: Path, tokenizer, *, with_priority: bool, hf: bool) -> dict:
    print(f"{shape}:", flush=True)
    # Seconds each part took, so that a run on a lent machine can be planned to fit its time.
    seconds, started = {}, time.perf_counter()
    save_random_model(shape, folder, tokenizer)
    engine = load_engine(folder)
    result = {"kernels_a_step": kernels_a_step(engine.runner)} if DEVICE == "cuda" else {}
    seconds["load"] = time.perf_counter() - started
    result["engine"] = engine_levels(engine, LEVELS)
    result["graphs"] = engine.runner.graphs  # False where a capture failed (the log says why)
    if with_priority:
        # More Free requests than the batch holds, long enough to still run while the Plus
        # ones arrive: 64 of them wait.
        result["priority"] = priority(engine, free_requests=max(LEVELS) + 64, free_tokens=KV_PER_SEQUENCE - 100)
        p = result["priority"]
        print(f"  plus ttft with 64 free waiting: {p['plus_ttft_s']:.3f} s; idle: {p['idle_ttft_s']:.3f} s "
              f"({p['plus_ttft_s'] / p['idle_ttft_s']:.2f}x)", flush=True)
    engine.shutdown()
    del engine
    _empty_cache()
    seconds["engine"] = time.perf_counter() - started - seconds["load"]
    if hf:
        mark = time.perf_counter()
        result["hf_naive"] = hf_generate(folder, (1,), compiled=False)
        if DEVICE == "cuda":  # compiling for a CPU is minutes of inductor work
            try:  # the compile depends on the image's Triton: a failure must not cost the rest
                result["hf_compiled"] = hf_generate(folder, HF_LEVELS, compiled=True)
            except Exception as error:
                print(f"  transformers compiled generate failed: {error!r}", flush=True)
                result["hf_compiled"] = {"error": repr(error)}
                _empty_cache()
        seconds["hf"] = time.perf_counter() - mark
    result["seconds"] = {part: round(value, 1) for part, value in seconds.items()}
    print(f"  {shape} took " + ", ".join(f"{part} {value:.0f} s" for part, value in result["seconds"].items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="gpu", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--tokenizer", default="", help="a folder holding SmolLM2's tokenizer")
    parser.add_argument("--save-tokenizer", default="", metavar="DIR", help="write SmolLM2's tokenizer to DIR and stop")
    parser.add_argument("--e2e", action="store_true", help="also the product end to end (embedded mode)")
    parser.add_argument("--web-processes", default="4,8",
                        help="--e2e: Daphne processes (CHAT_WEB_PROCESSES); several, comma-separated: the first "
                             "is `e2e`, measured before the other shapes, the others `e2e_more` after them")
    parser.add_argument("--no-hf", action="store_true", help="leave out transformers' generate")
    parser.add_argument("--shapes", default="smollm2-135m,1.7b", help="which shapes, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU, few requests: checks the script")
    args = parser.parse_args()
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    else:
        tokenizer = load_tokenizer(resolve_model_source(""))
    if args.save_tokenizer:
        tokenizer.save_pretrained(args.save_tokenizer)
        print(f"wrote {args.save_tokenizer}")
        return
    shapes = args.shapes.split(",")
    if args.smoke:
        global DEVICE, LEVELS, HF_LEVELS, E2E_LEVELS, REPEATS
        DEVICE, LEVELS, HF_LEVELS, E2E_LEVELS, REPEATS = "cpu", (1, 4), (1, 4), (1, 4), 1
        shapes = ["tiny"]
    elif not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA device (--smoke runs it on the CPU)")
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "none (--smoke)"
    result: dict = {"gpu": gpu, "torch": torch.__version__, "new_tokens": NEW_TOKENS}
    web_processes = [int(count) for count in args.web_processes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        for index, shape in enumerate(shapes):
            folder = Path(scratch) / shape
            measured = measure_shape(shape, folder, tokenizer, with_priority=index == 0, hf=not args.no_hf)
            if index == 0:
                result["shape"] = shape
                result.update(measured)
                write_result(result, args.name)  # each part as it is measured: a run cut short keeps it
                if args.e2e:
                    mark = time.perf_counter()
                    result["e2e_web_processes"] = web_processes[0]
                    result["e2e"] = e2e(folder, measured["engine"], web_processes[0])
                    result["seconds"]["e2e"] = round(time.perf_counter() - mark, 1)
            else:
                result.setdefault("shapes", {})[shape] = measured
            write_result(result, args.name)
        for count in web_processes[1:] if args.e2e else ():  # which count suits this machine, last
            mark = time.perf_counter()
            result.setdefault("e2e_more", {})[str(count)] = e2e(Path(scratch) / shapes[0], result["engine"], count)
            result["seconds"][f"e2e_{count}"] = round(time.perf_counter() - mark, 1)
            write_result(result, args.name)


if __name__ == "__main__":
    main()
