"""`python -m bench.decoder`: the runner's decode step for the default model through transformers
and through `inference.decoder`, at 1, 8 and 32 rows (prompts of 40–69 tokens, 64 greedy steps
each, median ms a step), alternated three times; each path has a model of its own. Prints the
median and the range of the three runs' medians."""
from __future__ import annotations

import statistics
import time

import torch

from inference.loading import load_model, resolve_model_source
from inference.runner import ModelRunner

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
    runners = {
        label: ModelRunner(load_model(resolve_model_source(""), dtype=torch.bfloat16), torch.device("cpu"), fast_decode=fast)
        for label, fast in (("transformers", False), ("inference.decoder", True))
    }
    for rows in (1, 8, 32):
        seconds: dict[str, list[float]] = {label: [] for label in runners}
        for _ in range(ROUNDS):  # alternated: this machine's speed drifts within a minute
            for label, runner in runners.items():
                seconds[label].append(step_times(runner, rows))
        print(f"{rows:>2} rows: " + ", ".join(
            f"{label} {statistics.median(s) * 1000:.1f} ms ({min(s) * 1000:.1f}–{max(s) * 1000:.1f})" for label, s in seconds.items()
        ), flush=True)


if __name__ == "__main__":
    main()
