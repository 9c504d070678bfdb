"""Attention for one new token per row on the CPU, as two small matmuls.

torch's CPU `scaled_dot_product_attention` is built for long queries: for a decode step's
single query per row it took 1.3–1.5 ms per layer at batch 32 and 80 cached tokens, and
5.2–5.8 ms at 300 (bf16, 2 cores; `python -m bench.attention`), against 0.17 ms and 0.42 ms for the plain
matmul → softmax → matmul below — at 30 layers, most of a decode step. Prefill (many query
tokens) and small batches still go to SDPA: at batch 1 it is the faster of the two by about
1 ms a step.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "chatsite_cpu_decode"
# Below this many cached rows × tokens SDPA wins or ties (batch 1 at 60–200 tokens: SDPA
# 1–1.7 ms a step faster; batch 4: SDPA ahead at 60 tokens, 4.6 ms behind at 200).
MIN_WORK = 400


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query [batch, heads, q, dim], key and value
    [batch, kv_heads, kv, dim], the mask in SDPA's form (bool, True = attend, [batch, 1, q, kv],
    or None for "everything"). Returns [batch, q, heads, dim]."""
    batch, heads, q_length, dim = query.shape
    if q_length != 1 or batch * key.shape[2] < MIN_WORK:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    # The query heads that share a key/value head form its "query length": no repeat_kv copy.
    grouped = query.view(batch, kv_heads, heads // kv_heads, dim)  # [batch, kv_heads, group, dim]
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # [batch, kv_heads, group, kv]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))  # [batch, 1, 1, kv] broadcasts
        else:
            scores = scores + attention_mask
    probabilities = scores.softmax(dim=-1).to(value.dtype)
    output = torch.matmul(probabilities, value)  # [batch, kv_heads, group, dim]
    return output.reshape(batch, 1, heads, dim), None


def use_decode_attention(model) -> None:
    """Make `model` (a transformers decoder) use `decode_attention`."""
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
