"""Django's SQLite backend, with this process's write transactions taken in turn.

SQLite lets one writer in at a time. A thread that finds the database locked waits in
SQLite's busy handler, which sleeps 1, 2, 5, 10 … 100 ms between tries and so can leave the
lock idle after a commit: 32 API calls arriving together took 1.5 s to get their messages
saved one by one. Here the threads of one process queue on a lock instead and the next one
can start the moment the last commits; other processes (a management command, a second
server) still meet SQLite's own locking.
"""
from __future__ import annotations

import threading

from django.db import OperationalError
from django.db.backends.sqlite3 import base

_writer = threading.Lock()  # held from BEGIN to COMMIT or ROLLBACK, or for one write outside them
DEFAULT_TIMEOUT_S = 5.0  # SQLite's own default; OPTIONS["timeout"] overrides both
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _take_writer(timeout: float) -> None:
    if not _writer.acquire(timeout=timeout):
        raise OperationalError("database is locked")


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
            _writer.release()


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
            _writer.release()
