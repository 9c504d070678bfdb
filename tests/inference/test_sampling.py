import pytest
import torch

from inference.sampling import SamplingParams, make_generator, sample


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -3}, "seed"),
    ],
)
def test_out_of_range_parameters_are_rejected_with_their_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_greedy_picks_the_most_likely_token():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(temperature=0.0), make_generator(0)) == 1


def test_top_k_one_is_greedy_whatever_the_temperature():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    picks = {sample(logits, SamplingParams(temperature=2.0, top_k=1), make_generator(seed)) for seed in range(20)}
    assert picks == {1}


def test_top_p_keeps_only_the_smallest_set_reaching_p():
    # probabilities ≈ [0.64, 0.24, 0.09, 0.03]: p=0.7 keeps the first two only
    logits = torch.log(torch.tensor([0.64, 0.24, 0.09, 0.03]))
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.7), make_generator(seed)) for seed in range(200)}
    assert picks == {0, 1}


def test_same_seed_gives_the_same_samples_and_another_seed_differs():
    logits = torch.zeros(1000)
    params = SamplingParams(temperature=1.0, seed=7)
    first = [sample(logits, params, generator) for generator in [make_generator(7)] for _ in range(10)]
    second = [sample(logits, params, generator) for generator in [make_generator(7)] for _ in range(10)]
    other = [sample(logits, params, generator) for generator in [make_generator(8)] for _ in range(10)]
    assert first == second
    assert first != other
