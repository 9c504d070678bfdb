"""`python -m bench.decoder`: the runner's decode step for the default model through transformers
and through `inference.decoder`, at 1, 8 and 32 rows (prompts of 40–69 tokens, 64 greedy steps
each, median ms a step), alternated three times; each path has a model of its own. Prints the
median and the range of the three runs' medians. In the dtype CHAT_DTYPE=auto picks here.

`python -m bench.decoder --small-batch`: `inference.decoder` in fp32 against the same with
a bf16 copy of the weights for small steps (`SMALL_BATCH_ROWS`), at 1–5 and 8 rows.

`python -m bench.decoder --prepack`: `inference.decoder` with the model's own weights against
the same with packed copies (`inference.decoder._pack`), at 1, 2, 4, 8, 16 and 32 rows.

`python -m bench.decoder --quant`: the de-quantized weights against CHAT_QUANT=auto's
quantized ones for every step (the crossover `inference.quant.QUANT_ROWS` comes from), at 1–8
rows."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from inference.loading import load_model, resolve_model_source
from inference.runner import ModelRunner, pick_dtype

STEPS = 64
ROUNDS = 3


def step_times(runner: ModelRunner, rows: int) -> float:
    generator = torch.Generator().manual_seed(rows)
    prompts = {i: torch.randint(0, 49000, (40 + (i * 7) % 30,), generator=generator).tolist() for i in range(rows)}
    tokens = runner.prefill(prompts).float().argmax(-1).tolist()
    runner.commit()
    seconds = []
    for _ in range(STEPS):
        started = time.perf_counter()
        logits = runner.decode(tokens)
        seconds.append(time.perf_counter() - started)
        tokens = logits.float().argmax(-1).tolist()
    runner.clear()
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--small-batch", action="store_true")
    mode.add_argument("--prepack", action="store_true")
    mode.add_argument("--quant", action="store_true")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    row_counts = (1, 8, 32)
    if args.prepack:
        runners = {
            label: ModelRunner(load_model(resolve_model_source(""), dtype=pick_dtype(cpu)), cpu, prepack=prepack)
            for label, prepack in (("plain", False), ("prepacked", True))
        }
        row_counts = (1, 2, 4, 8, 16, 32)
    elif args.quant:
        source = resolve_model_source("")
        runners = {}
        for label, kind in (("de-quantized", "none"), ("quantized", "auto")):
            runner = ModelRunner(load_model(source, dtype=pick_dtype(cpu)), cpu)
            print(label, runner.quantize(kind, f"{source.path}/{source.gguf_file}"))
            if runner.quantized:
                runner._decoder.quantized_rows = 64  # every step, to find where it stops paying
            runners[label] = runner
        row_counts = (1, 2, 3, 4, 5, 6, 8)
    elif args.small_batch:
        runners = {
            label: ModelRunner(load_model(resolve_model_source(""), dtype=torch.float32), cpu, small_batch_dtype=small)
            for label, small in (("fp32", None), ("bf16 copy", torch.bfloat16))
        }
        row_counts = (1, 2, 3, 4, 5, 8)
    else:
        runners = {
            label: ModelRunner(load_model(resolve_model_source(""), dtype=pick_dtype(cpu)), cpu, fast_decode=fast)
            for label, fast in (("transformers", False), ("inference.decoder", True))
        }
    for rows in row_counts:
        seconds: dict[str, list[float]] = {label: [] for label in runners}
        for _ in range(ROUNDS):  # alternated: this machine's speed drifts within a minute
            for label, runner in runners.items():
                seconds[label].append(step_times(runner, rows))
        print(f"{rows:>2} rows: " + ", ".join(
            f"{label} {statistics.median(s) * 1000:.1f} ms ({min(s) * 1000:.1f}–{max(s) * 1000:.1f})" for label, s in seconds.items()
        ), flush=True)


if __name__ == "__main__":
    main()
