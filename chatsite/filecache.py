"""The cache the embedded mode's several web processes share: Django's FileBasedCache with
`add` and `incr` made atomic across processes.

The throttles (chatsite/throttle.py) count with `add` then `incr`. Django's file cache does
both as a read then a write, so two processes counting at once lose one of the counts, and its
`incr` (BaseCache's) writes the new value with the default timeout, which moves the end of a
throttle's window. Here both hold one file lock in the cache's folder, and `incr` keeps the
key's expiry. Plain `set`, `get` and `delete` stay as Django has them (a rename is atomic).
"""
from __future__ import annotations

import fcntl
import os
import pickle
import tempfile
import time
import zlib
from contextlib import contextmanager

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.filebased import FileBasedCache

LOCK_NAME = "counters.lock"  # not *.djcache: clear() and culling leave it alone


class SharedFileCache(FileBasedCache):
    @contextmanager
    def _locked(self):
        self._createdir()
        fd = os.open(os.path.join(self._dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        with self._locked():
            return super().add(key, value, timeout, version)

    def incr(self, key, delta=1, version=None):
        fname = self._key_to_file(key, version)
        with self._locked():
            try:
                with open(fname, "rb") as f:
                    expiry = pickle.load(f)
                    value = pickle.loads(zlib.decompress(f.read()))
            except FileNotFoundError:
                value = expiry = None
            if value is None or (expiry is not None and expiry < time.time()):
                raise ValueError(f"Key '{key}' not found")
            value += delta
            self._write_expiring(fname, value, expiry)
        return value

    def decr(self, key, delta=1, version=None):
        return self.incr(key, -delta, version)

    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return await sync_to_async(self.add, thread_sensitive=False)(key, value, timeout, version)

    async def aincr(self, key, delta=1, version=None):
        return await sync_to_async(self.incr, thread_sensitive=False)(key, delta, version)

    async def adecr(self, key, delta=1, version=None):
        return await self.aincr(key, -delta, version)

    def _write_expiring(self, fname: str, value, expiry: float | None) -> None:
        """Django's set(), but with the absolute expiry the key already has."""
        fd, tmp_path = tempfile.mkstemp(dir=self._dir)
        try:
            with open(fd, "wb") as f:
                f.write(pickle.dumps(expiry, self.pickle_protocol))
                f.write(zlib.compress(pickle.dumps(value, self.pickle_protocol)))
            os.replace(tmp_path, fname)
        except BaseException:
            os.remove(tmp_path)
            raise
