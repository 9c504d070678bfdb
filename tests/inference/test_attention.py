"""The CPU decode attention matches torch's SDPA, alone and inside the batched runner."""
import pytest
import torch
import torch.nn.functional as F

from inference import attention
from inference.attention import NAME, decode_attention
from inference.loading import load_model, resolve_model_source
from inference.runner import ModelRunner


class Layer(torch.nn.Module):
    num_key_value_groups = 3


@pytest.fixture(autouse=True)
def small_batches_too(monkeypatch):
    """Tests use batches small enough for SDPA; take the matmul path anyway."""
    monkeypatch.setattr(attention, "MIN_WORK", 0)


def reference(query, key, value, mask):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("masked", [False, True])
def test_one_query_token_matches_sdpa(masked):
    torch.manual_seed(0)
    query, key, value = torch.randn(5, 9, 1, 16), torch.randn(5, 3, 12, 16), torch.randn(5, 3, 12, 16)
    mask = None
    if masked:
        mask = torch.ones(5, 1, 1, 12, dtype=torch.bool)
        mask[1, ..., :4] = False  # a left-padded row
    output, _ = decode_attention(Layer(), query, key, value, mask, scaling=16**-0.5)
    assert output.shape == (5, 1, 9, 16)
    torch.testing.assert_close(output, reference(query, key, value, mask))


def test_many_query_tokens_go_to_sdpa():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 9, 6, 16), torch.randn(2, 3, 6, 16), torch.randn(2, 3, 6, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).tril().view(1, 1, 6, 6)
    output, _ = decode_attention(Layer(), query, key, value, causal, scaling=16**-0.5)
    torch.testing.assert_close(output, reference(query, key, value, causal))


def test_the_batched_runner_gives_each_row_the_logits_of_its_sequence_alone(tiny_model_dir):
    """Rows of different lengths (left padding), joined at different steps, one leaving: every
    decode step's logits equal a plain forward pass over that sequence by itself."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = ModelRunner(model, torch.device("cpu"), fast_decode=False)  # through transformers
    assert model.config._attn_implementation == NAME
    sequences = {1: [5, 6, 7, 8, 9, 10, 11], 2: [12, 13, 14], 3: [20, 21, 22, 23, 24]}

    def alone(tokens):
        with torch.inference_mode():
            return model(input_ids=torch.tensor([tokens])).logits[0, -1]

    runner.prefill({1: sequences[1], 2: sequences[2]})
    runner.commit()
    for step in range(4):
        if step == 1:
            runner.prefill({3: sequences[3]})
            runner.commit()
        if step == 2:
            runner.remove({2})
            del sequences[2]
        next_tokens = [30 + step + row for row in runner.rows]
        logits = runner.decode(next_tokens)
        for row, request_id in enumerate(runner.rows):
            sequences[request_id].append(next_tokens[row])
            torch.testing.assert_close(logits[row], alone(sequences[request_id]), atol=1e-4, rtol=1e-4)
