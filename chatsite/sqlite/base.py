"""Django's SQLite backend, with this process's write transactions taken in turn.

SQLite lets one writer in at a time. A thread that finds the database locked waits in
SQLite's busy handler, which sleeps 1, 2, 5, 10 … 100 ms between tries and so can leave the
lock idle after a commit: 32 API calls arriving together took 1.5 s to get their messages
saved one by one. Here the threads of one process queue on a lock instead and the next one
can start the moment the last commits. Where several web processes share the database
(CHAT_WEB_PROCESSES > 1) the writer also takes a file lock beside it, so they take turns the
same way; other processes (a management command) still meet SQLite's own locking.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from functools import cache

from django.conf import settings
from django.db import OperationalError
from django.db.backends.sqlite3 import base

_writer = threading.Lock()  # held from BEGIN to COMMIT or ROLLBACK, or for one write outside them
DEFAULT_TIMEOUT_S = 5.0  # SQLite's own default; OPTIONS["timeout"] overrides both
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
PROCESS_LOCK_POLL_S = 0.0005  # how often a writer waiting for another process looks again


@cache
def _process_lock() -> int | None:
    """The file whose lock the web processes sharing the database take in turn, or None
    where there is one web process."""
    if settings.CHAT_WEB_PROCESSES <= 1:
        return None
    return os.open(settings.DATA_DIR / "sqlite-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)


def _take_writer(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    if not _writer.acquire(timeout=timeout):
        raise OperationalError("database is locked")
    descriptor = _process_lock()
    if descriptor is None:
        return
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                _writer.release()
                raise OperationalError("database is locked") from None
            time.sleep(PROCESS_LOCK_POLL_S)


def _give_writer() -> None:
    descriptor = _process_lock()
    if descriptor is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    _writer.release()


class _Cursor(base.SQLiteCursorWrapper):
    """A write outside a transaction (a single UPDATE in autocommit) also waits its turn."""

    lock_timeout = DEFAULT_TIMEOUT_S  # set per connection by DatabaseWrapper.create_cursor

    def execute(self, query, params=None):
        if self.connection.in_transaction or not query.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute(query, params)
        return self._in_turn(super().execute, query, params)

    def executemany(self, query, param_list):
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        return self._in_turn(super().executemany, query, param_list)

    def _in_turn(self, run, *args):
        _take_writer(self.lock_timeout)
        try:
            return run(*args)
        finally:
            _give_writer()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_writer = False

    @property
    def _lock_timeout(self) -> float:
        return self.settings_dict["OPTIONS"].get("timeout", DEFAULT_TIMEOUT_S)

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=_Cursor)
        cursor.lock_timeout = self._lock_timeout
        return cursor

    def _start_transaction_under_autocommit(self) -> None:
        _take_writer(self._lock_timeout)
        self._holds_writer = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_writer()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_writer()

    def _release_writer(self) -> None:
        if self._holds_writer:
            self._holds_writer = False
            _give_writer()
