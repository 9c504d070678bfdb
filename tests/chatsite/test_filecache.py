"""chatsite.filecache: the embedded mode's several web processes count throttle events in one
file cache; counts made at once by several processes all land, and a count keeps its window."""
import multiprocessing
import time

import pytest

from chatsite import throttle
from chatsite.filecache import SharedFileCache

PROCESSES = 4
EACH = 150


def _cache(folder) -> SharedFileCache:
    return SharedFileCache(str(folder), {})


def _count(folder, start) -> None:
    cache = _cache(folder)
    start.wait()
    for _ in range(EACH):
        cache.add("hits", 0, 60)
        cache.incr("hits")


def test_processes_counting_at_once_lose_no_count(tmp_path):
    context = multiprocessing.get_context("fork")
    start = context.Event()
    processes = [context.Process(target=_count, args=(tmp_path, start)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert _cache(tmp_path).get("hits") == PROCESSES * EACH


def test_incr_keeps_the_keys_expiry(tmp_path):
    cache = _cache(tmp_path)
    cache.add("hits", 0, 1)
    assert cache.incr("hits") == 1
    assert cache.incr("hits", 2) == 3
    assert cache.decr("hits") == 2
    time.sleep(1.2)
    assert cache.get("hits") is None
    with pytest.raises(ValueError, match="not found"):
        cache.incr("hits")


def test_add_stores_only_when_absent(tmp_path):
    cache = _cache(tmp_path)
    assert cache.add("k", "first", 60)
    assert not cache.add("k", "second", 60)
    assert cache.get("k") == "first"
    cache.clear()  # the lock file is not a cache entry: clear leaves it and works
    assert cache.add("k", "third", 60)


async def test_async_counting_uses_the_locked_path(tmp_path):
    cache = _cache(tmp_path)
    assert await cache.aadd("hits", 0, 60)
    assert await cache.aincr("hits", 5) == 5
    assert await cache.adecr("hits") == 4


def test_a_login_window_counts_through_the_shared_cache(tmp_path, settings, monkeypatch):
    monkeypatch.setattr(throttle, "cache", _cache(tmp_path))
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    settings.LOGIN_FAILURES_PER_IP = 100
    for _ in range(3):
        throttle.login_check(username="ann", ip="10.0.0.1")
        throttle.login_failed(username="ann", ip="10.0.0.1")
    with pytest.raises(throttle.Throttled):
        throttle.login_check(username="ann", ip="10.0.0.1")
