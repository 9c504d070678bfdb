"""Sampling parameters and the sampler: turn one row of logits into one token id."""
from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256  # per stop string: every token is compared with each one's tail
MAX_BEST_OF = 16
MAX_NEW_TOKENS = 1_000_000
MAX_TOP_K = 1_000_000
MAX_SEED = 2**63 - 1  # torch's generator takes a signed 64-bit seed
# Below this temperature a request is greedy: dividing logits by a tiny temperature overflows
# float32 to inf and the softmax to NaN (vLLM's _SAMPLING_EPS).
GREEDY_BELOW_TEMPERATURE = 1e-5
# A repetition penalty divides or multiplies logits; below this it overflows them the same way.
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 10.0


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens; validated when created."""

    max_new_tokens: int = 512  # hard cap on generated tokens
    temperature: float = 0.7  # 0 means greedy (always the most likely token)
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 keeps all
    repetition_penalty: float = 1.0  # >1 makes tokens already in the text less likely (CTRL's rule)
    stop: tuple[str, ...] = ()  # end the answer before the first of these strings
    min_tokens: int = 0  # end-of-sequence is not allowed before this many tokens
    ignore_eos: bool = False  # keep going past end-of-sequence until max_new_tokens (benchmarks)
    seed: int | None = None  # same seed and parameters give the same text
    best_of: int = 1  # decode this many candidates together, return the most likely one

    def __post_init__(self) -> None:
        problems = []
        if not _whole(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            problems.append(f"max_new_tokens must be a whole number between 1 and {MAX_NEW_TOKENS:,}")
        if not _number(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            problems.append("temperature must be between 0 and 2")
        if not _whole(self.top_k) or not 0 <= self.top_k <= MAX_TOP_K:
            problems.append(f"top_k must be a whole number between 0 and {MAX_TOP_K:,}")
        if not _number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            problems.append("top_p must be greater than 0 and at most 1")
        if not _number(self.repetition_penalty) or not (
            MIN_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY
        ):
            problems.append(
                f"repetition_penalty must be between {MIN_REPETITION_PENALTY} and {MAX_REPETITION_PENALTY:g}"
            )
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in self.stop
        ):
            problems.append(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters")
        if not _whole(self.min_tokens) or not 0 <= self.min_tokens <= (self.max_new_tokens if _whole(self.max_new_tokens) else 0):
            problems.append("min_tokens must be a whole number between 0 and max_new_tokens")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed must be a whole number between 0 and {MAX_SEED}")
        if not _whole(self.best_of) or not 1 <= self.best_of <= MAX_BEST_OF:
            problems.append(f"best_of must be a whole number between 1 and {MAX_BEST_OF}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    def candidate_seed(self, n: int) -> int | None:
        """The seed of best-of-n candidate `n`: the request's seed and the next ones, wrapping
        within the generator's range."""
        return None if self.seed is None else (self.seed + n) % (MAX_SEED + 1)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator per request, so one request's seed never depends on another's."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    *,
    seen_tokens: list[int] = (),
    banned_tokens: set[int] = frozenset(),
) -> tuple[int, float]:
    """Pick the next token from `logits` [vocab]; return it with its log-probability under the
    model (before temperature and truncation), which best-of-n ranks by."""
    # A float32 CPU copy: the generator lives on the CPU, bf16 softmax loses the tail, and the
    # penalties below edit it in place.
    logits = logits.to(device="cpu", dtype=torch.float32, copy=True)
    if params.repetition_penalty != 1.0 and seen_tokens:
        seen = torch.tensor(sorted(set(seen_tokens)))
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / params.repetition_penalty, scores * params.repetition_penalty)
    if banned_tokens:
        logits[list(banned_tokens)] = float("-inf")
    log_probabilities = torch.log_softmax(logits, dim=-1)
    if params.greedy:
        token = int(torch.argmax(logits))
        return token, float(log_probabilities[token])
    logits = logits / params.temperature
    if params.top_k:
        kth_largest = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probabilities = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the ones before it already reach top_p; the first always stays.
        drop_sorted = (sorted_probabilities.cumsum(dim=-1) - sorted_probabilities) >= params.top_p
        logits[order[drop_sorted]] = float("-inf")
    probabilities = torch.softmax(logits, dim=-1)
    if not bool(torch.isfinite(probabilities).all()):
        raise ValueError("the logits gave probabilities that are not finite")
    token = int(torch.multinomial(probabilities, num_samples=1, generator=generator))
    return token, float(log_probabilities[token])


def greedy_batch(logits: torch.Tensor, ban_rows: list[bool], banned_tokens: set[int]) -> list[int]:
    """The most likely token of every row of `logits` [rows, vocab] in one pass; rows flagged in
    `ban_rows` may not pick `banned_tokens`. For greedy requests needing nothing else."""
    # argmax over bf16 took 2.9 ms for 32 rows here, over a float32 copy 0.7 ms.
    if banned_tokens and any(ban_rows):
        logits = logits.to(torch.float32, copy=True)  # edited below; the model's output is read-only
        rows = torch.tensor([row for row, ban in enumerate(ban_rows) if ban])
        logits[rows.unsqueeze(1), torch.tensor(sorted(banned_tokens)).unsqueeze(0)] = float("-inf")
    return logits.float().argmax(dim=-1).tolist()
