"""Quantized weights: GGUF blocks read without re-rounding a code, and products by torch's
int4 and int8 CPU kernels within a stated tolerance of the de-quantized matrices."""
import numpy as np
import pytest
import torch

from inference.quant import GROUP, Q4_0, Q4_1, dequantize_gguf, gguf_blocks, int4_from_gguf, int8_from_float


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
