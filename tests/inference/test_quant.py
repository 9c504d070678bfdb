"""Quantized weights: GGUF blocks read without re-rounding a code, and products by torch's
int4 and int8 CPU kernels within a stated tolerance of the de-quantized matrices."""
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.quant import (
    GROUP,
    Q4_0,
    Q4_1,
    Q8_0,
    QUANT_ROWS,
    decoder_weights,
    dequantize_gguf,
    gguf_blocks,
    gguf_tensors,
    int4_from_float,
    int4_from_gguf,
    int4_from_q8_0,
    int8_from_float,
)

TEXT = Path(__file__).parent.parent / "data" / "public-domain.txt"


def q4_blocks(codes: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """GGUF bytes of a Q4_0 (m None) or Q4_1 tensor: per block d (fp16), [m (fp16)], 16 bytes
    whose low nibbles are the block's first 16 codes and high nibbles the next 16."""
    rows, columns = codes.shape
    blocks = codes.reshape(rows, columns // GROUP, GROUP).astype(np.uint8)
    nibbles = blocks[..., :16] | (blocks[..., 16:] << 4)
    parts = [d.astype(np.float16)[..., None].view(np.uint8)]
    if m is not None:
        parts.append(m.astype(np.float16)[..., None].view(np.uint8))
    parts.append(nibbles)
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


@pytest.mark.parametrize("kind", [Q4_0, Q4_1])
def test_q4_blocks_are_read_code_for_code(kind):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, size=(8, 64))
    d = rng.uniform(0.001, 0.1, size=(8, 2))
    m = rng.uniform(-0.5, 0.0, size=(8, 2)) if kind == Q4_1 else None
    read_codes, scale, minimum = gguf_blocks(kind, q4_blocks(codes, d, m), (8, 64))
    assert np.array_equal(read_codes.numpy(), codes)
    assert np.array_equal(scale.numpy(), d.astype(np.float16).astype(np.float32))
    if kind == Q4_1:
        assert np.array_equal(minimum.numpy(), m.astype(np.float16).astype(np.float32))
    expected = codes * np.repeat(d.astype(np.float16).astype(np.float32), GROUP, axis=1)
    expected = expected + np.repeat(m.astype(np.float16).astype(np.float32), GROUP, axis=1) if kind == Q4_1 else (
        (codes - 8) * np.repeat(d.astype(np.float16).astype(np.float32), GROUP, axis=1))
    assert np.allclose(dequantize_gguf(kind, q4_blocks(codes, d, m), (8, 64)).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", [Q4_0, Q4_1])
def test_the_int4_product_matches_the_dequantized_matrix(kind):
    rng = np.random.default_rng(2)
    rows, columns = 64, 256
    data = q4_blocks(rng.integers(0, 16, size=(rows, columns)), rng.uniform(0.001, 0.05, size=(rows, columns // 32)),
                     rng.uniform(-0.4, 0.0, size=(rows, columns // 32)) if kind == Q4_1 else None)
    reference = dequantize_gguf(kind, data, (rows, columns))
    x = torch.randn(3, columns)
    exact = x @ reference.t()
    # fp32 scales: d and m are exact; m + 8d is rounded once.
    assert torch.allclose(int4_from_gguf(kind, data, (rows, columns), torch.float32).matmul(x), exact, atol=1e-4)
    # bf16: activations, scales and zeros rounded to bf16 (8 bits), as a bf16 model's are.
    got = int4_from_gguf(kind, data, (rows, columns), torch.bfloat16).matmul(x.bfloat16()).float()
    assert (got - exact).abs().max() <= 0.02 * exact.abs().max()


def q8_0_blocks(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """GGUF bytes of a Q8_0 tensor: per block d (fp16) and 32 signed bytes."""
    rows, columns = codes.shape
    blocks = codes.reshape(rows, columns // GROUP, GROUP).astype(np.int8).view(np.uint8)
    return np.concatenate([d.astype(np.float16)[..., None].view(np.uint8), blocks], axis=-1).reshape(rows, -1)


def test_q8_0_as_two_int4_halves_is_the_same_matrix():
    """Every code of −128..127 and a scale per block: in fp32 the product equals the
    de-quantized matrix's (to float rounding), no code re-rounded."""
    rng = np.random.default_rng(3)
    rows, columns = 64, 256
    codes = rng.integers(-128, 128, size=(rows, columns))
    codes[0, :256] = np.arange(-128, 128)
    data = q8_0_blocks(codes, rng.uniform(0.001, 0.05, size=(rows, columns // GROUP)))
    read_codes, scale, _ = gguf_blocks(Q8_0, data, (rows, columns))
    weight = int4_from_q8_0(read_codes, scale, torch.float32)
    assert weight.doubled and weight.in_features == columns
    x = torch.randn(3, columns)
    exact = x @ dequantize_gguf(Q8_0, data, (rows, columns)).t()
    assert torch.allclose(weight.matmul(x), exact, atol=1e-4)
    eye = weight.matmul(torch.eye(columns))  # column j of the product is the matrix's column j
    assert torch.allclose(eye.t(), dequantize_gguf(Q8_0, data, (rows, columns)), atol=1e-6)


def test_int4_re_rounded_from_floats_is_within_half_a_step():
    weight = torch.randn(64, 256)
    quantized = int4_from_float(weight, torch.float32)
    recovered = quantized.matmul(torch.eye(256)).t()
    groups = weight.reshape(64, -1, GROUP)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    assert ((recovered - weight).abs().reshape(64, -1, GROUP) <= step.unsqueeze(-1) / 2 + 1e-5).all()


def test_int8_per_row_products_and_embedding_rows():
    weight = torch.randn(300, 128) * torch.linspace(0.01, 2, 300).unsqueeze(1)
    quantized = int8_from_float(weight, torch.float32)
    x = torch.randn(2, 128)
    exact = x @ weight.t()
    # Each weight is within half a step (row max / 254) of its value.
    assert (quantized.rows(torch.arange(300)) - weight).abs().max(dim=1).values.le(
        weight.abs().amax(dim=1) / 254 + 1e-6).all()
    assert (quantized.matmul(x) - exact).abs().max() <= 0.01 * exact.abs().max()
    assert quantized.rows(torch.tensor([[5, 7]])).shape == (1, 2, 128)


@pytest.mark.real_model
def test_the_tensor_table_reads_as_gguf_pys_reader_reads_it():
    """Every tensor of the default model's file: name, type, shape and bytes as GGUFReader."""
    from gguf import GGUFReader

    from inference.loading import resolve_model_source

    source = resolve_model_source(None)
    path = f"{source.path}/{source.gguf_file}"
    expected = GGUFReader(path).tensors
    tensors = gguf_tensors(path)
    assert list(tensors) == [tensor.name for tensor in expected]
    assert {tensor.tensor_type.name for tensor in expected} >= {"Q4_1", "Q8_0", "F32"}  # every kind of layout
    for tensor in expected:
        ours = tensors[tensor.name]
        assert ours.tensor_type == tensor.tensor_type and ours.shape == tuple(tensor.shape.tolist()), tensor.name
        assert ours.data.dtype == tensor.data.dtype and np.array_equal(ours.data, tensor.data), tensor.name


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match="not a little-endian GGUF"):
        gguf_tensors(str(path))


@pytest.mark.real_model
def test_the_default_models_blocks_read_as_transformers_dequantizes_them():
    from gguf import GGUFReader

    from inference.loading import load_model, resolve_model_source

    source = resolve_model_source(None)
    tensors = {tensor.name: tensor for tensor in GGUFReader(f"{source.path}/{source.gguf_file}").tensors}
    model = load_model(source, dtype=torch.float32)
    heads = model.config.num_attention_heads
    checks = [("blk.3.ffn_down.weight", model.model.layers[3].mlp.down_proj.weight, None),
              ("blk.3.attn_q.weight", model.model.layers[3].self_attn.q_proj.weight, heads),
              ("token_embd.weight", model.model.embed_tokens.weight, None)]
    for name, weight, permuted_heads in checks:
        tensor = tensors[name]
        shape = (int(tensor.shape[1]), int(tensor.shape[0]))
        matrix = dequantize_gguf(tensor.tensor_type.name, tensor.data, shape)
        if permuted_heads:  # llama.cpp interleaves q's rotary halves; transformers undoes it
            half = shape[0] // permuted_heads // 2
            matrix = matrix[torch.arange(shape[0]).reshape(permuted_heads, half, 2).transpose(1, 2).reshape(-1)]
        assert torch.equal(matrix, weight.float()), name


def test_every_kind_quantizes_a_float_model_and_none_nothing(tiny_model_dir):
    """A source without Q4 blocks: auto is int8 per channel, int4 re-rounds; the products stay
    within a few per cent of the model's own; an unknown kind is refused."""
    from inference.loading import load_model, resolve_model_source

    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    assert decoder_weights(model, "none", torch.float32) is None
    with pytest.raises(ValueError, match="quant"):
        decoder_weights(model, "int3", torch.float32)
    down = model.model.layers[0].mlp.down_proj.weight
    x = torch.randn(2, down.shape[1])
    for kind, tolerance in (("auto", 0.02), ("int8", 0.02), ("int4", 0.2)):
        layers, lm_head, what = decoder_weights(model, kind, torch.float32)
        assert ("int8" if kind != "int4" else "int4") in what
        assert len(layers) == model.config.num_hidden_layers
        exact = x @ down.detach().t()
        assert (layers[0]["down"].matmul(x) - exact).abs().max() <= tolerance * exact.abs().max()
        assert lm_head.in_features == model.config.hidden_size


@pytest.mark.real_model
def test_the_quantized_path_keeps_perplexity_and_logits_of_the_de_quantized_one():
    """The default model on a fixed public-domain text (468 tokens) cut into QUANT_ROWS
    pieces, each fed one token per decode step as a row of the same steps (the most rows the
    quantized path takes; a quarter of the steps of one row): with CHAT_QUANT=auto (the file's
    int4 blocks, its Q8_0 lm_head) perplexity is within 1 % of the de-quantized weights', and
    the logits within the stated bounds: per position a KL divergence of at most 0.2 nats (0.01
    on average), 90 % of next-token choices the same, no logit off by more than 3 (they span
    ±37; bf16 logits are 0.125 apart there)."""
    from inference.loading import load_model, load_tokenizer, resolve_model_source
    from inference.runner import ModelRunner, pick_dtype

    cpu = torch.device("cpu")
    source = resolve_model_source(None)
    ids = load_tokenizer(source)(TEXT.read_text())["input_ids"]
    cuts = [round(row * len(ids) / QUANT_ROWS) for row in range(QUANT_ROWS + 1)]
    pieces = [ids[start:end] for start, end in itertools.pairwise(cuts)]

    def logits(kind: str) -> torch.Tensor:
        runner = ModelRunner(load_model(source, dtype=pick_dtype(cpu)), cpu)
        what = runner.quantize(kind, f"{source.path}/{source.gguf_file}")
        if kind != "none" and not runner.quantized:
            # Where the CPU computes bf16 the int4 path is faster and taken; in fp32 (AVX2, no
            # bf16) its load-time timing may find it slower than the fp32 weights it would replace.
            assert runner.dtype is not torch.bfloat16, what
            pytest.skip(f"CHAT_QUANT=auto keeps the de-quantized weights on this CPU: {what}")
        # Prefill is not quantized: each piece's first token, then its others one a step.
        runner.prefill({row: piece[:1] for row, piece in enumerate(pieces)})
        runner.commit()
        rows: list[list[torch.Tensor]] = [[] for _ in pieces]
        for step in range(1, max(map(len, pieces)) - 1):
            runner.remove({row for row in runner.rows if step >= len(pieces[row]) - 1})
            for row, values in zip(runner.rows, runner.decode([pieces[row][step] for row in runner.rows]), strict=True):
                rows[row].append(values.float())
        return torch.cat([torch.stack(values) for values in rows])

    quantized, reference = logits("auto"), logits("none")
    targets = torch.tensor([token for piece in pieces for token in piece[2:]])

    def perplexity(values: torch.Tensor) -> float:
        return math.exp(torch.nn.functional.cross_entropy(values, targets).item())

    assert abs(perplexity(quantized) / perplexity(reference) - 1) <= 0.01
    divergence = torch.nn.functional.kl_div(
        quantized.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    assert divergence.max() <= 0.2 and divergence.mean() <= 0.01
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    assert (quantized - reference).abs().max() <= 3
