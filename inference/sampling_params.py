"""How a request picks its tokens: `SamplingParams`, validated when created. Plain Python, so
the web side validates an API call's parameters without importing torch; the sampler that
follows them is `inference.sampling`."""
from __future__ import annotations

from dataclasses import dataclass

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
