"""Weight-only quantized matrices for decode steps of few rows.

A decode step of one or a few rows is a matrix-vector product bound by memory: its time is
the bytes of weights it reads. The default model ships as GGUF Q4_1 (4-bit weights in
blocks of 32, each block with a scale and a minimum); transformers de-quantizes that to
bf16 at load, and a step then reads 4× the bytes. Here the blocks are kept as they are and
multiplied by torch's own CPU kernels:

- **int4, groups of 32** (`torch.ops.aten._weight_int4pack_mm_for_cpu`) from Q4_0 and Q4_1
  blocks. The kernel computes w = (q − 8) × scale + zero per group; Q4_1's w = d × q + m is
  that with scale = d and zero = m + 8d, Q4_0's w = d × (q − 8) with zero = 0. The 4-bit
  codes are taken as stored (no re-rounding). d and m are fp16 in the file: in fp32 (the
  scales of an fp32 step) they are exact, and m + 8d is rounded once to fp32; in bf16 (the
  kernel wants the activations' dtype) each is rounded to bf16, as the de-quantized bf16
  weights are.
- **Q8_0 as two int4 halves** (`int4_from_q8_0`): the default model's lm_head (its token
  embedding, tied) exactly, per-block scales kept, in one int4 product.
- **int8 per output channel** (`torch._weight_int8pack_mm`) for every other source: fp16,
  bf16 or fp32 weights (re-rounded to one scale per row).

`decoder_weights` picks among them for CHAT_QUANT; `ModelRunner.quantize` keeps them only
where `step_seconds` finds them faster on the CPU at hand.
"""
from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

GROUP = 32  # weights per GGUF block and per int4 group
# Decode steps of up to this many rows use the quantized weights: `python -m bench.decoder
# --quant` (2-core AMD EPYC, bf16) gave 8.6 / 11.6 / 13.5 / 15.7 ms at 1–4 rows against
# 18.6–20.5 ms de-quantized, and 28.8–31.0 against 24.2–29.1 ms at 5–8 rows, where the step
# is no longer bound by reading the weights.
QUANT_ROWS = 4
Q4_0, Q4_1, Q8_0 = "Q4_0", "Q4_1", "Q8_0"


@dataclass
class Int4Weight:
    """A [out, in] matrix as torch's packed int4 with a scale and a zero per 32 inputs."""

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor  # [in / 32, out, 2] in the activations' dtype
    out_features: int
    in_features: int
    doubled: bool = False  # the matrix is [high | low] halves of 8-bit codes: x is fed twice

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.doubled:
            x = torch.cat([x, x], dim=-1)
        if x.dim() == 2 and x.dtype == self.scales_and_zeros.dtype:  # a decode step's rows
            return _int4_mm(x, self.packed, GROUP, self.scales_and_zeros)
        shape = x.shape
        x = x.reshape(-1, shape[-1]).to(self.scales_and_zeros.dtype)
        y = _int4_mm(x, self.packed, GROUP, self.scales_and_zeros)
        return y.reshape(*shape[:-1], self.out_features)

    def rows_matmul(self, dtype: torch.dtype):
        """`matmul` for 2-D rows of `dtype` as a bare kernel call (its checks made once, here);
        None where rows of `dtype` need converting."""
        if self.scales_and_zeros.dtype != dtype:
            return None
        packed, scales_and_zeros = self.packed, self.scales_and_zeros
        if self.doubled:
            return lambda x: _int4_mm(torch.cat([x, x], dim=-1), packed, GROUP, scales_and_zeros)
        return lambda x: _int4_mm(x, packed, GROUP, scales_and_zeros)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_and_zeros.nbytes


@dataclass
class Int8Weight:
    """A [out, in] matrix as int8 with one scale per output channel (row)."""

    codes: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # [out], in the activations' dtype

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.dtype == self.scales.dtype:
            return torch._weight_int8pack_mm(x, self.codes, self.scales)
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(self.scales.dtype), self.codes, self.scales)
        return y.reshape(*shape[:-1], self.codes.shape[0])

    def rows_matmul(self, dtype: torch.dtype):
        """As Int4Weight.rows_matmul."""
        if self.scales.dtype != dtype:
            return None
        codes, scales = self.codes, self.scales
        return lambda x: torch._weight_int8pack_mm(x, codes, scales)

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of the de-quantized matrix: the embedding of token ids."""
        return self.codes[index].to(self.scales.dtype) * self.scales[index].unsqueeze(-1)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


QuantWeight = Int4Weight | Int8Weight
# The overload itself: calling it skips the packet's per-call overload lookup.
_int4_mm = torch.ops.aten._weight_int4pack_mm_for_cpu.default


def int4_from_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> Int4Weight:
    """codes [out, in] in 0..15 (w = (code − 8) × scale + zero); scale, zero [out, in / 32]."""
    out_features = codes.shape[0]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()
    return Int4Weight(packed, scales_and_zeros, out_features, codes.shape[1])


def int8_from_float(weight: torch.Tensor, dtype: torch.dtype) -> Int8Weight:
    """Symmetric per-row int8: each row's largest magnitude maps to 127."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    codes = torch.round(weight / scales.unsqueeze(1)).clamp(-127, 127).to(torch.int8).contiguous()
    return Int8Weight(codes, scales.to(dtype))


def int4_from_q8_0(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> Int4Weight:
    """Q8_0 (w = d × c, c in −128..127, a d per 32 weights) exactly, as an int4 matrix over the
    input taken twice: with c + 128 = 16 × high + low, the high half has scale 16d and zero 8d,
    the low half scale d and zero 0, and (high − 8) × 16d + 8d + (low − 8) × d = d × c. One
    int4 product of twice the inputs reads the same bytes as int8 and keeps the file's
    per-block scales, which int8 with a scale per row cannot."""
    shifted = codes.to(torch.int32) + 128
    halves = torch.cat([shifted >> 4, shifted & 15], dim=1)
    scales = torch.cat([16 * scale, scale], dim=1)
    zeros = torch.cat([8 * scale, torch.zeros_like(scale)], dim=1)
    weight = int4_from_codes(halves, scales, zeros, dtype)
    weight.in_features, weight.doubled = codes.shape[1], True
    return weight


def int4_from_float(weight: torch.Tensor, dtype: torch.dtype) -> Int4Weight:
    """Asymmetric int4 in groups of 32 inputs: each group's minimum and maximum map to codes
    0 and 15 (Q4_1's rule), so w = (code − 8) × scale + zero with zero = minimum + 8 × scale."""
    weight = weight.detach().float()
    rows, columns = weight.shape
    groups = weight.reshape(rows, columns // GROUP, GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    codes = torch.round((groups - low.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15).reshape(rows, columns)
    return int4_from_codes(codes, scale, low + 8 * scale, dtype)


def gguf_blocks(kind: str, data: np.ndarray, shape: tuple[int, int]):
    """The blocks of a GGUF tensor of `kind` as (codes [out, in], scale [out, in / 32],
    minimum [out, in / 32] or None). Q4 codes are 0..15; Q8_0 codes are −128..127 with no
    minimum. `data` is the reader's raw uint8 rows."""
    rows, columns = shape
    blocks = np.ascontiguousarray(data).reshape(rows, columns // GROUP, -1)
    scale = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    if kind == Q8_0:
        codes = torch.from_numpy(blocks[..., 2:].copy().view(np.int8).reshape(rows, columns))
        return codes, scale, None
    offset = 4 if kind == Q4_1 else 2
    minimum = None
    if kind == Q4_1:
        minimum = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    packed = blocks[..., offset:offset + GROUP // 2]
    # A block's first 16 weights are the low nibbles of its 16 bytes, the next 16 the high ones.
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(rows, columns)
    return torch.from_numpy(codes.astype(np.uint8)), scale, minimum


def int4_from_gguf(kind: str, data: np.ndarray, shape: tuple[int, int], dtype: torch.dtype,
                   row_order: torch.Tensor | None = None) -> Int4Weight:
    """A Q4_0 or Q4_1 tensor as torch int4 without re-rounding a code; `row_order` reorders its
    rows as the model's loader did (transformers un-permutes q and k)."""
    return int4_from_codes(*_int4_parts(kind, data, shape, row_order), dtype)


def _int4_parts(kind: str, data: np.ndarray, shape: tuple[int, int], row_order: torch.Tensor | None = None):
    """A Q4_0 or Q4_1 tensor's codes, scales and zeros in the int4 kernel's terms
    (w = (code − 8) × scale + zero), rows reordered by `row_order`."""
    codes, scale, minimum = gguf_blocks(kind, data, shape)
    zero = minimum + 8 * scale if kind == Q4_1 else torch.zeros_like(scale)
    if row_order is not None:
        codes, scale, zero = codes[row_order], scale[row_order], zero[row_order]
    return codes, scale, zero


def dequantize_gguf(kind: str, data: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """The float32 matrix a GGUF block tensor stands for (tests compare with it)."""
    codes, scale, minimum = gguf_blocks(kind, data, shape)
    scale = scale.repeat_interleave(GROUP, dim=1)
    if kind == Q8_0:
        return codes.float() * scale
    if kind == Q4_1:
        return codes.float() * scale + minimum.repeat_interleave(GROUP, dim=1)
    return (codes.float() - 8) * scale


def _row_order(rows: int, heads: int) -> torch.Tensor:
    """transformers' un-permutation of a GGUF q or k matrix, as row indices."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, half, 2).transpose(1, 2).reshape(-1)


@torch.inference_mode()
def step_seconds(layer: dict, lm_head: QuantWeight, current, dtype: torch.dtype, repeats: int = 15) -> tuple[float, float]:
    """Seconds one row takes through a layer's matrices and the lm_head quantized (`layer`,
    `lm_head`) and as the decoder has them now (`current`: its layer and lm_head), each the
    fastest of `repeats`, alternated: the load-time check that the quantized path pays here."""
    from inference.decoder import _linear

    current_layer, current_head = current
    quantized = [layer[name] for name in MATRICES] + [lm_head]
    plain = [getattr(current_layer, name) for name in MATRICES] + [current_head[0]]
    inputs = [torch.randn(1, weight.in_features, dtype=dtype) for weight in quantized]
    times: dict[str, list[float]] = {"quantized": [], "current": []}
    for weights in (quantized, plain):  # first calls set up kernels and fault pages in: not timed
        for x, weight in zip(inputs, weights, strict=True):
            _linear(x, weight, None)
    for _ in range(repeats):
        for label, weights in (("quantized", quantized), ("current", plain)):
            started = time.perf_counter()
            for x, weight in zip(inputs, weights, strict=True):
                _linear(x, weight, None)
            times[label].append(time.perf_counter() - started)
    # The fastest of each: a burst of other work on a 2-core machine only ever slows a run, and
    # medians of 15 once refused the quantized path in a benchmark's busy process.
    return min(times["quantized"]), min(times["current"])


KINDS = ("auto", "int4", "int8", "none")
MATRICES = ("qkv", "o", "gate_up", "down")


def decoder_weights(model, kind: str, dtype: torch.dtype, gguf_path: str | None = None):
    """The decoder's per-layer matrices (MATRICES) and its lm_head, quantized for CHAT_QUANT =
    `kind`, with a line saying what was done; None for `none`.

    - int4 (`auto` for a GGUF whose layers are Q4_0/Q4_1): the file's blocks code for code;
      for other sources the model's weights re-rounded to int4 in groups of 32.
    - int8 (`auto` for every other source): per output channel from the model's weights.
    - lm_head: a Q8_0 one (the default model's, tied to its embedding) exactly
      (`int4_from_q8_0`), a Q4 one code for code; else int8 per channel (int4 re-rounded
      from Q8_0 raised perplexity 9 %, docs/decisions.md)."""
    if kind not in KINDS:
        raise ValueError(f"quant must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "none":
        return None
    tensors = gguf_tensors(gguf_path) if gguf_path else {}
    from_file = _gguf_q4_layers(tensors, model.config, dtype) if tensors and kind in ("auto", "int4") else None
    if kind == "auto":
        kind = "int4" if from_file else "int8"
    if from_file:
        layers, what = from_file, "int4 from the file's Q4 blocks as stored"
    else:
        convert = int4_from_float if kind == "int4" else int8_from_float
        layers = [{name: convert(matrix, dtype) for name, matrix in matrices.items()} for matrices in _float_layers(model)]
        what = "int4 re-rounded" if kind == "int4" else "int8 per channel"
        what += " from the model's weights"
    head = tensors.get("output.weight") or tensors.get("token_embd.weight")
    head_kind = head.tensor_type.name if head is not None else None
    if kind == "int4" and head_kind == Q8_0:
        codes, scale, _ = gguf_blocks(Q8_0, head.data, _shape(head))
        lm_head, head_what = int4_from_q8_0(codes, scale, dtype), "lm_head Q8_0 as stored"
    elif kind == "int4" and head_kind in (Q4_0, Q4_1):
        lm_head, head_what = int4_from_gguf(head_kind, head.data, _shape(head), dtype), "lm_head Q4 as stored"
    else:
        lm_head, head_what = int8_from_float(model.lm_head.weight, dtype), "lm_head int8 per channel"
    return layers, lm_head, f"{what}, {head_what}"


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF file, as gguf-py's GGUFReader gives it: `shape` innermost first,
    `data` its bytes (a quantized type's as uint8 rows) mapped from the file."""

    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


# Bytes of each fixed-size GGUF metadata value type (gguf-py's GGUFValueType numbering).
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


def gguf_tensors(path: str) -> dict[str, GgufTensor]:
    """The tensors of a little-endian GGUF file (version 2 or 3) by name. gguf-py's
    GGUFReader parses every metadata value into numpy views first, 3.5 s for the default
    model's 49,152-entry vocabulary on 2 cores; this skips over the metadata to the tensor
    table (reading only `general.alignment`), in tens of milliseconds."""
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    # Types GGUFReader gives as numbers; the others (quantized, BF16) as bytes.
    typed = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
             GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
             GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
             GGMLQuantizationType.I64: np.int64}

    raw = np.memmap(path, dtype=np.uint8, mode="r")
    buffer = memoryview(raw)
    offset = 0

    def take(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from(fmt, buffer, offset)
        offset += struct.calcsize(fmt)
        return values

    def one(fmt: str):
        return take(fmt)[0]

    def string() -> str:
        nonlocal offset
        length = one("<Q")
        offset += length
        return bytes(buffer[offset - length : offset]).decode()

    def skip(value_type: int, count: int = 1) -> None:
        nonlocal offset
        if value_type == _STRING:
            for _ in range(count):
                length = one("<Q")  # (not `offset += one(…)`: it moves offset itself)
                offset += length
        elif value_type == _ARRAY:
            for _ in range(count):
                element_type, elements = take("<IQ")
                skip(element_type, elements)
        else:
            offset += _VALUE_SIZES[value_type] * count

    magic, version, tensor_count, kv_count = take("<4sIQQ")
    if magic != b"GGUF" or version not in (2, 3):
        raise ValueError(f"{path} is not a little-endian GGUF file of version 2 or 3")
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key, value_type = string(), one("<I")
        if key == "general.alignment" and value_type == _UINT32:
            alignment = one("<I")
        else:
            skip(value_type)
    table = []
    for _ in range(tensor_count):
        name = string()
        dims = take(f"<{one('<I')}Q")
        table.append((name, dims, *take("<IQ")))
    offset += -offset % alignment
    tensors = {}
    for name, dims, type_id, start in table:
        kind = GGMLQuantizationType(type_id)
        block, block_bytes = GGML_QUANT_SIZES[kind]
        count = int(np.prod(dims)) * block_bytes // block
        data = raw[offset + start : offset + start + count]
        shape = tuple(reversed(dims))
        if kind in typed:
            data = data.view(typed[kind]).reshape(shape)
        else:
            data = data.reshape(quant_shape_to_byte_shape(shape, kind))
        tensors[name] = GgufTensor(name, kind, dims, data)
    return tensors


def _shape(tensor) -> tuple[int, int]:
    """A GGUF matrix's [out, in] (the file lists dimensions innermost first)."""
    return int(tensor.shape[1]), int(tensor.shape[0])


def _float_layers(model):
    """Per layer the model's own weights, stacked as the decoder stacks them."""
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        yield {
            "qkv": torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
            "o": attention.o_proj.weight,
            "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            "down": mlp.down_proj.weight,
        }


def _gguf_q4_layers(tensors: dict, config, dtype: torch.dtype) -> list[dict] | None:
    """Per layer the stacked matrices as int4 from the file's Q4_0/Q4_1 blocks (q and k rows
    in the order transformers un-permutes them to); None unless every one is Q4."""

    def blocks(name: str, heads: int | None = None):
        tensor = tensors.get(name)
        if tensor is None or tensor.tensor_type.name not in (Q4_0, Q4_1):
            return None
        shape = _shape(tensor)
        return _int4_parts(tensor.tensor_type.name, tensor.data, shape, _row_order(shape[0], heads) if heads else None)

    def stacked(*parts) -> Int4Weight | None:
        if any(part is None for part in parts):
            return None
        return int4_from_codes(*(torch.cat([part[i] for part in parts]) for i in range(3)), dtype)

    layers = []
    for index in range(config.num_hidden_layers):
        prefix = f"blk.{index}."
        layer = {
            "qkv": stacked(blocks(prefix + "attn_q.weight", config.num_attention_heads),
                           blocks(prefix + "attn_k.weight", config.num_key_value_heads),
                           blocks(prefix + "attn_v.weight")),
            "o": stacked(blocks(prefix + "attn_output.weight")),
            "gate_up": stacked(blocks(prefix + "ffn_gate.weight"), blocks(prefix + "ffn_up.weight")),
            "down": stacked(blocks(prefix + "ffn_down.weight")),
        }
        if any(weight is None for weight in layer.values()):
            return None
        layers.append(layer)
    return layers
