"""The batch's KV cache layers: a decode step writes its new column in place.

transformers' DynamicLayer concatenates every step: at batch 32 and ~150 cached tokens that
is a fresh copy of the whole cache, 30 layers × keys and values, ~100 MB allocated and
copied a step. SpareRoomLayer keeps keys and values at the front of buffers with room for
SPARE_TOKENS more columns and copies only when the room runs out (or rows join or leave).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_TOKENS = 64  # columns of room added when a buffer is (re)allocated


class SpareRoomLayer(DynamicLayer):
    """A DynamicLayer whose `keys` and `values` are views of the first `length` columns of
    larger buffers. Assigning `keys`/`values` (as the runner does when rows join or leave)
    replaces the buffer; the next update gives it room again."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self.keys, self.values = keys, values

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._key_buffer is None else self._key_buffer[:, :, : self._length]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._key_buffer = tensor
        self._length = 0 if tensor is None else tensor.shape[-2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._value_buffer is None else self._value_buffer[:, :, : self._length]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._value_buffer = tensor

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2] or end > self._value_buffer.shape[-2]:
            self._key_buffer = _with_room(self.keys, end + SPARE_TOKENS)
            self._value_buffer = _with_room(self.values, end + SPARE_TOKENS)
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        return self.keys, self.values


def spare_room_cache(cache: DynamicCache) -> DynamicCache:
    """`cache` with its layers made SpareRoomLayers (same tensors, no copy)."""
    cache.layers = [SpareRoomLayer(layer.keys, layer.values) for layer in cache.layers]
    return cache


def _with_room(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    batch, heads, length, dim = tensor.shape
    buffer = tensor.new_empty((batch, heads, columns, dim))
    buffer[:, :, :length] = tensor
    return buffer
