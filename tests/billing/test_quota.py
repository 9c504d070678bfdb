"""Rolling-window quotas: the edge, the window moving on, refusals that save nothing, and
concurrent sends that never get past the limit — on SQLite and on PostgreSQL."""
import datetime
import json
import subprocess
import sys
import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import QuotaUse
from billing.plans import FREE, PLUS, plan_get
from billing.quota import QuotaExceeded, quota_consume, quota_consume_many, quota_status
from chatsite.models import Conversation, Message
from chatsite.services import message_send
from tests.e2e.servers import ROOT, server_env
from tests.postgres import fresh_database

T0 = timezone.now().replace(microsecond=0)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def consume(user, plan, now):
    with transaction.atomic():
        return quota_consume(user=user, plan=plan, now=now)


@pytest.fixture
def small_free(settings):
    """Free allows 3 messages per hour."""
    settings.BILLING_QUOTA_WINDOW_S = 3600
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "messages_per_window": 3}}
    return plan_get(FREE)


@pytest.mark.django_db
def test_the_limit_is_let_through_and_the_next_one_is_refused(make_user, small_free):
    user = make_user()
    remaining = [consume(user, small_free, at(i * 60)).remaining for i in range(3)]
    assert remaining == [2, 1, 0]
    with pytest.raises(QuotaExceeded) as refused:
        consume(user, small_free, at(600))
    # The first message (t=0) leaves the window at t=3600: 3000 s from t=600.
    assert refused.value.retry_after_s == 3000
    assert "3 messages in the last 1 hour" in str(refused.value) and "50 minutes" in str(refused.value)
    assert "Plus raises the limit" in str(refused.value)
    assert QuotaUse.objects.filter(user=user).count() == 3


@pytest.mark.django_db
def test_the_window_rolls_one_message_at_a_time(make_user, small_free):
    user = make_user()
    for i in range(3):
        consume(user, small_free, at(i * 60))
    with pytest.raises(QuotaExceeded):
        consume(user, small_free, at(3599))
    assert consume(user, small_free, at(3600)).remaining == 0  # the t=0 message has left
    with pytest.raises(QuotaExceeded) as refused:
        consume(user, small_free, at(3601))
    assert refused.value.retry_after_s == 59  # the t=60 message leaves at 3660


@pytest.mark.django_db
def test_uses_that_left_the_window_are_deleted_at_the_next_message(make_user, small_free):
    user = make_user()
    for i in range(3):
        consume(user, small_free, at(i * 60))
    consume(user, small_free, at(3630))  # the t=0 use has left; t=60 and t=120 have not
    assert sorted(QuotaUse.objects.filter(user=user).values_list("at", flat=True)) == [at(60), at(120), at(3630)]


def _statements(captured) -> list[str]:
    """The verbs of the data queries run (transaction control left out)."""
    verbs = [query["sql"].split()[0].upper() for query in captured.captured_queries]
    return [verb for verb in verbs if verb in ("SELECT", "INSERT", "UPDATE", "DELETE")]


@pytest.mark.django_db
def test_counting_a_message_on_sqlite_takes_two_queries_and_a_third_only_to_delete_old_uses(make_user, small_free):
    # They run while SQLite's one write lock is held: each one is a wait for every other writer.
    user = make_user()
    consume(user, small_free, at(0))
    with CaptureQueriesContext(connection) as below_the_limit:
        consume(user, small_free, at(60))
    with CaptureQueriesContext(connection) as with_old_uses:
        consume(user, small_free, at(3630))  # the t=0 use has left the window
    assert _statements(below_the_limit) == ["SELECT", "INSERT"]
    assert _statements(with_old_uses) == ["SELECT", "DELETE", "INSERT"]


@pytest.mark.django_db
def test_status_reports_what_is_left_and_when_the_next_frees_up(make_user, small_free):
    user = make_user()
    assert quota_status(user=user, plan=small_free, now=at(0)).as_dict()["resets_at"] is None
    consume(user, small_free, at(100))
    status = quota_status(user=user, plan=small_free, now=at(200))
    assert (status.remaining, status.limit, status.next_free_at) == (2, 3, at(3700))


@pytest.mark.django_db
def test_after_a_downgrade_the_lower_limit_counts_the_same_window(make_user, small_free):
    user = make_user()
    plus = plan_get(PLUS)
    for i in range(5):
        consume(user, plus, at(i))
    status = quota_status(user=user, plan=small_free, now=at(10))
    assert status.remaining == 0
    assert status.next_free_at == at(2 + 3600)  # three of the five must leave: the third leaves at 2 + 3600


@pytest.mark.django_db(transaction=True)  # the plain marker wraps each test in a transaction
def test_quota_consume_refuses_to_run_outside_a_transaction(make_user, small_free):
    with pytest.raises(RuntimeError):
        quota_consume(user=make_user(), plan=small_free)


@pytest.mark.django_db
def test_a_refused_message_saves_nothing(make_user, small_free):
    user = make_user()
    for _ in range(3):
        message_send(user=user, plan=small_free, conversation_id=None, content="hi")
    before = (Conversation.objects.count(), Message.objects.count(), QuotaUse.objects.count())
    with pytest.raises(QuotaExceeded):
        message_send(user=user, plan=small_free, conversation_id=None, content="one too many")
    assert (Conversation.objects.count(), Message.objects.count(), QuotaUse.objects.count()) == before


@pytest.mark.django_db
def test_a_send_that_fails_counts_nothing(make_user, small_free):
    with pytest.raises(Conversation.DoesNotExist):
        message_send(user=make_user(), plan=small_free, conversation_id=999_999, content="hi")
    assert QuotaUse.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_on_sqlite_never_pass_the_limit(make_user, small_free):
    user = make_user()
    start = threading.Barrier(8)
    outcomes = []

    def send():
        start.wait()
        try:
            message_send(user=user, plan=small_free, conversation_id=None, content="race")
            outcomes.append("accepted")
        except QuotaExceeded:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted"] * 3 + ["refused"] * 5
    assert Message.objects.filter(conversation__owner=user, role="user").count() == 3


@pytest.mark.distributed
def test_concurrent_sends_on_postgresql_never_pass_the_limit():
    """16 threads, 16 connections, one user with 17 of 20 messages used: exactly 3 pass."""
    with fresh_database("chatsite_quota") as database_url:
        env = server_env(DATABASE_URL=database_url, DJANGO_SECRET_KEY="quota-race", DJANGO_SETTINGS_MODULE="chatsite.settings")
        result = subprocess.run(
            [sys.executable, "-m", "tests.billing.quota_race", "16", "17"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["errors"] == []
    assert (outcome["limit"], outcome["accepted"], outcome["refused"]) == (20, 3, 13)
    assert (outcome["user_messages"], outcome["quota_uses"]) == (3, 20)


@pytest.mark.django_db
def test_counting_several_at_once_takes_what_the_window_has_room_for_in_order(make_user, small_free):
    user = make_user()
    consume(user, small_free, at(0))
    with transaction.atomic():
        counted, refused = quota_consume_many(user=user, plan=small_free, count=4, now=at(10))
    assert [status.used for status in counted] == [2, 3]
    assert all(status.next_free_at == at(3600) for status in counted)  # the first use still leaves first
    assert refused is not None and refused.remaining == 0 and QuotaExceeded(refused).retry_after_s == 3590
    assert QuotaUse.objects.filter(user=user).count() == 3
    with transaction.atomic():
        counted, refused = quota_consume_many(user=user, plan=small_free, count=2, now=at(20))
    assert counted == [] and (refused.used, refused.next_free_at) == (3, at(3600))
    assert QuotaUse.objects.filter(user=user).count() == 3
