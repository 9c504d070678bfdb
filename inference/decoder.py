"""One decode step of a Llama-family model, written for a batch of single new tokens.

transformers' forward is general (any cache, any attention, hooks, output records); in the
runner this step is 10–30 % shorter than transformers' forward at 1–32 rows on a 2-core CPU
(`python -m bench.decoder`, docs/benchmarks.md). What it saves: one matmul for q, k and v and one for gate and up (the weights are
stacked once, the model's own modules keep views into them, so no memory is added); no
per-layer Python machinery; and no copy of the KV cache per step — the runner keeps spare
columns at the end of every layer's KV and this step writes the new token's key and value into
the next one, where a growing cache (`torch.cat`) copied all of it, every layer, every step
(5 ms a step at batch 32 × 100 tokens, 16 ms at 300).

Prefill (`LlamaDecoder.prefill`) is transformers' forward op for op, from the same weights
as the steps: where those are packed copies, the model's own matrices can go (`drop_model_matrices`,
−202 MB for the default model), so the packed copies cost no memory.

Only models whose forward this reproduces (up to the order of bf16 rounding) are taken
(`supports`); the runner runs any other model through transformers.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

# Where the CPU has no native bf16 (AVX2 only) the model runs in fp32; a decode step of a few
# rows is then a matrix-vector product bound by memory, and a bf16 copy of the weights halves
# what it reads. Up to 4 rows the copy wins (1.5-1.9x at 1-3 rows); from about 5 rows fp32's
# faster arithmetic does (`python -m bench.decoder --small-batch`, docs/benchmarks.md). The
# copy costs half the weights' memory again (+270 MB for the default model), and these steps
# compute in bf16, as the whole model does on a CPU that has it.
SMALL_BATCH_ROWS = 4


def supports(model) -> bool:
    """A transformers Llama (SmolLM2, Llama 2/3, TinyLlama…) in the layout this step assumes."""
    config = model.config
    return (
        type(model).__name__ == "LlamaForCausalLM"
        and config.hidden_act == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
    )


def can_prepack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether weights of `dtype` on `device` are multiplied faster packed (`_pack`): bf16 on a
    CPU where oneDNN computes bf16 (AVX-512 or AMX)."""
    return (
        dtype is torch.bfloat16
        and device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class LlamaDecoder:
    def __init__(
        self, model, *, small_batch_dtype: torch.dtype | None = None, prepack: bool | None = None, lean_prefill: bool = False
    ) -> None:
        """`small_batch_dtype`: steps of up to SMALL_BATCH_ROWS rows multiply by a copy of the
        weights in this dtype (see SMALL_BATCH_ROWS); None: every step uses the model's own.
        `prepack`: the step multiplies by copies of the weights in oneDNN's own layout (see
        `_pack`); None: where `can_prepack` says it pays. `lean_prefill`: in bf16 and fp16,
        prefill with fewer ops (see `prefill`), for a device where each op is a kernel launch."""
        self.model = model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [_fuse(layer) for layer in model.model.layers]
        self.lm_head = (model.lm_head.weight, model.lm_head.bias)
        self.small_layers, self.small_lm_head, self.small_batch_dtype = None, None, None
        if small_batch_dtype is not None and small_batch_dtype != model.lm_head.weight.dtype:
            self.small_batch_dtype = small_batch_dtype
            self.small_layers = [_cast(layer, small_batch_dtype) for layer in self.layers]
            self.small_lm_head = tuple(_to(tensor, small_batch_dtype) for tensor in self.lm_head)
        device = model.lm_head.weight.device
        self.prepacked = can_prepack(model.lm_head.weight.dtype, device) if prepack is None else prepack
        if self.prepacked:
            self.layers, self.lm_head = _packed(self.layers, self.lm_head)
        if self.small_layers is not None and can_prepack(small_batch_dtype, device):
            self.small_layers, self.small_lm_head = _packed(self.small_layers, self.small_lm_head)
        self.quantized_layers, self.quantized_lm_head, self.quantized_rows = None, None, 0
        self.rotary_tables = _rotary_tables(model)
        self.lean_prefill = lean_prefill and model.lm_head.weight.dtype != torch.float32 and self.rotary_tables is not None
        self._small_plans: dict[int, tuple[list[_Layer], _SmallPlan]] = {}

    def use_quantized(self, layers: list[dict], lm_head, *, rows: int) -> None:
        """Steps of up to `rows` rows multiply by these quantized matrices (inference.quant);
        the norms and biases stay the model's."""
        quantized = []
        for layer, matrices in zip(self.layers, layers, strict=True):
            converted = _converted(layer, lambda tensor: tensor, ())
            for name, weight in matrices.items():
                setattr(converted, name, weight)
            quantized.append(converted)
        self.quantized_layers, self.quantized_lm_head = quantized, (lm_head, self.lm_head[1])
        self.quantized_rows = rows

    def _weights_for(self, rows: int) -> tuple[list, tuple]:
        """The layers and lm_head a step of `rows` rows multiplies by: quantized up to
        `quantized_rows`, else the small-batch copy up to SMALL_BATCH_ROWS, else the model's."""
        if self.quantized_layers is not None and rows <= self.quantized_rows:
            return self.quantized_layers, self.quantized_lm_head
        if self.small_layers is not None and rows <= SMALL_BATCH_ROWS:
            return self.small_layers, self.small_lm_head
        return self.layers, self.lm_head

    def small_step_weights(self) -> tuple[_Layer, tuple]:
        """The first layer and the lm_head a one-row step multiplies by, quantized aside."""
        if self.small_layers is not None:
            return self.small_layers[0], self.small_lm_head
        return self.layers[0], self.lm_head

    @torch.inference_mode()
    def prefill(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        padded: bool | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """transformers' forward over prompts, from the step's own weights: input_ids and
        positions [rows, tokens]; mask [rows, prefix + tokens], 1 for a real token, 0 for left
        padding; `prefix` per layer (keys, values) [1 or rows, kv_heads, prefix, head_dim], the
        KV of tokens before these (the shared prefix). Returns the last token's logits [rows,
        vocab] and per layer the keys and values [rows, kv_heads, prefix + tokens, head_dim].
        `padded`: whether any row is padded, where the caller knows; else it is read from
        `mask`, which waits for the device (a GPU runner launches prefill while a decode step
        is still running).

        Where the step's weights are packed (`_pack`) this is what lets the model's own copies
        go (`drop_model_matrices`). It is transformers' layer op for op: the model's RMSNorm and
        rotary modules, `apply_rotary_pos_emb`, and transformers' SDPA attention with the mask
        its `sdpa_mask` makes (none where nothing is padded or cached before). With
        `lean_prefill` the same numbers come from fewer ops (bit for bit on the CPU, a test
        checks): each norm `_half_rms_norm`'s two instead of eight, and q and k rotated together
        as the step rotates them (cos and sin looked up, the roll and the sign folded into the
        table: four ops instead of fourteen), and the keys and values not copied (the GPU runner
        copies them into its slots): about 20 ops a layer instead of 40 (`python -m bench.ops`)."""
        rows, tokens = input_ids.shape
        cached = mask.shape[1] - tokens
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden = self.model.model.embed_tokens(input_ids)
        lean = self.lean_prefill
        if lean:
            eps = self.model.model.norm.variance_epsilon
            cos_table, sin_table = self.rotary_tables
            cos, sin = cos_table[positions].unsqueeze(2), sin_table[positions].unsqueeze(2)  # [rows, tokens, 1, dim]
        else:
            cos, sin = self.model.model.rotary_emb(hidden, positions)
        attend = None
        if padded is None:
            padded = not bool(mask.all())
        if cached or padded:
            columns = torch.arange(cached + tokens, device=mask.device)
            causal = columns[None, :] <= (cached + torch.arange(tokens, device=mask.device))[:, None]
            attend = causal[None, None] & mask.bool()[:, None, None, :]
            # A padding token's query sees nothing: let it see everything, as `sdpa_mask` does,
            # so that its (unused) output is a number, not NaN.
            attend = attend | ~attend.any(dim=-1, keepdim=True)
        keys, values = [], []
        for index, (layer, module) in enumerate(zip(self.layers, self.model.model.layers, strict=True)):
            if lean:
                qkv = _linear(_half_rms_norm(hidden, layer.input_norm.weight, eps), layer.qkv, layer.qkv_bias)
                qk = qkv[..., : q_size + kv_size].view(rows, tokens, self.heads + self.kv_heads, self.head_dim)
                qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin
                query, key = qk[:, :, : self.heads].transpose(1, 2), qk[:, :, self.heads :].transpose(1, 2)
            else:
                qkv = _linear(layer.input_norm(hidden), layer.qkv, layer.qkv_bias)
                query = qkv[..., :q_size].view(rows, tokens, self.heads, self.head_dim).transpose(1, 2)
                key = qkv[..., q_size : q_size + kv_size].view(rows, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
                query, key = apply_rotary_pos_emb(query, key, cos, sin)
            value = qkv[..., q_size + kv_size :].view(rows, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
            if prefix:
                before_keys, before_values = prefix[index]
                key = torch.cat([before_keys.expand(rows, -1, -1, -1), key], dim=2)
                value = torch.cat([before_values.expand(rows, -1, -1, -1), value], dim=2)
            elif not lean:  # kept as a KV cache; the lean prefill's are copied into slots at once
                key, value = key.contiguous(), value.contiguous()
            keys.append(key)
            values.append(value)
            attention, _ = sdpa_attention_forward(
                module.self_attn, query, key, value, attend, scaling=module.self_attn.scaling
            )
            hidden = hidden + _linear(attention.reshape(rows, tokens, q_size), layer.o, layer.o_bias)
            normed = _half_rms_norm(hidden, layer.post_norm.weight, eps) if lean else layer.post_norm(hidden)
            gate, up = _linear(normed, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            hidden = hidden + _linear(F.silu(gate) * up, layer.down, layer.down_bias)
        norm = self.model.model.norm
        hidden = _half_rms_norm(hidden[:, -1:], norm.weight, eps) if lean else norm(hidden[:, -1:])
        return _linear(hidden, *self.lm_head)[:, -1], keys, values

    def drop_model_matrices(self) -> bool:
        """Free the model's own copies of the layers' matrices where every step and prefill
        multiplies by packed ones (the embedding, tied to the lm_head, stays: tokens are looked
        up in it). Afterwards the model can no longer run a forward pass of its own. Returns
        whether anything was dropped."""
        if not self.prepacked:
            return False
        empty = torch.empty(0, dtype=self.model.lm_head.weight.dtype, device=self.model.lm_head.weight.device)
        for module in self.model.model.layers:
            for linear in (*_attention_linears(module), *_mlp_linears(module)):
                linear.weight = torch.nn.Parameter(empty, requires_grad=False)
        return True

    @torch.inference_mode()
    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        column: int,
        mask: torch.Tensor,
        between_layers: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """tokens and positions [rows, 1]; keys and values per layer [rows, kv_heads, capacity,
        head_dim], written at `column`; mask [rows, 1, 1, capacity], True where a row attends
        (its real tokens up to and including `column`). Returns next-token logits [rows, vocab].
        `between_layers` is called after every layer but the last: the engine prefills an urgent
        request there instead of making it wait for the whole step."""
        rows = tokens.shape[0]
        if rows <= SMALL_BATCH_ROWS and self.rotary_tables is not None:
            return self._small_step(tokens, positions, keys, values, column, mask, between_layers)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        group = self.heads // self.kv_heads
        hidden = self.model.model.embed_tokens(tokens)  # [rows, 1, hidden]
        cos, sin = self.model.model.rotary_emb(hidden, positions)
        layers, lm_head = self._weights_for(rows)
        last = layers[-1]
        for layer, layer_keys, layer_values in zip(layers, keys, values, strict=True):
            qkv = _linear(layer.input_norm(hidden), layer.qkv, layer.qkv_bias)
            query = qkv[..., :q_size].view(rows, 1, self.heads, self.head_dim).transpose(1, 2)
            key = qkv[..., q_size : q_size + kv_size].view(rows, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            value = qkv[..., q_size + kv_size :].view(rows, self.kv_heads, self.head_dim)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            layer_keys[:, :, column] = key[:, :, 0]
            layer_values[:, :, column] = value
            # The query heads that share a key/value head are that head's "query length".
            grouped = query.reshape(rows, self.kv_heads, group, self.head_dim)
            scores = torch.matmul(grouped, layer_keys.transpose(-1, -2)).float() * self.head_dim**-0.5
            probabilities = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1).to(layer_values.dtype)
            attention = torch.matmul(probabilities, layer_values).reshape(rows, 1, q_size)
            hidden = hidden + _linear(attention, layer.o, layer.o_bias)
            gate, up = _linear(layer.post_norm(hidden), layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            hidden = hidden + _linear(F.silu(gate) * up, layer.down, layer.down_bias)
            if between_layers is not None and layer is not last:
                between_layers()
        hidden = self.model.model.norm(hidden)
        return _linear(hidden, *lm_head)[:, -1]

    def _small_step(self, tokens, positions, keys, values, column, mask, between_layers) -> torch.Tensor:
        """`step` for a few rows, where a step is a chain of matrix-vector products bound by
        memory and the time between them is per-op overhead: each layer here runs about a third
        of the ops of the batched path — every product a bare call prepared once (`_SmallPlan`),
        RMSNorm as one layer_norm, cos and sin looked up in tables, one rotary for q and k
        together, and attention as one SDPA call over the columns up to this token (the query
        heads of a key/value head as its query length, so no repeat)."""
        rows = tokens.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        q_size, qk_size = heads * dim, (heads + kv_heads) * dim
        plan = self._small_plan(rows)
        cos_table, sin_table = self.rotary_tables
        cos, sin = cos_table[positions], sin_table[positions]  # [rows, 1, head_dim]; sin's first half negated
        attend = mask[..., : column + 1]
        attend = None if bool(attend.all()) else attend
        # Rows stay 2-D [rows, hidden] throughout: the quantized kernels take them as they are.
        hidden = self.model.model.embed_tokens(tokens[:, 0])
        norm = _RowsNorm(hidden, plan.eps)
        cos, sin = cos.view(rows, 1, dim), sin.view(rows, 1, dim)
        last = len(plan.layers) - 1
        for index, (layer, layer_keys, layer_values) in enumerate(zip(plan.layers, keys, values, strict=True)):
            input_norm, qkv_matmul, o_matmul, post_norm, gate_up_matmul, down_matmul = layer
            qkv = qkv_matmul(norm(hidden, input_norm))
            qk = qkv[:, :qk_size].view(rows, heads + kv_heads, dim)
            # rotate_half(x) is x rolled by half a head with its first half negated (in sin).
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, -1), sin)
            layer_keys[:, :, column] = qk[:, heads:]
            layer_values[:, :, column] = qkv[:, qk_size:].view(rows, kv_heads, dim)
            attention = F.scaled_dot_product_attention(
                qk[:, :heads].view(rows, kv_heads, heads // kv_heads, dim),
                layer_keys[:, :, : column + 1],
                layer_values[:, :, : column + 1],
                attn_mask=attend,
            )
            hidden = hidden + o_matmul(attention.view(rows, q_size))
            gate, up = gate_up_matmul(norm(hidden, post_norm)).chunk(2, dim=-1)
            hidden = hidden + down_matmul(F.silu(gate).mul_(up))
            if between_layers is not None and index != last:
                between_layers()
        return plan.lm_head(norm(hidden, plan.final_norm))

    def _small_plan(self, rows: int) -> _SmallPlan:
        """The `_SmallPlan` of the weights a step of `rows` rows multiplies by, made on first use."""
        layers, lm_head = self._weights_for(rows)
        made = self._small_plans.get(id(layers))
        if made is None or made[0] is not layers:  # the list is held beside its plan: ids stay unique
            plan = _SmallPlan(self.model, layers, lm_head)
            self._small_plans[id(layers)] = made = (layers, plan)
        return made[1]


class _SmallPlan:
    """What `_small_step` calls per layer, looked up once: the norms' weights and each matrix
    as a function of 2-D rows in the model's dtype (`_rows_matmul`). Attribute lookups and
    `_linear`'s checks were 0.5 ms of a 10 ms one-row step (30 layers × 4 products)."""

    def __init__(self, model, layers: list[_Layer], lm_head: tuple) -> None:
        dtype = model.model.embed_tokens.weight.dtype
        self.eps = model.model.norm.variance_epsilon
        self.final_norm = model.model.norm.weight
        self.lm_head = _rows_matmul(*lm_head, dtype)
        self.layers = [
            (
                layer.input_norm.weight,
                _rows_matmul(layer.qkv, layer.qkv_bias, dtype),
                _rows_matmul(layer.o, layer.o_bias, dtype),
                layer.post_norm.weight,
                _rows_matmul(layer.gate_up, layer.gate_up_bias, dtype),
                _rows_matmul(layer.down, layer.down_bias, dtype),
            )
            for layer in layers
        ]


def _rows_matmul(weight, bias: torch.Tensor | None, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """`_linear(x, weight, bias)` for 2-D rows x of `dtype`, as a bare call where the weight
    takes such rows as they are."""
    if not isinstance(weight, torch.Tensor):
        fast = weight.rows_matmul(dtype)
        if fast is not None and bias is None:
            return fast
    elif weight.is_mkldnn and weight.dtype == dtype:
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    elif weight.dtype == dtype:
        return lambda x: F.linear(x, weight, bias)
    return lambda x: _linear(x, weight, bias)


class _RowsNorm:
    """transformers' LlamaRMSNorm of 2-D rows [rows, hidden] with a given weight.

    In bf16 and fp16 it is one layer_norm of the rows beside their negation: [x, −x] has mean 0
    and variance mean(x²), so layer_norm's x / sqrt(var + eps) is RMSNorm's, computed in fp32
    inside and rounded once to x's dtype as transformers rounds it (on 4,096 random bf16 rows,
    7 in a million values one bf16 step apart: layer_norm's rsqrt is not bit for bit
    transformers'). One fused kernel where RMSNorm written out is eight ops: 13.9 → 7 µs a norm
    at 1 row, 61 norms a step. In fp32 that last-bit difference would not round away, so fp32
    rows are normalized op for op (`_rms_norm`), and stay exactly transformers'."""

    def __init__(self, like: torch.Tensor, eps: float) -> None:
        self.eps = eps
        self.pair = self.signs = None
        if like.dtype != torch.float32:
            rows, width = like.shape
            self.pair = like.new_empty(rows, 2, width)
            self.signs = torch.tensor([[1.0], [-1.0]], dtype=like.dtype, device=like.device)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.pair is None:
            return _rms_norm(x, weight, self.eps)
        rows, width = x.shape
        torch.mul(x.unsqueeze(1), self.signs, out=self.pair)  # [x, −x] in one op
        normalized = F.layer_norm(self.pair.view(rows, 2 * width), (2 * width,), None, None, self.eps)
        return weight * normalized[:, :width]


def _half_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`_rms_norm` for bf16 and fp16 rows in two ops where written out it is eight (upcast,
    square, mean, add, rsqrt, multiply, downcast, weight): `F.rms_norm` normalizes in fp32 and
    rounds once to x's dtype, as transformers does, and the weight is applied after it in x's
    dtype, as transformers applies it (given the weight, the fused op would apply it before the
    rounding: a quarter of the values one step apart). For a device where each op is a kernel
    launch (the GPU runner). In fp32 a last-bit difference in the reduction would not round
    away, so fp32 keeps the ops written out and stays exactly transformers'."""
    return weight * F.rms_norm(x, (x.shape[-1],), None, eps)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, op for op (fp32 inside, the weight applied in x's dtype),
    without the module call."""
    fp32 = x.float()
    fp32 = fp32 * fp32.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
    return weight * fp32.to(x.dtype)


# RoPE kinds whose cos and sin depend on the position alone (not on the sequence's length).
STATIC_ROPE = ("default", "linear", "llama3")


def _rotary_tables(model) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cos and sin [positions, head_dim] for every position the model takes, computed by the
    model's own rotary module (so equal to what it computes per step), sin's first half negated
    for `_small_step`; None for RoPE kinds that change with length."""
    config = model.config
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if parameters.get("rope_type", parameters.get("type", "default")) not in STATIC_ROPE:
        return None
    rotary = model.model.rotary_emb
    weight = model.lm_head.weight
    positions = torch.arange(int(config.max_position_embeddings), device=weight.device)[None]
    with torch.inference_mode():
        cos, sin = rotary(weight.new_zeros(1), positions)
    cos, sin = cos[0], sin[0].clone()
    sin[:, : sin.shape[1] // 2] *= -1
    return cos.contiguous(), sin.contiguous()


def _linear(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear in the weight's dtype, the result in x's; `weight` may be packed (`_pack`) or
    quantized (`inference.quant`)."""
    if not isinstance(weight, torch.Tensor):
        y = weight.matmul(x)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if bias is None else y + bias
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, "none", [], "").to(x.dtype)
    if weight.dtype == x.dtype:
        return F.linear(x, weight, bias)
    return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """A copy of a Linear weight [out, in] in oneDNN's blocked layout, as torch.compile's CPU
    backend prepacks bf16 weights. Given a plain weight, oneDNN reorders it at every product;
    packed once, a decode step is 12–30 % shorter at 1–32 rows (`python -m bench.decoder
    --prepack`). Once loading is done the model's own layer matrices go (`drop_model_matrices`);
    the lm_head's copy stays beside the embedding it is tied to (57 MB for the default model)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _packed(layers: list[_Layer], lm_head: tuple) -> tuple[list[_Layer], tuple]:
    """The layers and lm_head with their matrices packed (`_pack`); norms and biases as they are."""
    matrices = ("qkv", "o", "gate_up", "down")
    return [_converted(layer, _pack, matrices) for layer in layers], (_pack(lm_head[0]), lm_head[1])


class _Layer:
    __slots__ = ("down", "down_bias", "gate_up", "gate_up_bias", "input_norm", "o", "o_bias", "post_norm", "qkv", "qkv_bias")


def _attention_linears(layer) -> tuple[torch.nn.Linear, ...]:
    attention = layer.self_attn
    return attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj


def _mlp_linears(layer) -> tuple[torch.nn.Linear, ...]:
    return layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj


def _fuse(layer) -> _Layer:
    """Stack q, k, v and gate, up into one weight each; the model's modules get views into
    them, so prefill through transformers reads the same memory."""
    attention, mlp = layer.self_attn, layer.mlp
    fused = _Layer()
    fused.input_norm, fused.post_norm = layer.input_layernorm, layer.post_attention_layernorm  # the model's RMSNorm
    fused.qkv, fused.qkv_bias = _stack(attention.q_proj, attention.k_proj, attention.v_proj)
    fused.gate_up, fused.gate_up_bias = _stack(mlp.gate_proj, mlp.up_proj)
    fused.o, fused.o_bias = attention.o_proj.weight, attention.o_proj.bias
    fused.down, fused.down_bias = mlp.down_proj.weight, mlp.down_proj.bias
    return fused


def _cast(layer: _Layer, dtype: torch.dtype) -> _Layer:
    """A copy of the layer's weights in `dtype`; the norms stay the model's."""
    weights = [name for name in _Layer.__slots__ if not name.endswith("_norm")]
    return _converted(layer, lambda tensor: _to(tensor, dtype), weights)


def _converted(layer: _Layer, convert, names) -> _Layer:
    """A new _Layer with `convert` applied to the entries `names`; the others shared."""
    converted = _Layer()
    for name in _Layer.__slots__:
        value = getattr(layer, name)
        setattr(converted, name, convert(value) if name in names else value)
    return converted


def _to(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(dtype)


def _stack(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([linear.weight.detach() for linear in linears])
    bias = None
    if linears[0].bias is not None:
        bias = torch.cat([linear.bias.detach() for linear in linears])
    start = 0
    for linear in linears:
        end = start + linear.out_features
        linear.weight = torch.nn.Parameter(weight[start:end], requires_grad=False)
        if bias is not None:
            linear.bias = torch.nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    return weight, bias
