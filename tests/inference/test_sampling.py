import math

import pytest
import torch

from inference.sampling import make_generator, sample, sample_batch
from inference.sampling_params import SamplingParams


def pick(logits, params, seed=0, **kwargs):
    return sample(logits, params, make_generator(seed), **kwargs)[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": ("",)}, "stop"),
        ({"stop": tuple("abcdefghij")}, "stop"),
        ({"min_tokens": 10, "max_new_tokens": 5}, "min_tokens"),
        ({"seed": -3}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": 10**30}, "top_k"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"max_new_tokens": 10**30}, "max_new_tokens"),
        ({"stop": ("x" * 257,)}, "stop"),
        ({"best_of": 0}, "best_of"),
        ({"best_of": 17}, "best_of"),
    ],
)
def test_out_of_range_parameters_are_rejected_with_their_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_greedy_picks_the_most_likely_token_and_reports_its_log_probability():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    token, logprob = sample(logits, SamplingParams(temperature=0.0), make_generator(0))
    assert token == 1
    assert logprob == pytest.approx(float(torch.log_softmax(logits, -1)[1]))
    assert logprob < 0


def test_top_k_one_is_greedy_whatever_the_temperature():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert {pick(logits, SamplingParams(temperature=2.0, top_k=1), seed) for seed in range(20)} == {1}


def test_top_p_keeps_only_the_smallest_set_reaching_p():
    # probabilities ≈ [0.64, 0.24, 0.09, 0.03]: p=0.7 keeps the first two only
    logits = torch.log(torch.tensor([0.64, 0.24, 0.09, 0.03]))
    assert {pick(logits, SamplingParams(temperature=1.0, top_p=0.7), seed) for seed in range(200)} == {0, 1}


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([2.0, 1.9, -1.0])
    assert pick(logits, SamplingParams(temperature=0)) == 0
    assert pick(logits, SamplingParams(temperature=0, repetition_penalty=1.2), seen_tokens=[0]) == 1
    # a negative logit is pushed further down, not up
    assert pick(torch.tensor([-1.0, -1.1]), SamplingParams(temperature=0, repetition_penalty=2.0), seen_tokens=[0]) == 1


def test_banned_tokens_are_never_picked():
    logits = torch.tensor([5.0, 1.0, 0.0])
    assert pick(logits, SamplingParams(temperature=0), banned_tokens={0}) == 1
    assert all(pick(logits, SamplingParams(temperature=1.0), s, banned_tokens={0}) != 0 for s in range(50))


def test_same_seed_gives_the_same_samples_and_another_seed_differs():
    logits = torch.zeros(1000)
    params = SamplingParams(temperature=1.0)

    def draws(seed):
        generator = make_generator(seed)
        return [sample(logits, params, generator)[0] for _ in range(10)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert math.isclose(sample(logits, params, make_generator(1))[1], -math.log(1000), rel_tol=1e-5)


def test_greedy_batch_takes_each_rows_best_and_honours_bans_per_row():
    from inference.sampling import greedy_batch

    logits = torch.tensor([[0.0, 5.0, 4.0], [0.0, 5.0, 4.0], [3.0, 1.0, 2.0]]).to(torch.bfloat16)
    assert greedy_batch(logits, [False, False, False], set()) == [1, 1, 0]
    assert greedy_batch(logits, [True, False, True], {1}) == [2, 1, 0]


def test_a_temperature_too_small_to_divide_by_is_greedy():
    logits = torch.tensor([0.5, 3.0, 2.9, -1.0])
    params = SamplingParams(temperature=1e-300)
    assert params.greedy
    assert {pick(logits, params, seed) for seed in range(20)} == {1}


def test_best_of_candidate_seeds_stay_within_the_generators_range():
    params = SamplingParams(seed=2**63 - 1, best_of=3)
    seeds = [params.candidate_seed(n) for n in range(3)]
    assert seeds == [2**63 - 1, 0, 1]
    for seed in seeds:
        make_generator(seed)
    assert SamplingParams().candidate_seed(2) is None


def test_logits_that_give_no_finite_probabilities_raise_instead_of_sampling_garbage():
    with pytest.raises(ValueError, match="not finite"):
        pick(torch.tensor([float("nan"), 1.0, 2.0]), SamplingParams(temperature=1.0))


def draw_batch(logits, params, seeds=None, **kwargs):
    rows = logits.shape[0]
    seeds = seeds or [None] * rows
    generators = [None if seed is None else make_generator(seed) for seed in seeds]
    defaults = {"seen_tokens": [[] for _ in range(rows)], "ban_rows": [False] * rows, "banned_tokens": set()}
    return sample_batch(logits, params, generators, **{**defaults, **kwargs})


def test_a_batch_decides_each_row_by_its_own_parameters():
    """Greedy, penalised, banned, top-k 1 and top-p rows in one call: each gets what `sample`
    gives that row alone, and its log-probability under the unmodified model."""
    base = torch.tensor([2.0, 1.9, -1.0, 0.5])
    logits = base.repeat(5, 1)
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, repetition_penalty=1.2),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.5, top_k=1),
        SamplingParams(temperature=1.0, top_p=0.3),
    ]
    seen = [[], [0], [], [], []]
    ban = [False, False, True, False, False]
    tokens, logprobs, finite = draw_batch(logits, params, seen_tokens=seen, ban_rows=ban, banned_tokens={0})
    assert tokens == [0, 1, 1, 0, 0]
    assert finite == [True] * 5
    for row in range(5):
        alone = sample(logits[row], params[row], make_generator(0), seen_tokens=seen[row],
                       banned_tokens={0} if ban[row] else frozenset())
        assert alone[0] == tokens[row]
        assert logprobs[row] == pytest.approx(alone[1], abs=1e-6)


def test_batched_draws_follow_the_rows_probabilities_and_truncation():
    """4,000 draws of three rows: plain temperature sampling matches the softmax within a few
    standard errors, top-k 2 and top-p 0.7 never leave their sets."""
    probabilities = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probabilities).repeat(3, 1)
    params = [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_k=2),
              SamplingParams(temperature=1.0, top_p=0.7)]
    counts = torch.zeros(3, 4)
    for seed in range(4000):
        tokens, _, _ = draw_batch(logits, params, seeds=[seed, seed + 1, seed + 2])
        counts[torch.arange(3), torch.tensor(tokens)] += 1
    frequencies = counts[0] / 4000
    assert torch.all((frequencies - probabilities).abs() < 4 * torch.sqrt(probabilities * (1 - probabilities) / 4000))
    assert counts[1, 2:].sum() == 0 and counts[1, :2].min() > 0
    assert counts[2, 2:].sum() == 0 and counts[2, :2].min() > 0  # 0.5 + 0.3 reaches 0.7


def test_a_seeded_row_draws_the_same_tokens_whatever_else_is_in_the_batch():
    logits = torch.zeros(3, 1000)
    params = [SamplingParams(temperature=1.0, seed=7)] * 3

    def tokens(seeds, rows):
        generators = {seed: make_generator(seed) for seed in seeds}
        draws = []
        for _ in range(10):
            draws.append(sample_batch(
                logits[:rows], params[:rows], [generators[seed] for seed in seeds],
                seen_tokens=[[]] * rows, ban_rows=[False] * rows, banned_tokens=set(),
            )[0][0])
        return draws

    assert tokens([7], 1) == tokens([7, 8, 9], 3)
    assert tokens([7], 1) != tokens([8], 1)


def test_a_row_without_finite_probabilities_is_flagged_and_the_others_are_not_touched():
    logits = torch.tensor([[float("nan"), 1.0, 2.0], [0.0, 5.0, 1.0]])
    tokens, _, finite = draw_batch(logits, [SamplingParams(temperature=1.0), SamplingParams(temperature=0)])
    assert finite == [False, True]
    assert tokens[1] == 1


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.8, top_p=0.9),  # peaked rows: the top 64 hold the nucleus
        SamplingParams(temperature=1.0, top_k=40),
        SamplingParams(temperature=1.0, top_k=300, top_p=0.95),  # top-k beyond the first width
        SamplingParams(temperature=1.0, top_k=1500),  # beyond both widths: the whole sort
        SamplingParams(temperature=2.0, top_p=0.99),  # flat rows: the nucleus is thousands wide
    ],
)
def test_truncated_rows_draw_the_same_tokens_from_their_top_candidates_as_from_a_whole_sort(params, monkeypatch):
    """A top-k / top-p row looks among its most likely tokens first (inference.sampling.CANDIDATES)
    and sorts its whole vocabulary only where they do not decide it: the draws must be the ones
    the whole sort gives, row by row, seed by seed."""
    from inference import sampling

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5000, generator=generator) * torch.linspace(0.5, 6.0, 8)[:, None]  # flat to peaked

    def draws():
        return [draw_batch(logits, [params] * 8, seeds=list(range(seed, seed + 8)))[0] for seed in range(40)]

    quick = draws()
    monkeypatch.setattr(sampling, "CANDIDATES", ())
    assert quick == draws()
    assert len({token for row in quick for token in row}) > 40  # they did draw, and widely
