"""The one module that touches torch devices: places the model, owns the batch's KV cache and
runs forward passes over it.

The running batch is one left-padded KV cache, a row per request. A request joins by a
prefill of its own tokens whose KV is padded and stacked onto the batch (`prefill`, then
`commit`); it leaves by dropping its row. Every decode step is one forward pass of
[batch, 1] tokens. Prefills and steps go through `inference.decoder` for Llama-family models, which writes each new
key and value into spare columns kept at the end of every layer's KV (`SPARE_COLUMNS`), else
through transformers, whose cache grows by a copy each step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DynamicCache

from inference import decoder, quant
from inference.attention import use_decode_attention

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
# Columns of KV room kept after the last token when the decode step writes in place: the KV is
# copied to grow once every this many steps instead of every step. Costs rows × 32 × 22.5 KB
# for the default model (24 MB at 32 rows); attention reads the empty columns, masked.
SPARE_COLUMNS = 32
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(setting: str = "auto") -> torch.device:
    """CHAT_DEVICE: `auto` takes CUDA when a GPU is present, else the CPU."""
    if setting not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CHAT_DEVICE=cuda, but torch sees no CUDA device")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(device: torch.device, setting: str = "auto") -> torch.dtype:
    """CHAT_DTYPE: `auto` is bf16 where the device computes it natively, else fp32."""
    if setting not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {setting!r}")
    if setting != "auto":
        return DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_supports_bf16() else torch.float32


def pick_small_batch_dtype(device: torch.device, setting: str = "auto") -> torch.dtype | None:
    """Under CHAT_DTYPE=auto on a CPU without native bf16 (where the model runs in fp32), bf16:
    decode steps of a few rows multiply by a bf16 copy of the weights
    (`inference.decoder.SMALL_BATCH_ROWS`). None elsewhere, and whenever a dtype is set."""
    if setting != "auto" or device.type != "cpu" or _cpu_supports_bf16():
        return None
    return torch.bfloat16


def _cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _libc_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _libc_malloc_trim()


class ModelRunner:
    """Holds the running batch: row i of the KV cache belongs to `self.rows[i]`."""

    # Removing rows copies the batch's KV: the engine does it after prefilling newcomers, so
    # their first tokens go out first.
    cheap_remove = False
    # Prompts are prefilled whole: their KV joins the padded batch only when complete.
    chunked_prefill = False
    # Every step's input tokens come from the host (`decode`), chosen after the last step.
    overlap = False

    def __init__(
        self,
        model,
        device: torch.device,
        *,
        fast_decode: bool = True,
        small_batch_dtype: torch.dtype | None = None,
        prepack: bool | None = None,
    ) -> None:
        """`fast_decode=False`: decode through transformers even where `inference.decoder` could.
        `small_batch_dtype` and `prepack`: see `inference.decoder.LlamaDecoder` (through it only)."""
        self.model = model.to(device)
        self.device = device
        if device.type == "cpu":
            use_decode_attention(self.model)
        self._decoder = None
        if fast_decode and decoder.supports(self.model):
            self._decoder = decoder.LlamaDecoder(self.model, small_batch_dtype=small_batch_dtype, prepack=prepack)
        self._spare = SPARE_COLUMNS if self._decoder else 0
        self.dtype = next(model.parameters()).dtype
        self.context_length = int(model.config.max_position_embeddings)
        self.rows: list[int] = []  # request id of each row
        self._lengths: list[int] = []  # real (unpadded) tokens in each row
        # Per layer [rows, kv_heads, columns + spare room, head_dim]; None while no row runs.
        self._keys: list[torch.Tensor] | None = None
        self._values: list[torch.Tensor] | None = None
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 real token, 0 left padding
        self._padded = False  # whether any row has padding; without, the model needs no mask
        self._prefix: list[int] = []  # tokens whose KV is kept for every prompt that starts with them
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, [1, heads, prefix, dim]
        self._pending: list = []  # prefilled, not yet stacked: (keys, values, mask, request ids, lengths)

    def quantize(self, kind: str = "auto", gguf_path: str | None = None) -> str:
        """CHAT_QUANT: let decode steps of up to QUANT_ROWS rows multiply by quantized copies of
        the weights (inference.quant.decoder_weights), where that is faster than what they
        multiply by now: timed here, on one layer, at load (it depends on the CPU's kernels).
        Returns what it set up, or why not; "" for `none`."""
        if kind == "none":
            return ""
        if self._decoder is None or self.device.type != "cpu":
            return "no quantized path (it needs the Llama decoder on a CPU)"
        # The kernels take bf16 or fp32 activations; an fp32 model's small steps are bf16 already
        # where it has a bf16 copy, and int4 on fp32 activations is slow.
        dtype = torch.bfloat16
        try:
            weights = quant.decoder_weights(self.model, kind, dtype, gguf_path)
        except Exception:
            logger.exception("could not quantize the weights; decoding without")
            return "no quantized path (the weights could not be read)"
        layers, lm_head, what = weights
        quantized_s, current_s = quant.step_seconds(layers[0], lm_head, self._decoder.small_step_weights(), dtype)
        if quantized_s >= current_s:
            return (f"no quantized path: on this CPU {what} is slower "
                    f"({quantized_s * 1e3:.2f} ms against {current_s * 1e3:.2f} ms for a layer and the head)")
        self._decoder.use_quantized(layers, lm_head, rows=quant.QUANT_ROWS)
        return (f"steps of up to {quant.QUANT_ROWS} rows quantized: {what} "
                f"({quantized_s * 1e3:.2f} ms against {current_s * 1e3:.2f} ms for a layer and the head)")

    def drop_model_matrices(self) -> bool:
        """Once loading is done (quantize reads the model's weights): where every decode step and
        prefill multiplies by the decoder's packed copies, free the model's own layer matrices
        (`inference.decoder.LlamaDecoder.drop_model_matrices`). Returns whether it did."""
        return self._decoder is not None and self._decoder.drop_model_matrices()

    @property
    def quantized(self) -> bool:
        """Whether small decode steps multiply by quantized weights."""
        return self._decoder is not None and self._decoder.quantized_layers is not None

    @property
    def small_batch_dtype(self) -> torch.dtype | None:
        """The dtype of the weight copy small decode steps use, if there is one."""
        return self._decoder.small_batch_dtype if self._decoder else None

    @property
    def prepacked(self) -> bool:
        """Whether decode steps multiply by packed copies of the weights (`inference.decoder`)."""
        return self._decoder is not None and self._decoder.prepacked

    @property
    def padded_tokens(self) -> int:
        """KV slots held, padding included: rows × columns."""
        return 0 if self._mask is None else self._mask.numel()

    @torch.inference_mode()
    def set_shared_prefix(self, token_ids: list[int]) -> None:
        """Compute once the KV of tokens most prompts begin with (the chat template's system
        part); prompts that begin with them skip that part of their prefill."""
        input_ids = torch.tensor([token_ids], device=self.device)
        if self._decoder is not None:
            positions = torch.arange(len(token_ids), device=self.device)[None]
            _, keys, values = self._decoder.prefill(input_ids, positions, torch.ones_like(input_ids))
        else:
            cache = DynamicCache()
            self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
            keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        self._prefix = list(token_ids)
        self._prefix_kv = list(zip(keys, values, strict=True))

    @torch.inference_mode()
    def prefill(self, sequences: dict[int, list[int]]) -> torch.Tensor:
        """Prefill `sequences` (request id → its tokens so far) and return their next-token
        logits [len(sequences), vocab] in that order. They join the batch at `commit()`, so a
        first token can be sent before the batch's KV is copied to make room for it."""
        return prefill_by_prefix(sequences, self._prefix, self._prefill)

    def _prefill(self, sequences: dict[int, list[int]], skip: int) -> torch.Tensor:
        """One padded forward pass over the tokens after the first `skip` (the shared prefix,
        whose KV is reused). Rows are laid out [prefix][left padding][rest]."""
        width = max(len(tokens) - skip for tokens in sequences.values())
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros((len(sequences), skip + width), dtype=torch.long)
        mask[:, :skip] = 1
        for row, tokens in enumerate(sequences.values()):
            rest = tokens[skip:]
            input_ids[row, width - len(rest) :] = torch.tensor(rest)
            mask[row, skip + width - len(rest) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
        mask = mask.to(self.device)
        pending = (mask, list(sequences), [len(t) for t in sequences.values()])
        if self._decoder is not None:
            logits, keys, values = self._decoder.prefill(
                input_ids.to(self.device), positions.to(self.device), mask, self._prefix_kv if skip else None
            )
            self._pending.append((keys, values, *pending))
            return logits
        cache = DynamicCache()
        if skip:
            cache = DynamicCache(
                ddp_cache_data=[(k.expand(len(sequences), -1, -1, -1), v.expand(len(sequences), -1, -1, -1))
                                for k, v in self._prefix_kv]
            )
        output = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=positions.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._pending.append(([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], *pending))
        return output.logits[:, -1]

    def commit(self) -> None:
        """Stack the KV of everything prefilled since the last commit onto the batch."""
        for keys, values, mask, request_ids, lengths in self._pending:
            self._stack(keys, values, mask)
            self.rows += request_ids
            self._lengths += lengths
        self._pending = []

    @torch.inference_mode()
    def decode(self, tokens: list[int], between_layers: Callable[[], None] | None = None) -> torch.Tensor:
        """Feed one token per row (in row order); return next-token logits [rows, vocab].
        `between_layers` (through `inference.decoder` only) runs between layers of the step and
        may `prefill` other sequences there; the batch's own KV is not touched by that."""
        input_ids = torch.tensor(tokens, device=self.device).unsqueeze(1)  # [rows, 1]
        positions = torch.tensor(self._lengths, device=self.device).unsqueeze(1)
        column = self._mask.shape[1]  # where this step's key and value go
        ones = torch.ones((len(self.rows), 1), dtype=self._mask.dtype, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        self._lengths = [length + 1 for length in self._lengths]
        if self._decoder is None:
            cache = DynamicCache(ddp_cache_data=list(zip(self._keys, self._values, strict=True)))
            output = self.model(
                input_ids=input_ids,
                attention_mask=self._mask if self._padded else None,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            self._keys = [layer.keys for layer in cache.layers]
            self._values = [layer.values for layer in cache.layers]
            return output.logits[:, -1]
        if column == self._keys[0].shape[2]:  # no room left: grow by SPARE_COLUMNS
            self._each_kv(lambda kv: self._lay_out([kv], column))
        attend = torch.zeros((len(self.rows), self._keys[0].shape[2]), dtype=torch.bool, device=self.device)
        attend[:, : column + 1] = self._mask.bool()
        return self._decoder.step(
            input_ids, positions, self._keys, self._values, column, attend[:, None, None, :], between_layers
        )

    def release_free_memory(self) -> None:
        """Hand memory freed by finished requests back to the system. glibc keeps freed KV
        blocks of many shapes in its arenas: `make bench` part (e) saw resident memory grow
        14.5 % from 100 to 1,000 requests without this, and 7.5 % with it."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif _malloc_trim is not None:
            _malloc_trim(0)

    def remove(self, request_ids: set[int]) -> None:
        """Drop these requests' rows and free their KV memory."""
        keep = [row for row, request_id in enumerate(self.rows) if request_id not in request_ids]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[row] for row in keep]
        self._lengths = [self._lengths[row] for row in keep]
        if not keep:
            self._keys, self._values, self._mask, self._padded = None, None, None, False
            return
        index = torch.tensor(keep, device=self.device)
        columns = self._mask.shape[1]
        self._mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row hold nothing: cut them off.
        first_used = int(self._mask.any(dim=0).nonzero()[0])
        self._mask = self._mask[:, first_used:]
        self._padded = not bool(self._mask.all())
        width = columns - first_used
        self._each_kv(lambda kv: self._lay_out([kv[:, :, first_used:columns].index_select(0, index)], width))

    def drop_pending(self, request_ids: set[int]) -> None:
        """Forget what was prefilled for these requests and not yet committed."""
        kept = []
        for keys, values, mask, ids, lengths in self._pending:
            rows = [row for row, request_id in enumerate(ids) if request_id not in request_ids]
            if len(rows) < len(ids) and rows:
                index = torch.tensor(rows, device=self.device)
                keys = [layer_keys.index_select(0, index) for layer_keys in keys]
                values = [layer_values.index_select(0, index) for layer_values in values]
                mask, ids, lengths = mask.index_select(0, index), [ids[r] for r in rows], [lengths[r] for r in rows]
            if rows:
                kept.append((keys, values, mask, ids, lengths))
        self._pending = kept

    def clear(self) -> None:
        """Drop every row and anything prefilled but not yet committed."""
        self.rows, self._lengths, self._pending = [], [], []
        self._keys, self._values, self._mask, self._padded = None, None, None, False

    def _stack(self, keys: list[torch.Tensor], values: list[torch.Tensor], mask: torch.Tensor) -> None:
        """Append freshly prefilled rows (per layer keys and values) to the batch, left-padding
        the shorter of the two so that every row ends in the same column."""
        if self._keys is None:
            width = mask.shape[1]
            self._mask = mask
            self._keys = [self._lay_out([new], width) for new in keys]
            self._values = [self._lay_out([new], width) for new in values]
        else:
            columns = self._mask.shape[1]
            width = max(columns, mask.shape[1])
            self._mask = torch.cat([_pad_left(self._mask, width, dim=1), _pad_left(mask, width, dim=1)])
            self._keys = [self._lay_out([old[:, :, :columns], new], width) for old, new in zip(self._keys, keys, strict=True)]
            self._values = [self._lay_out([old[:, :, :columns], new], width) for old, new in zip(self._values, values, strict=True)]
        self._padded = not bool(self._mask.all())

    def _each_kv(self, relayout) -> None:
        """Replace every layer's keys and values by `relayout` of them."""
        self._keys = [relayout(keys) for keys in self._keys]
        self._values = [relayout(values) for values in self._values]

    def _lay_out(self, parts: list[torch.Tensor], width: int) -> torch.Tensor:
        """One layer's KV for the batch: `parts` ([rows, kv_heads, columns, head_dim] each) stacked
        by row, each right-aligned at column `width` (left padding is zeros), then the spare room.
        Masked columns must hold zeros, not garbage: attention multiplies them by 0 and NaN × 0
        is NaN."""
        if not self._spare and len(parts) == 1 and parts[0].shape[2] == width:
            return parts[0]
        first = parts[0]
        rows = sum(part.shape[0] for part in parts)
        laid_out = first.new_zeros((rows, first.shape[1], width + self._spare, first.shape[3]))
        row = 0
        for part in parts:
            laid_out[row : row + part.shape[0], :, width - part.shape[2] : width] = part
            row += part.shape[0]
        return laid_out


def prefill_by_prefix(
    sequences: dict[int, list[int]], prefix: list[int], prefill: Callable[[dict[int, list[int]], int], torch.Tensor]
) -> torch.Tensor:
    """`prefill(group, skip)` once for the sequences that begin with the shared `prefix`
    (skipping it) and once for the others (skipping nothing); the logits in `sequences`' order."""
    skip = len(prefix)
    shared = {i: t for i, t in sequences.items() if skip and len(t) > skip and t[:skip] == prefix}
    own = {i: t for i, t in sequences.items() if i not in shared}
    logits = {}
    for group, group_skip in ((shared, skip), (own, 0)):
        if group:
            logits.update(zip(group, prefill(group, group_skip), strict=True))
    return torch.stack([logits[request_id] for request_id in sequences])


def _pad_left(tensor: torch.Tensor, width: int, *, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
