"""SpareRoomLayer: the same keys and values as concatenation, written into spare room."""
import torch

from inference.kv import SPARE_TOKENS, SpareRoomLayer


def test_updates_equal_concatenation_and_reuse_the_buffer_while_room_lasts():
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = SpareRoomLayer(keys, values)
    expected_k, expected_v = keys, values
    buffers = set()
    for _ in range(SPARE_TOKENS + 3):
        new_k, new_v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        got_k, got_v = layer.update(new_k, new_v)
        expected_k, expected_v = torch.cat([expected_k, new_k], dim=2), torch.cat([expected_v, new_v], dim=2)
        assert torch.equal(got_k, expected_k) and torch.equal(got_v, expected_v)
        buffers.add(layer._key_buffer.data_ptr())
    assert layer.get_seq_length() == 5 + SPARE_TOKENS + 3
    assert len(buffers) == 2  # one reallocation when the first step found no room, one when it ran out


def test_assigning_keys_and_values_replaces_the_cache():
    layer = SpareRoomLayer(torch.zeros(2, 1, 3, 2), torch.zeros(2, 1, 3, 2))
    layer.update(torch.ones(2, 1, 1, 2), torch.ones(2, 1, 1, 2))
    kept_k, kept_v = layer.keys[1:], layer.values[1:]  # a row leaves, as the runner does it
    layer.keys, layer.values = kept_k, kept_v
    assert layer.keys.shape == (1, 1, 4, 2) and torch.equal(layer.values, kept_v)
    keys, _ = layer.update(torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), 2.0))
    assert keys.shape == (1, 1, 5, 2) and keys[0, 0, -1].tolist() == [2.0, 2.0]
