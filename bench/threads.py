"""`python -m bench.threads`: why the engine's own thread loads and runs the model.

Times a batch-1 decode step of the default model three ways, each in a fresh process:
all torch work in the main thread; all of it in a second thread; and in a second thread
after the main thread has used torch.
"""
from __future__ import annotations

import multiprocessing
import sys
import threading
import time

import torch

STEPS = 30


def _decode_ms() -> float:
    from inference.loading import load_model, resolve_model_source
    from inference.runner import ModelRunner, pick_device, pick_dtype

    device = pick_device("auto")
    runner = ModelRunner(load_model(resolve_model_source(""), dtype=pick_dtype(device)), device)
    logits = runner.prefill({0: list(range(1, 40))})
    runner.commit()
    tokens = [int(logits.argmax(-1)[0])]
    for _ in range(3):
        runner.decode(tokens)
    started = time.perf_counter()
    for _ in range(STEPS):
        runner.decode(tokens)
    return (time.perf_counter() - started) / STEPS * 1000


def _in_thread() -> float:
    result = []
    thread = threading.Thread(target=lambda: result.append(_decode_ms()))
    thread.start()
    thread.join()
    return result[0]


def _case(name: str) -> float:
    if name == "main thread":
        return _decode_ms()
    if name == "after main":
        matrix = torch.randn(2000, 2000)
        for _ in range(20):
            matrix @ matrix
    return _in_thread()


def main() -> None:
    context = multiprocessing.get_context("spawn")
    for name in ("main thread", "second thread", "after main"):
        with context.Pool(1) as pool:
            print(f"{name:>14}: {pool.apply(_case, (name,)):.1f} ms per decode step", flush=True)


if __name__ == "__main__":
    sys.exit(main())
