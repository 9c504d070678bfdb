"""chatsite.sqlite: the threads of one process take SQLite's single write lock in turn, on a
lock of ours, which every way a transaction ends gives back."""
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction

from chatsite.sqlite.base import _writer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _sqlite_only():
    if connection.vendor != "sqlite":
        pytest.skip("the default (SQLite) database only")


def test_a_transaction_holds_the_writer_until_it_commits():
    with transaction.atomic():
        get_user_model().objects.create(username="a")
        assert _writer.locked()
    assert not _writer.locked()
    assert get_user_model().objects.filter(username="a").exists()


def test_a_failed_transaction_gives_the_writer_back_and_saves_nothing():
    def create_then_fail() -> None:
        with transaction.atomic():
            get_user_model().objects.create(username="a")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        create_then_fail()
    assert not _writer.locked()
    assert not get_user_model().objects.filter(username="a").exists()


def _in_thread(work) -> tuple[threading.Thread, list]:
    """Start `work` in a thread with its own connection; the list gets its result or error."""
    outcome = []

    def run():
        try:
            outcome.append(work())
        except Exception as error:
            outcome.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_write_outside_a_transaction_waits_for_the_open_one_then_succeeds():
    users = get_user_model().objects
    with transaction.atomic():
        users.create(username="a")
        other, outcome = _in_thread(lambda: users.create(username="b").username)  # autocommit INSERT
        other.join(0.3)
        assert other.is_alive()  # waiting its turn
    other.join(30)
    assert outcome == ["b"]
    assert set(users.values_list("username", flat=True)) == {"a", "b"}
    assert not _writer.locked()


def test_reads_do_not_wait_for_a_writer():
    users = get_user_model().objects
    users.create(username="a")
    with transaction.atomic():
        users.create(username="b")
        reader, outcome = _in_thread(users.count)
        reader.join(30)
        assert outcome == [1]  # the committed row, not the open transaction's


def test_with_several_web_processes_a_write_waits_for_another_processes(settings, tmp_path):
    """The web processes of one machine take turns on a file lock beside the database."""
    import os
    import subprocess
    import sys
    import time

    from chatsite.sqlite.base import _process_lock

    settings.CHAT_WEB_PROCESSES, settings.DATA_DIR = 2, tmp_path
    _process_lock.cache_clear()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.0)",
         str(tmp_path / "sqlite-writer.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        get_user_model().objects.create(username="after-the-other-process")
        assert time.monotonic() - started > 0.5  # it waited for the other process's turn
        assert not _writer.locked()
    finally:
        holder.wait()
        os.close(_process_lock())
        _process_lock.cache_clear()
