"""Each worker process tells the console how its engine is doing: every few seconds it puts
a snapshot in the cache (Redis in the distributed mode, this process's memory in the
embedded one). A worker whose snapshot has expired is offline. The console never asks a
worker anything, so it never waits on a dead broker."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

from django.core.cache import cache

logger = logging.getLogger(__name__)

INTERVAL_S = 5.0
TTL_S = 15  # three missed beats: offline
HOSTS_KEY = "chatsite:workers"


def _key(hostname: str) -> str:
    return f"chatsite:worker:{hostname}"


def worker_stats_publish(hostname: str) -> None:
    from inference.worker import engine_current

    engine = engine_current()
    snapshot = {"hostname": hostname, "at": time.time(), "state": "loading" if engine is None else "ready"}
    if engine is not None:
        snapshot.update(dataclasses.asdict(engine.snapshot()))
        # Worker processes sharing one engine server report the same figures: who counts
        # them (metrics, the console) counts each engine once.
        snapshot["engine"] = f"{socket.gethostname()}:{getattr(engine, 'pid', None) or os.getpid()}"
    cache.set(_key(hostname), snapshot, TTL_S)
    hosts = cache.get(HOSTS_KEY) or []
    if hostname not in hosts:
        cache.set(HOSTS_KEY, [*hosts, hostname][-1000:], 86400)


def workers_live() -> list[dict]:
    """The snapshots of the workers heard from in the last TTL_S seconds."""
    hosts = cache.get(HOSTS_KEY) or []
    found = cache.get_many([_key(host) for host in hosts])
    return sorted(found.values(), key=lambda snapshot: snapshot["hostname"])


def heartbeat_start(hostname: str | None = None) -> None:
    """Publish this process's snapshot every INTERVAL_S in a daemon thread, once per process."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        name = hostname or f"{socket.gethostname()}:{threading.get_native_id()}"
        _thread = threading.Thread(target=_beat_for_ever, args=(name,), name="worker-stats", daemon=True)
        _thread.start()


_thread: threading.Thread | None = None
_lock = threading.Lock()


def _beat_for_ever(hostname: str) -> None:
    while True:
        try:
            worker_stats_publish(hostname)
        except Exception as error:  # a cache outage: the console shows this worker offline meanwhile
            logger.warning("could not publish worker stats: %r", error)
        time.sleep(INTERVAL_S)
