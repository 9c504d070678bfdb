"""The sampler: turn rows of logits into token ids as each request's `SamplingParams` ask."""
from __future__ import annotations

import torch

from inference.sampling_params import SamplingParams


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
    model (before temperature and truncation), which best-of-n ranks by. `sample_batch` for
    one row; raises where the logits give no finite probabilities."""
    tokens, logprobs, finite = sample_batch(
        logits[None], [params], [generator],
        seen_tokens=[list(seen_tokens)], ban_rows=[bool(banned_tokens)], banned_tokens=set(banned_tokens),
    )
    if not finite[0]:
        raise ValueError("the logits gave probabilities that are not finite")
    return tokens[0], logprobs[0]


def on_device(values, device: torch.device) -> torch.Tensor:
    """`values` (a list or a CPU tensor) on `device`, copied without waiting for the device.
    The engine launches a decode step before it reads the last one's tokens back, and a plain
    `torch.tensor(values, device="cuda")` waits for the stream (a blocking copy), as may a
    copy from pageable memory: so the values go through pinned memory, asynchronously."""
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values)
    if device.type == "cpu":
        return tensor.to(device)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def greedy_batch(logits: torch.Tensor, ban_rows: list[bool], banned_tokens: set[int], *, to_host: bool = True):
    """The most likely token of every row of `logits` [rows, vocab] in one pass; rows flagged in
    `ban_rows` may not pick `banned_tokens`. For greedy requests needing nothing else. A list,
    or with `to_host=False` a tensor on the logits' device, read back by nothing."""
    # argmax over bf16 took 2.9 ms for 32 rows here, over a float32 copy 0.7 ms.
    if banned_tokens and any(ban_rows):
        logits = logits.to(torch.float32, copy=True)  # edited below; the model's output is read-only
        rows = on_device([row for row, ban in enumerate(ban_rows) if ban], logits.device)
        logits[rows.unsqueeze(1), on_device(sorted(banned_tokens), logits.device).unsqueeze(0)] = float("-inf")
    tokens = logits.float().argmax(dim=-1)
    return tokens.tolist() if to_host else tokens


def sample_batch(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    *,
    seen_tokens: list[list[int]],
    ban_rows: list[bool],
    banned_tokens: set[int],
    to_host: bool = True,
):
    """The next token of every row of `logits` [rows, vocab] at once, on the logits' device: one
    pass of tensor ops over the batch whatever each row asks for, and only the chosen ids,
    their log-probabilities and a per-row "finite" flag copied back. Row r follows
    `params[r]`, penalises `seen_tokens[r]` and, where `ban_rows[r]`, may not pick
    `banned_tokens`; `generators[r]` (a seeded request's) draws row r's randomness, None: the
    global generator. A row whose probabilities are not finite gets token 0 and False.
    Penalties and bans apply before the log-probabilities, temperature and truncation after.
    Returns (ids, log-probabilities, flags) as lists, or with `to_host=False` the three as one
    float64 tensor [3, rows] on the device, which nothing has waited for."""
    rows, vocab = logits.shape
    device = logits.device
    # A float32 copy: bf16 softmax loses the tail, and the penalties below edit it in place.
    logits = logits.to(torch.float32, copy=True)
    penalty = on_device([p.repetition_penalty for p in params], device)[:, None]
    penalised = [row for row in range(rows) if params[row].repetition_penalty != 1.0 and seen_tokens[row]]
    if penalised:
        width = max(len(seen_tokens[row]) for row in penalised)
        # Rows are padded with their own first token: scattering it twice marks it once.
        index = on_device([
            seen_tokens[row] + [seen_tokens[row][0]] * (width - len(seen_tokens[row])) for row in penalised
        ], device)
        seen = torch.zeros((len(penalised), vocab), dtype=torch.bool, device=device).scatter_(1, index, True)
        chosen = on_device(penalised, device)
        part, row_penalty = logits[chosen], penalty[chosen]
        penalised_part = torch.where(part > 0, part / row_penalty, part * row_penalty)
        logits[chosen] = torch.where(seen, penalised_part, part)
    if banned_tokens and any(ban_rows):
        banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        banned[on_device(sorted(banned_tokens), device)] = True
        logits.masked_fill_(on_device(ban_rows, device)[:, None] & banned[None, :], float("-inf"))
    # The picked token's log-probability is its logit less the row's log-normaliser: the whole
    # log_softmax is not needed.
    log_normaliser = torch.logsumexp(logits, dim=-1)
    is_greedy = [p.greedy for p in params]
    temperature = on_device([1.0 if p.greedy else p.temperature for p in params], device)[:, None]
    top_k = [min(p.top_k, vocab) if p.top_k and not p.greedy else 0 for p in params]
    top_p = [p.top_p if not p.greedy else 1.0 for p in params]
    cut = [bool(top_k[row] or top_p[row] < 1.0) for row in range(rows)]
    truncated = [row for row in range(rows) if not is_greedy[row] and cut[row]]
    plain = [row for row in range(rows) if not is_greedy[row] and not cut[row]]
    # Inverse transform: one uniform number per row, the first token whose cumulative
    # probability passes it (a token of probability 0 never does). A seeded row draws its
    # number from its own generator, so its tokens do not depend on the rest of the batch.
    uniform = torch.rand((rows, 1), device=device)
    seeded = [row for row, generator in enumerate(generators) if generator is not None and not params[row].greedy]
    if seeded:
        draws = torch.cat([torch.rand(1, generator=generators[row], device=generators[row].device) for row in seeded])
        uniform[on_device(seeded, device), 0] = on_device(draws, device)
    tokens = logits.argmax(dim=-1)  # the greedy rows'; sampled rows are written over
    finite = torch.ones(rows, dtype=torch.bool, device=device)  # a greedy row is always decided
    if plain:
        index = on_device(plain, device)
        probabilities = torch.softmax(logits[index] / temperature[index], dim=-1)
        finite[index] = torch.isfinite(probabilities).all(dim=-1)
        tokens[index] = _inverse_transform(probabilities, uniform[index])
    if truncated:
        index = on_device(truncated, device)
        picked, decided = _sample_truncated(
            logits[index] / temperature[index], [top_k[row] for row in truncated], [top_p[row] for row in truncated],
            uniform[index],
        )
        tokens[index], finite[index] = picked, decided
    tokens = torch.where(finite, tokens, 0)
    picked = logits.gather(1, tokens[:, None])[:, 0] - log_normaliser
    # One copy back for the three: ids are exact in float64.
    chosen = torch.stack([tokens.double(), picked.double(), finite.double()])
    if not to_host:
        return chosen
    ids, logprobs, ok = chosen.tolist()
    return [int(i) for i in ids], logprobs, [bool(flag) for flag in ok]


# A top-k or top-p row first looks for its kept tokens among this many of its most likely ones,
# then among the next number's, and only then sorts its whole vocabulary: sorting 64 rows of
# SmolLM2's 49,152 took 290 ms on a 2-core CPU, their top 64 6 ms, and at temperature 0.7
# the top 64 held the nucleus (top-p 0.9) at 99 % of SmolLM2's steps (96 % within 1,024 at
# temperature 1.0).
CANDIDATES = (64, 1024)


def _sample_truncated(scaled: torch.Tensor, top_k: list[int], top_p: list[float], uniform: torch.Tensor):
    """Top-k then top-p (on the probabilities renormalised over the top k) for every row of
    `scaled` [rows, vocab] (logits over temperature), drawing with `uniform` [rows, 1] among the
    kept tokens in vocabulary order: the same token whichever width found them. `top_k[r]` 0
    is no top-k, at most the vocabulary. Returns (token ids, a per-row "finite" flag)."""
    rows, vocab = scaled.shape
    device = scaled.device
    tokens = torch.zeros(rows, dtype=torch.long, device=device)
    finite = torch.zeros(rows, dtype=torch.bool, device=device)
    # The probabilities from softmax (exp(x - max) / sum): taken as exp(x - logsumexp), every one
    # of a row carried the rounding of logsumexp (~1e-6 at -log(vocab)), which moved the
    # nucleus's edge at the least change in a logit.
    probabilities_all = torch.softmax(scaled, dim=-1)
    pending = list(range(rows))
    # On a GPU the whole sort is cheap, and knowing which rows the candidates decided would
    # wait for the device.
    widths = [w for w in CANDIDATES if w < vocab] if device.type == "cpu" else []
    for width in (*widths, vocab):
        index = on_device(pending, device)
        if width < vocab:
            values, order = torch.topk(scaled[index], width, dim=-1)  # most likely first
        else:
            values, order = torch.sort(scaled[index], dim=-1, descending=True)
        k = [top_k[row] or vocab for row in pending]
        k_column = on_device(k, device)[:, None]
        in_top_k = torch.arange(width, device=device)[None, :] < k_column
        values = values.masked_fill(~in_top_k, float("-inf"))
        # Renormalised over the top k where they are all here, else over the whole vocabulary.
        within = on_device([k_row <= width for k_row in k], device)
        probabilities = probabilities_all[index].gather(1, order).masked_fill(~in_top_k, 0.0)
        probabilities = torch.where(within[:, None], probabilities / probabilities.sum(dim=-1, keepdim=True), probabilities)
        # Drop a token when the ones before it already reach top_p; the first always stays.
        p = on_device([top_p[row] for row in pending], device)[:, None]
        drop = ((probabilities.cumsum(dim=-1) - probabilities) >= p) & (p < 1.0)
        values = values.masked_fill(drop, float("-inf"))
        # The draw walks the kept tokens in vocabulary order, not most likely first: tokens of
        # nearly equal probability swap places in a sort at the least rounding difference (the
        # batch a row shares changes the last bits of its logits), which moved seeded draws.
        if width == vocab:
            ids = None
            values = torch.empty_like(values).scatter_(1, order, values)
        else:
            ids, by_id = torch.sort(order, dim=-1)
            values = values.gather(1, by_id)
        kept = torch.softmax(values, dim=-1)
        picked_finite = torch.isfinite(kept).all(dim=-1)
        choice = _inverse_transform(kept, uniform[index])
        picked = choice if ids is None else ids.gather(1, choice[:, None])[:, 0]
        if width == vocab:  # the whole vocabulary, sorted: every row is decided
            tokens[index], finite[index] = picked, picked_finite
            break
        # Decided here when its top k are all here, or (no top-k) what is here reaches top_p.
        no_top_k = on_device([k_row == vocab for k_row in k], device)
        decided = (within | (no_top_k & (probabilities.sum(dim=-1) >= p[:, 0]))).tolist()
        here = [position for position, done in enumerate(decided) if done]
        if here:
            positions = on_device(here, device)
            tokens[index[positions]], finite[index[positions]] = picked[positions], picked_finite[positions]
        pending = [row for row, done in zip(pending, decided, strict=True) if not done]
        if not pending:
            break
    return tokens, finite


def _inverse_transform(probabilities: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row of `probabilities` [rows, n], the first position whose cumulative probability
    passes `uniform` [rows, 1] of the row's total; a position of probability 0 never does.
    Not-a-number counts as 0 (the caller flags such rows). Edits `probabilities`."""
    cumulative = probabilities.nan_to_num_(nan=0.0).cumsum_(dim=-1)
    return torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True).clamp_(max=probabilities.shape[-1] - 1)[:, 0]
