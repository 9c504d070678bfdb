"""`python -m bench.host [N ...]`: the host's work per decode step, measured on a CPU.

On a GPU a step of the default model is a few milliseconds of graph replay, and what the host
does per step (reading tokens back, text, finishes, scheduling, the next step's inputs) has to
stay under that for the device to be the bound. This runs the engine on the GPU runner (on the
CPU, without graphs) with a Llama so small that its arithmetic costs next to nothing (one
layer, hidden size 16, a 512-token vocabulary): N requests of 40 prompt tokens and 64 new
tokens submitted together, end of sequence ignored. Per level, after a warm-up, the median of
REPEATS bursts: milliseconds a step, tokens/s, and the CPU time a step of each thread (the
engine's, the output stage's), read from /proc. torch keeps to one thread, the caller's (its
pool's idle threads would spin and count), so the engine thread's time is its Python and the
torch calls it makes, as on a GPU, plus the model's small arithmetic.

`--device-ms MS` stands in for a device: a step's tokens are not read back before MS after its
launch (the reader sleeps, interpreter lock released, as it waits on a CUDA event). So what
a GPU's step would cost end to end can be seen on a CPU: MS where the host's work hides
behind the device's, more where it does not.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.engine import finish_of
from bench.http import thread_cpu_s
from inference import Engine, EngineConfig, SamplingParams
from inference import engine as engine_module
from inference.loading import load_tokenizer, resolve_model_source

NEW_TOKENS = 64
PROMPT_TOKENS = 40
REPEATS = 3
VOCAB = 512


def burst(engine: Engine, n: int) -> float:
    """n requests at once; tokens/s."""
    started = time.time()
    params = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    requests = [
        engine.submit([3 + (i * 7 + j) % (VOCAB - 3) for j in range(PROMPT_TOKENS)], params, arrival_time=started)
        for i in range(n)
    ]
    tokens = sum(finish_of(request).usage.completion_tokens for request in requests)
    return tokens / (time.time() - started)


def measure(engine: Engine, n: int) -> dict:
    burst(engine, n)
    names = {str(thread.native_id): thread.name for thread in threading.enumerate()}
    runs = []
    for _ in range(REPEATS):
        cpu, steps, started = thread_cpu_s(os.getpid()), engine.stats.steps, time.perf_counter()
        tok_s = burst(engine, n)
        elapsed, steps = time.perf_counter() - started, engine.stats.steps - steps
        after = thread_cpu_s(os.getpid())
        threads: dict[str, float] = {}
        for tid, seconds in after.items():
            name = names.get(tid, "other")
            threads[name] = threads.get(name, 0.0) + (seconds - cpu.get(tid, 0.0)) / steps * 1e3
        runs.append({"tok_s": tok_s, "ms_per_step": elapsed / steps * 1e3, "cpu_ms_per_step": threads})
    return sorted(runs, key=lambda run: run["ms_per_step"])[len(runs) // 2]


def stand_in_for_a_device(milliseconds: float) -> None:
    """A launched step's tokens come back `milliseconds` after the device is free to run it:
    after its launch, and after the step before it is done (a device runs steps in turn)."""
    real_start, real_result = engine_module._Launched.start, engine_module._Launched.result
    free_at = [0.0]

    def start(requests, chosen, launched):
        step = real_start(requests, chosen, launched)
        free_at[0] = step.done_at = max(time.perf_counter(), free_at[0]) + milliseconds / 1e3
        return step

    def result(step):
        wait = step.done_at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return real_result(step)

    engine_module._Launched.start = start
    engine_module._Launched.result = result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("levels", nargs="*", type=int, default=[32, 256])
    parser.add_argument("--runner", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--device-ms", type=float, default=0.0, help="a stand-in device's time a step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device_ms:
        stand_in_for_a_device(args.device_ms)
    tokenizer = load_tokenizer(resolve_model_source(""))
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        engine = Engine.load(EngineConfig(model=folder, device="cpu", runner=args.runner, max_running=max(args.levels),
                                          max_kv_tokens=max(args.levels) * 512, prefix_cache=False))
        try:
            for n in args.levels:
                print(line(n, measure(engine, n)), flush=True)
        finally:
            engine.shutdown()


def line(n: int, row: dict) -> str:
    threads = sorted(row["cpu_ms_per_step"].items(), key=lambda item: -item[1])
    cpu = "  ".join(f"{name} {ms:.2f}" for name, ms in threads if ms >= 0.01)
    return f"x{n:>3}: {row['ms_per_step']:6.2f} ms a step  {row['tok_s']:9.0f} tok/s  CPU ms a step: {cpu}"


if __name__ == "__main__":
    main()
