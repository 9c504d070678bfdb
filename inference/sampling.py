"""Sampling parameters and the sampler: turn one row of logits into one token id."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; validated when created."""

    max_new_tokens: int = 512  # hard cap on generated tokens
    temperature: float = 0.7  # 0 means greedy (always the most likely token)
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 keeps all
    seed: int | None = None  # same seed and parameters give the same text

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append("max_new_tokens must be a whole number of at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append("temperature must be between 0 and 2")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append("top_k must be a whole number of at least 0")
        if not 0.0 < self.top_p <= 1.0:
            problems.append("top_p must be greater than 0 and at most 1")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            problems.append("seed must be a whole number of at least 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator per request, so one request's seed never depends on another's."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from `logits` (shape [vocab]) as `params` say."""
    if params.greedy:
        return int(torch.argmax(logits))
    # Sample in float32 on the CPU: bf16 softmax loses the tail, and the generator lives there.
    logits = logits.float().cpu() / params.temperature
    if params.top_k:
        kth_largest = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the ones before it already reach top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        logits[order[drop_sorted]] = float("-inf")
    probabilities = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probabilities, num_samples=1, generator=generator))
