import threading
import time

import pytest

from chatsite.group_commit import GroupCommit


class _Recorder:
    """A batch function that records each batch and the thread that ran it, and holds the
    first batch until released."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[tuple[list[int], int]] = []
        self.release = threading.Event()
        self.fail_first = fail_first

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append((list(items), threading.get_ident()))
        if len(self.batches) == 1:
            self.release.wait(10)
            if self.fail_first:
                raise ValueError("the database went away")
        return [item * 10 for item in items]


def _call_in_threads(group: GroupCommit, items: list[int]):
    results, errors, idents = {}, {}, {}

    def call(item: int) -> None:
        idents[item] = threading.get_ident()
        try:
            results[item] = group(item)
        except Exception as error:
            errors[item] = error

    threads = {item: threading.Thread(target=call, args=(item,)) for item in items}
    return threads, results, errors, idents


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_lone_caller_runs_its_own_batch_at_once_on_its_own_thread():
    recorder = _Recorder()
    recorder.release.set()
    group = GroupCommit(recorder)
    assert group(4) == 40
    assert recorder.batches == [([4], threading.get_ident())]
    assert group.waiting == 0


def test_callers_that_arrive_during_a_batch_share_the_next_one_run_by_the_first_of_them():
    recorder = _Recorder()
    group = GroupCommit(recorder)
    threads, results, errors, idents = _call_in_threads(group, [1, 2, 3, 4])
    threads[1].start()
    _wait_until(lambda: len(recorder.batches) == 1)  # 1 is in the database
    for queued, item in enumerate((2, 3, 4), start=1):
        threads[item].start()
        _wait_until(lambda queued=queued: group.waiting == queued)  # queued in this order
    recorder.release.set()
    for thread in threads.values():
        thread.join(10)
    assert results == {1: 10, 2: 20, 3: 30, 4: 40} and not errors
    assert [items for items, _ in recorder.batches] == [[1], [2, 3, 4]]
    assert [ident for _, ident in recorder.batches] == [idents[1], idents[2]]
    assert group.waiting == 0
    assert group(5) == 50  # and the next caller finds nobody busy


def test_a_batch_is_at_most_max_batch_long_and_the_rest_follow():
    recorder = _Recorder()
    group = GroupCommit(recorder, max_batch=2)
    threads, results, _, _ = _call_in_threads(group, [1, 2, 3, 4, 5])
    threads[1].start()
    _wait_until(lambda: len(recorder.batches) == 1)
    for queued, item in enumerate((2, 3, 4, 5), start=1):
        threads[item].start()
        _wait_until(lambda queued=queued: group.waiting == queued)
    recorder.release.set()
    for thread in threads.values():
        thread.join(10)
    assert [items for items, _ in recorder.batches] == [[1], [2, 3], [4, 5]]
    assert results == {item: item * 10 for item in range(1, 6)}


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs():
    recorder = _Recorder(fail_first=True)
    group = GroupCommit(recorder)
    threads, results, errors, _ = _call_in_threads(group, [1, 2])
    threads[1].start()
    _wait_until(lambda: len(recorder.batches) == 1)
    threads[2].start()
    _wait_until(lambda: group.waiting == 1)
    recorder.release.set()
    for thread in threads.values():
        thread.join(10)
    assert isinstance(errors[1], ValueError) and results == {2: 20}


def _batch_behind_a_held_one(run, items: list[int]):
    """Runs `items` as one batch (behind a first batch of 0 held until they all wait); the
    batches `run` was called with, the results and the errors."""
    release, batches = threading.Event(), []

    def recorded(batch: list[int]) -> list:
        batches.append(list(batch))
        if batch == [0]:
            release.wait(10)
        return run(batch)

    group = GroupCommit(recorded)
    threads, results, errors, _ = _call_in_threads(group, [0, *items])
    threads[0].start()
    _wait_until(lambda: len(batches) == 1)
    for queued, item in enumerate(items, start=1):
        threads[item].start()
        _wait_until(lambda queued=queued: group.waiting == queued)
    release.set()
    for thread in threads.values():
        thread.join(10)
    assert group.waiting == 0
    return batches, results, errors


def test_an_item_that_fails_its_batch_fails_only_its_own_caller():
    def run(batch: list[int]) -> list[int]:
        if 3 in batch:  # the database refuses this item, and with it the whole transaction
            raise ValueError("text fields cannot contain NUL")
        return [item * 10 for item in batch]

    batches, results, errors = _batch_behind_a_held_one(run, [1, 2, 3, 4])
    assert results == {0: 0, 1: 10, 2: 20, 4: 40}
    assert list(errors) == [3] and "NUL" in str(errors[3])
    assert batches == [[0], [1, 2, 3, 4], [1], [2], [3], [4]]


def test_a_batch_that_fails_for_everyone_fails_each_caller_with_its_own_error():
    def run(batch: list[int]) -> list[int]:
        if batch != [0]:
            raise ConnectionError(f"the database went away ({batch})")
        return [0]

    batches, results, errors = _batch_behind_a_held_one(run, [1, 2])
    assert results == {0: 0}
    assert {item: str(error) for item, error in errors.items()} == {
        1: "the database went away ([1])", 2: "the database went away ([2])"}
    assert batches == [[0], [1, 2], [1], [2]]


def test_a_batch_that_returns_the_wrong_number_of_results_fails_its_callers():
    group = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="a batch of 1 gave 0 results"):
        group(1)
    assert group.waiting == 0


def test_many_callers_at_once_each_get_their_own_result():
    group = GroupCommit(lambda items: [item * 10 for item in items])
    threads, results, errors, _ = _call_in_threads(group, list(range(200)))
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(10)
    assert results == {item: item * 10 for item in range(200)} and not errors
