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
