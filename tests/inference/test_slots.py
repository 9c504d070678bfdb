import pytest

from inference.slots import NoFreeSlot, SlotTable, batch_sizes, length_sizes, size_for


def test_a_sequence_takes_the_lowest_free_slot_and_gives_it_back():
    table = SlotTable(4)
    assert [table.take(request_id) for request_id in (10, 11, 12)] == [0, 1, 2]
    assert table.span == 3
    assert table.release(11) == 1
    assert table.span == 3  # slot 2 is still held
    assert table.take(13) == 1  # the hole is filled before slot 3
    assert table.release(12) == 2 and table.release(13) == 1
    assert table.span == 1 and len(table) == 1 and 10 in table and 12 not in table
    assert table.release(99) is None


def test_a_full_table_refuses_and_a_slot_is_held_once():
    table = SlotTable(2)
    table.take(1)
    with pytest.raises(ValueError, match="holds slot 0"):
        table.take(1)
    table.take(2)
    with pytest.raises(NoFreeSlot):
        table.take(3)
    table.clear()
    assert table.span == 0 and table.take(3) == 0


def test_captured_batch_sizes_cover_every_batch_up_to_the_slots():
    assert batch_sizes(1) == (1,)
    assert batch_sizes(8) == (1, 2, 4, 8)
    assert batch_sizes(40) == (1, 2, 4, 8, 16, 32, 40)
    sizes = batch_sizes(256)
    assert sizes[-1] == 256 and len(sizes) == 4 + 16
    for rows in range(1, 257):
        size = size_for(rows, sizes)
        assert rows <= size and (size - rows < 16)


def test_length_sizes_double_up_to_the_capacity():
    assert length_sizes(100) == (100,)
    assert length_sizes(128) == (128,)
    assert length_sizes(1000) == (128, 256, 512, 1000)
    assert size_for(129, length_sizes(1000)) == 256
    with pytest.raises(ValueError, match="largest"):
        size_for(1001, length_sizes(1000))
