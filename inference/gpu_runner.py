"""The GPU runner: the same contract as `inference.runner.ModelRunner` (prefill, commit,
decode, remove), shaped for a device where a decode step is bound by kernel launches, not
by arithmetic.

- **One KV cache, allocated at start**: per layer [slots, 2 × kv_heads, capacity + 1,
  head_dim] (key heads, then value heads), a slot per running sequence (`inference.slots.SlotTable`). A sequence's keys and values stay
  in its slot from prefill to its last token: joining writes its prompt's KV into a free slot,
  leaving frees the slot, and nothing else moves. The last column is a scratch column that the
  empty rows of a step write into.
- **Decode steps of fixed shapes**: a step runs over slots [0, batch size) and attends over
  columns [0, length), both rounded up to the sizes in `inference.slots`, with every input in
  buffers that stay where they are. So each (batch size, length) is one CUDA graph, captured
  on first use and replayed after: a step costs one launch instead of ~25 per layer.
- **Prefill outside the graphs**, through `inference.decoder.LlamaDecoder.prefill`
  (transformers' layer op for op), its KV scattered into the sequences' slots in two writes
  per layer; a prompt longer than the engine's prefill budget is prefilled in parts over
  several steps (`prefill_part`), so running streams wait at most one part.

Why slots and not pages: see docs/engine.md ("The GPU runner"). On a CPU the same runner runs
without graphs, so the CPU suite checks its arithmetic and bookkeeping.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from inference import decoder
from inference.decoder import _half_rms_norm, _rms_norm
from inference.runner import prefill_by_prefix
from inference.sampling import on_device
from inference.slots import SlotTable, batch_sizes, length_sizes, size_for

logger = logging.getLogger(__name__)


def supports(model) -> bool:
    """A model the runner can step: a Llama (`inference.decoder.supports`) whose rotary
    tables depend on the position alone."""
    return decoder.supports(model) and decoder._rotary_tables(model) is not None


class GpuRunner:
    """Row i of a step's result belongs to `self.rows[i]`, as in `ModelRunner`."""

    # Removing a row frees a slot and moves no KV, so the engine removes finished and
    # preempted rows before it prefills newcomers, which may need their slots.
    cheap_remove = True
    # A sequence's KV is in its slot from the first token prefilled: a long prompt can be
    # prefilled in parts over several steps (`prefill_part`).
    chunked_prefill = True
    # A step's input tokens can stay on the device (`forward`, `feed`): the engine launches a
    # step before it reads the last one's tokens back, and does its bookkeeping meanwhile.
    overlap = True

    def __init__(
        self,
        model,
        device: torch.device,
        *,
        slots: int,
        capacity: int | None = None,
        graphs: bool | None = None,
    ) -> None:
        """`slots`: sequences held at once (the engine's max_running). `capacity`: tokens per
        sequence, at most the model's context (default). `graphs`: replay decode steps as CUDA
        graphs; by default where the device is CUDA."""
        if not supports(model):
            raise ValueError("the GPU runner takes Llama-family models with position-only rotary embeddings")
        self.model = model.to(device)
        self.device = device
        self._decoder = decoder.LlamaDecoder(self.model, prepack=False, lean_prefill=True)
        config = self.model.config
        self.dtype = next(self.model.parameters()).dtype
        self.context_length = min(int(config.max_position_embeddings), capacity or int(config.max_position_embeddings))
        self.capacity = self.context_length
        self.graphs = device.type == "cuda" if graphs is None else graphs
        if self.graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        heads, kv_heads, dim = self._decoder.heads, self._decoder.kv_heads, self._decoder.head_dim
        self._heads, self._kv_heads, self._dim = heads, kv_heads, dim
        # Per layer one tensor, a slot's key heads then its value heads: a step writes a row's
        # key and value in one `index_put_`. `_keys` and `_values` are views into it.
        shape = (slots, 2 * kv_heads, self.capacity + 1, dim)  # + the scratch column
        self._kv = [torch.zeros(shape, dtype=self.dtype, device=device) for _ in self._decoder.layers]
        self._keys = [kv[:, :kv_heads] for kv in self._kv]
        self._values = [kv[:, kv_heads:] for kv in self._kv]
        self._slots = SlotTable(slots)
        self._batch_sizes = batch_sizes(slots)
        self._length_sizes = length_sizes(self.capacity)
        self.rows: list[int] = []  # request id of each row of a step's result
        self._lengths: dict[int, int] = {}  # request id → tokens in its slot
        self._pending: list[int] = []  # prefilled into a slot, not yet in `rows`
        self._prefix: list[int] = []
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        # A step's inputs: token and position per slot, where a position of `capacity` marks
        # an empty row (it writes into the scratch column).
        self._inputs = torch.zeros((2, slots), dtype=torch.long, device=device)
        self._columns = torch.arange(self.capacity + 1, device=device)
        self._row_index = torch.arange(slots, device=device)
        cos, sin = self._decoder.rotary_tables
        self._cos, self._sin, self._last_position = cos, sin, cos.shape[0] - 1
        self._norm = _rms_norm if self.dtype == torch.float32 else _half_rms_norm
        self._stepped = self._row_index[:0]  # the slots of the last step's rows, on the device
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    # The contract with the engine, as ModelRunner's.
    def quantize(self, kind: str = "auto", gguf_path: str | None = None) -> str:
        return "" if kind in ("none", "auto") else "no quantized path (the GPU runner multiplies by the model's weights)"

    def drop_model_matrices(self) -> bool:
        return False  # prefill multiplies by the model's own (fused) matrices

    quantized = False
    small_batch_dtype = None
    prepacked = False

    @property
    def padded_tokens(self) -> int:
        """KV held: every held slot's capacity."""
        return len(self._slots) * self.capacity

    @torch.inference_mode()
    def set_shared_prefix(self, token_ids: list[int]) -> None:
        """Compute once the KV of tokens most prompts begin with; prompts that begin with them
        skip that part of their prefill and copy it into their slot."""
        input_ids = on_device([token_ids], self.device)
        positions = torch.arange(len(token_ids), device=self.device)[None]
        _, keys, values = self._decoder.prefill(input_ids, positions, torch.ones_like(input_ids), padded=False)
        self._prefix = list(token_ids)
        self._prefix_kv = list(zip(keys, values, strict=True))

    @torch.inference_mode()
    def prefill(self, sequences: dict[int, list[int]]) -> torch.Tensor:
        """Prefill `sequences` (request id → its tokens so far) into free slots and return
        their next-token logits [len(sequences), vocab] in that order; they join the rows of
        decode steps at `commit()`."""
        for tokens in sequences.values():
            if len(tokens) >= self.capacity:
                raise ValueError(f"{len(tokens)} tokens do not fit a KV slot of {self.capacity}")
        return prefill_by_prefix(sequences, self._prefix, self._prefill)

    def _prefill(self, sequences: dict[int, list[int]], skip: int) -> torch.Tensor:
        """One padded forward pass over the tokens after the first `skip` (laid out [prefix]
        [left padding][rest], as ModelRunner's), then its KV scattered into the slots: column
        c of row r goes to column c of r's slot, less its padding; padding goes to the scratch
        column."""
        width = max(len(tokens) - skip for tokens in sequences.values())
        rows = len(sequences)
        input_ids = torch.zeros((rows, width), dtype=torch.long)
        mask = torch.zeros((rows, skip + width), dtype=torch.long)
        mask[:, :skip] = 1
        destination = torch.full((rows, skip + width), self.capacity, dtype=torch.long)
        for row, tokens in enumerate(sequences.values()):
            rest = len(tokens) - skip
            input_ids[row, width - rest :] = torch.tensor(tokens[skip:])
            mask[row, skip + width - rest :] = 1
            destination[row, :skip] = torch.arange(skip)
            destination[row, skip + width - rest :] = torch.arange(skip, len(tokens))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:].contiguous()
        # Copied without waiting for the device: a decode step may still be running on it.
        logits, keys, values = self._decoder.prefill(
            on_device(input_ids, self.device), on_device(positions, self.device), on_device(mask, self.device),
            self._prefix_kv if skip else None, padded=not bool(mask.all()),
        )
        slots = torch.tensor([self._slots.take(request_id) for request_id in sequences])
        for request_id, tokens in sequences.items():
            self._lengths[request_id] = len(tokens)
            self._pending.append(request_id)
        slot_index = on_device(slots, self.device)[:, None].expand(rows, skip + width)
        destination = on_device(destination, self.device)
        for layer_keys, layer_values, new_keys, new_values in zip(self._keys, self._values, keys, values, strict=True):
            # [rows, kv_heads, columns, dim] → [rows, columns, kv_heads, dim], as indexing by
            # (slot, column) lays it out.
            layer_keys[slot_index, :, destination] = new_keys.expand(rows, -1, -1, -1).transpose(1, 2)
            layer_values[slot_index, :, destination] = new_values.expand(rows, -1, -1, -1).transpose(1, 2)
        return logits

    @torch.inference_mode()
    def prefill_part(self, request_id: int, tokens: list[int], start: int, *, final: bool) -> torch.Tensor | None:
        """Prefill `tokens[start:]`, the next part of one sequence whose first `start` tokens
        are in its slot already (from earlier parts; at 0 it takes a slot). Where the part is
        `final` (`tokens` is the whole sequence) the sequence joins at `commit()` and its
        next-token logits [vocab] are returned; else None. A long prompt prefilled this way
        over several engine steps never holds running streams up for longer than one part."""
        if len(tokens) >= self.capacity:
            raise ValueError(f"{len(tokens)} tokens do not fit a KV slot of {self.capacity}")
        slot = self._slots.slot_of(request_id) if start else self._slots.take(request_id)
        new = tokens[start:]
        before = [(keys[slot : slot + 1, :, :start], values[slot : slot + 1, :, :start])
                  for keys, values in zip(self._keys, self._values, strict=True)] if start else None
        logits, keys, values = self._decoder.prefill(
            on_device([new], self.device),
            torch.arange(start, len(tokens), device=self.device)[None],
            torch.ones((1, len(tokens)), dtype=torch.long, device=self.device),
            before,
            padded=False,
        )
        for layer_keys, layer_values, part_keys, part_values in zip(self._keys, self._values, keys, values, strict=True):
            layer_keys[slot, :, start : len(tokens)] = part_keys[0, :, start:]
            layer_values[slot, :, start : len(tokens)] = part_values[0, :, start:]
        self._lengths[request_id] = len(tokens)
        if not final:
            return None
        self._pending.append(request_id)
        return logits[0]

    def commit(self) -> None:
        """Prefilled sequences join the rows of decode steps."""
        self.rows += self._pending
        self._pending = []

    @torch.inference_mode()
    def decode(self, tokens: list[int], between_layers: Callable[[], None] | None = None) -> torch.Tensor:
        """Feed one token per row (in row order); return next-token logits [rows, vocab].
        `between_layers` is not called: a step is one graph, and milliseconds long."""
        return self.forward(dict(zip(self.rows, tokens, strict=True)))

    @torch.inference_mode()
    def forward(self, known: dict[int, int]) -> torch.Tensor:
        """Launch one decode step over every row and return its next-token logits [rows,
        vocab] without waiting for the device. A row's input token is `known[request id]`
        where given, else the one `feed()` left on the device after the last step: so the
        engine can launch a step before it has read the last one's tokens back. A row whose
        sequence fills its slot (its request ends with the last step's token) runs as an
        empty row."""
        slot_of, held = self._slots.slot_of, self._lengths
        slots, lengths = [], []
        for request_id in self.rows:
            slots.append(slot_of(request_id))
            lengths.append(held[request_id])
            held[request_id] += 1  # after this step
        batch = size_for(self._slots.span, self._batch_sizes)
        span = size_for(min(max(lengths), self.capacity - 1) + 1, self._length_sizes)
        positions = torch.full((batch,), self.capacity, dtype=torch.long)
        positions[slots] = torch.tensor(lengths).clamp_(max=self.capacity)
        self._inputs[1, :batch] = on_device(positions, self.device)
        if known:
            index, values = on_device([[slot_of(request_id) for request_id in known], list(known.values())], self.device)
            self._inputs[0, index] = values
        logits = self._run(batch, span)
        self._stepped = on_device(slots, self.device)
        return logits[self._stepped]

    def feed(self, tokens: torch.Tensor) -> None:
        """The tokens chosen from the last `forward()`'s logits, one per row of it, on the
        device: the next step's input for the rows that `known` does not name."""
        self._inputs[0, self._stepped] = tokens

    def release_free_memory(self) -> None:
        """The KV cache is allocated once; prefill's temporaries go back to the CUDA driver."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def remove(self, request_ids: set[int]) -> None:
        """Drop these requests' rows and free their slots."""
        self.rows = [request_id for request_id in self.rows if request_id not in request_ids]
        self._free(request_ids)

    def drop_pending(self, request_ids: set[int]) -> None:
        """Forget what was prefilled for these requests and not yet committed."""
        self._pending = [request_id for request_id in self._pending if request_id not in request_ids]
        self._free(request_ids)

    def clear(self) -> None:
        """Drop every row and everything prefilled but not yet committed."""
        self.rows, self._pending = [], []
        self._lengths.clear()
        self._slots.clear()

    def _free(self, request_ids: set[int]) -> None:
        for request_id in request_ids:
            if request_id not in self._pending and request_id not in self.rows:
                self._slots.release(request_id)
                self._lengths.pop(request_id, None)

    # The step.
    def _run(self, batch: int, span: int) -> torch.Tensor:
        if not self.graphs:
            return self._step(batch, span)
        captured = self._graphs.get((batch, span))
        if captured is None:
            try:
                captured = self._graphs[(batch, span)] = self._capture(batch, span)
            except Exception:  # slower without graphs, but every request goes on
                logger.exception("capturing a decode step as a CUDA graph failed: steps run without graphs from now on")
                self.graphs = False
                self._graphs.clear()
                return self._step(batch, span)
        graph, output = captured
        graph.replay()
        return output

    def _capture(self, batch: int, span: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the step at (batch, span) as a CUDA graph: warmed up on a side stream first,
        as torch asks, with every row empty, so that neither run writes into a sequence's KV.
        The graphs share one memory pool: they are replayed one at a time."""
        real = self._inputs.clone()
        self._inputs[1].fill_(self.capacity)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step(batch, span)
            torch.cuda.current_stream().wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                output = self._step(batch, span)
        finally:
            self._inputs.copy_(real)
        logger.info("captured a decode step of %d rows over %d columns (%d graphs)", batch, span, len(self._graphs) + 1)
        return graph, output

    def _step(self, batch: int, span: int) -> torch.Tensor:
        """One decode step over slots [0, batch), attending over columns [0, span): no host
        synchronisation and no shape that depends on the data, so it can be captured."""
        heads, kv_heads, dim = self._heads, self._kv_heads, self._dim
        q_size, qk_size = heads * dim, (heads + kv_heads) * dim
        model = self.model.model
        eps = model.norm.variance_epsilon
        tokens, positions = self._inputs[0, :batch], self._inputs[1, :batch]
        rows = self._row_index[:batch]
        table = positions.clamp(max=self._last_position)
        cos, sin = self._cos[table].unsqueeze(1), self._sin[table].unsqueeze(1)  # [batch, 1, dim]
        # An additive mask, made once: given a boolean one, SDPA turns it into this itself, two
        # more kernels in each of the step's layers.
        attend = torch.zeros((batch, 1, 1, span), dtype=self.dtype, device=self.device).masked_fill_(
            (self._columns[:span][None, :] > positions[:, None])[:, None, None, :], float("-inf"))
        norm = self._norm
        hidden = model.embed_tokens(tokens)  # [batch, hidden]
        for layer, kv, keys, values in zip(self._decoder.layers, self._kv, self._keys, self._values, strict=True):
            qkv = F.linear(norm(hidden, layer.input_norm.weight, eps), layer.qkv, layer.qkv_bias)
            qk = qkv[:, :qk_size].view(batch, heads + kv_heads, dim)
            # rotate_half(x) is x rolled by half a head with its first half negated (in sin);
            # rotated in place, so each row's key and value lie side by side in qkv.
            torch.add(qk * cos, qk.roll(dim // 2, -1) * sin, out=qk)
            kv[rows, :, positions] = qkv[:, q_size:].view(batch, 2 * kv_heads, dim)
            # The query heads that share a key/value head are that head's "query length".
            attention = F.scaled_dot_product_attention(
                qk[:, :heads].view(batch, kv_heads, heads // kv_heads, dim),
                keys[:batch, :, :span],
                values[:batch, :, :span],
                attn_mask=attend,
            )
            hidden = hidden + F.linear(attention.reshape(batch, q_size), layer.o, layer.o_bias)
            gate, up = F.linear(norm(hidden, layer.post_norm.weight, eps), layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down, layer.down_bias)
        return F.linear(norm(hidden, model.norm.weight, eps), *self._decoder.lm_head)

