"""`python -m bench.decoder`: the runner's decode step for the default model through transformers
and through `inference.decoder`, at 1, 8 and 32 rows (prompts of 40–69 tokens, 64 greedy steps
each, median ms a step). The two paths run one after the other in one process, each with a
freshly loaded model."""
from __future__ import annotations

import statistics
import time

import torch

from inference.loading import load_model, resolve_model_source
from inference.runner import ModelRunner

STEPS = 64


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
    for fast_decode, label in ((False, "transformers"), (True, "inference.decoder")):
        runner = ModelRunner(load_model(resolve_model_source(""), dtype=torch.bfloat16), torch.device("cpu"), fast_decode=fast_decode)
        for rows in (1, 8, 32):
            print(f"{label:>18}, {rows:>2} rows: {step_times(runner, rows) * 1000:.1f} ms a step", flush=True)
        del runner


if __name__ == "__main__":
    main()
