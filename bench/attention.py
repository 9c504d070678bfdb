"""`python -m bench.attention [BATCH]`: one decode step of the default model with torch's SDPA
and with our CPU decode attention, alternated in one process, at 60 and 200 cached tokens."""
from __future__ import annotations

import statistics
import sys
import time

import torch
from transformers import DynamicCache

from inference.attention import NAME, use_decode_attention
from inference.loading import load_model, resolve_model_source

STEPS = 16


def main(batch: int) -> None:
    model = load_model(resolve_model_source(""), dtype=torch.bfloat16)
    use_decode_attention(model)
    torch.manual_seed(0)
    for cached in (60, 200):
        mask = torch.ones(batch, cached, dtype=torch.long)
        mask[: max(1, batch // 4), :7] = 0  # some left padding, as in a running batch
        times: dict[str, list[float]] = {"sdpa": [], NAME: []}
        with torch.inference_mode():
            cache = DynamicCache()
            model(input_ids=torch.randint(0, 49000, (batch, cached)), attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
            token = torch.randint(0, 49000, (batch, 1))
            step_mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], 1)
            for _ in range(STEPS):
                for implementation in times:
                    model.set_attn_implementation(implementation)
                    started = time.perf_counter()
                    model(input_ids=token, attention_mask=step_mask, cache=cache, use_cache=True)
                    times[implementation].append(time.perf_counter() - started)
                    cache.crop(-1)  # the same cache length for every step
        for implementation, seconds in times.items():
            print(f"batch {batch}, {cached} cached tokens, {implementation}: {statistics.median(seconds[2:]) * 1000:.1f} ms a step")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 32)
