"""Leases on replies: one worker at a time, and a dead worker's replies taken over and finished."""
import datetime
import threading
import time

import pytest
from django.utils import timezone

from billing.plans import FREE, plan_get
from chatsite import leases, services
from chatsite.generation import reply_generate
from chatsite.leases import in_id_order, lease_release, leases_claim, leases_renew, replies_lapsed_resend
from chatsite.models import Message
from chatsite.services import message_send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch):
    """Replies the sweeper sends to the queue (the broker's side is Celery's)."""
    ids = []
    monkeypatch.setattr(services, "reply_send", lambda *, reply: ids.append(reply.id))
    return ids


def pending_reply(make_user, content="Hello"):
    return message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content=content).reply


def lease_claim(*, message_id):
    """A worker's claim of one reply."""
    return leases_claim(message_ids=[message_id])[0]


def lease_renew(*, message_id, owner, content):
    return leases_renew(renewals=[(message_id, owner, content)])[0]


def lapse(reply, seconds=1):
    Message.objects.filter(id=reply.id).update(lease_expires_at=timezone.now() - datetime.timedelta(seconds=seconds))


def test_one_worker_at_a_time_claims_a_reply_and_a_lapsed_lease_can_be_taken(make_user):
    reply = pending_reply(make_user)
    first = lease_claim(message_id=reply.id)
    assert first and lease_claim(message_id=reply.id) is None
    assert lease_renew(message_id=reply.id, owner=first, content="so far")
    lapse(reply)
    second = lease_claim(message_id=reply.id)
    assert second and second != first
    assert not lease_renew(message_id=reply.id, owner=first, content="stale")  # the first lost it
    reply.refresh_from_db()
    assert (reply.content, reply.status, reply.attempts) == ("so far", "streaming", 2)


def test_replies_are_claimed_and_renewed_together_each_as_alone(make_user):
    first, held, second = pending_reply(make_user), pending_reply(make_user), pending_reply(make_user)
    holder = lease_claim(message_id=held.id)
    owners = leases_claim(message_ids=[first.id, held.id, second.id, first.id])
    assert owners[0] and owners[2] and owners[0] != owners[2]
    assert owners[1] is None and owners[3] is None  # held by another; already claimed in this batch
    renewed = leases_renew(renewals=[(first.id, owners[0], "one"), (held.id, owners[0], "not mine"),
                                     (second.id, owners[2], "two"), (held.id, holder, "held")])
    assert renewed == [True, False, True, True]
    assert dict(Message.objects.filter(id__in=[first.id, held.id, second.id]).values_list("id", "content")) == {
        first.id: "one", held.id: "held", second.id: "two"}


def test_a_batch_writes_its_rows_smallest_id_first_and_answers_in_the_callers_order(make_user):
    assert in_id_order([30, 10, 20, 10]) == [1, 3, 2, 0]
    first, second = pending_reply(make_user), pending_reply(make_user)
    owners = leases_claim(message_ids=[second.id, first.id])
    assert Message.objects.get(id=second.id).lease_owner == owners[0]
    assert Message.objects.get(id=first.id).lease_owner == owners[1]


def test_a_released_reply_keeps_its_text_and_is_due_at_once_without_counting_an_attempt(make_user, sent):
    reply = pending_reply(make_user)
    owner = lease_claim(message_id=reply.id)
    assert lease_release(message_id=reply.id, owner=owner, content="half an ans")
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.attempts) == ("pending", "half an ans", 0)
    assert replies_lapsed_resend() == 1 and sent == [reply.id]


def test_the_sweeper_sends_lapsed_replies_again_once_and_leaves_live_ones(make_user, sent):
    live, dead, unclaimed = pending_reply(make_user), pending_reply(make_user), pending_reply(make_user)
    lease_claim(message_id=live.id)
    lease_claim(message_id=dead.id)
    lapse(dead)
    lapse(unclaimed)  # queued, but no worker claimed it in CHAT_QUEUE_LEASE_S: its task was lost
    assert replies_lapsed_resend() == 2
    assert sorted(sent) == sorted([dead.id, unclaimed.id])
    assert replies_lapsed_resend() == 0  # sent again: due only once the new lease lapses
    statuses = dict(Message.objects.filter(id__in=[live.id, dead.id, unclaimed.id]).values_list("id", "status"))
    assert statuses == {live.id: "streaming", dead.id: "pending", unclaimed.id: "pending"}


def test_at_the_embedded_servers_start_every_reply_of_the_previous_run_is_sent_again(make_user, sent):
    streaming, queued = pending_reply(make_user), pending_reply(make_user)
    lease_claim(message_id=streaming.id)  # leases still running: the process died a moment ago
    started = timezone.now()
    current = pending_reply(make_user)
    assert replies_lapsed_resend(before=started) == 2
    assert sorted(sent) == sorted([streaming.id, queued.id]) and current.id not in sent


def test_a_reply_taken_over_goes_on_from_its_saved_text(make_user):
    reply = pending_reply(make_user)
    owner = lease_claim(message_id=reply.id)
    lease_renew(message_id=reply.id, owner=owner, content="Once upon")
    lapse(reply)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "done" and reply.content.startswith("Once upon") and len(reply.content) > len("Once upon")
    assert reply.lease_owner == "" and reply.lease_expires_at is None


def test_a_reply_that_keeps_losing_its_worker_fails_after_the_last_attempt_keeping_its_text(make_user, settings):
    reply = pending_reply(make_user)
    Message.objects.filter(id=reply.id).update(
        status="streaming", content="partial", attempts=settings.CHAT_MAX_ATTEMPTS, lease_owner="dead"
    )
    lapse(reply)
    reply_generate(message_id=reply.id)
    reply.refresh_from_db()
    assert reply.status == "failed" and reply.content == "partial"
    assert f"after {settings.CHAT_MAX_ATTEMPTS} tries" in reply.error and "regenerate" in reply.error


def streaming_in_a_thread(reply):
    thread = threading.Thread(target=reply_generate, kwargs={"message_id": reply.id})
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = Message.objects.get(id=reply.id)
        if row.status == "streaming" and row.content:
            return thread
        time.sleep(0.05)
    raise AssertionError("the reply never streamed")


def test_a_worker_that_lost_its_lease_stops_without_writing(make_user, slow_engine, settings):
    settings.CHAT_SAVE_EVERY_S = 0.05
    reply = pending_reply(make_user)
    thread = streaming_in_a_thread(reply)
    lapse(reply)
    new_owner = lease_claim(message_id=reply.id)  # another worker takes over
    thread.join(10)
    assert not thread.is_alive()
    row = Message.objects.get(id=reply.id)
    assert row.lease_owner == new_owner and row.status == "streaming"


def test_a_worker_shutting_down_hands_its_reply_back_with_its_text(make_user, slow_engine, settings):
    settings.CHAT_SAVE_EVERY_S = 0.05
    reply = pending_reply(make_user)
    thread = streaming_in_a_thread(reply)
    slow_engine.shutdown()
    thread.join(10)
    row = Message.objects.get(id=reply.id)
    assert row.status == "pending" and row.content and row.lease_owner == ""
    assert row.lease_expires_at <= timezone.now()  # due at the next sweep
    assert row.attempts == 0
    from chatsite import live

    assert reply.id not in live.live_own_texts()  # not sent whole to a peer connecting late


def test_the_sweeper_runs_in_the_background_of_a_worker_until_stopped(make_user, sent, settings):
    settings.CHAT_LEASE_SWEEP_S = 0.05
    reply = pending_reply(make_user)
    lapse(reply)
    leases.sweeper_stop()  # the embedded worker's, if a test before started one
    leases.sweeper_start()
    try:
        deadline = time.monotonic() + 10
        while reply.id not in sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        leases.sweeper_stop()
    assert sent == [reply.id]
    later = pending_reply(make_user)
    lapse(later)
    time.sleep(0.3)
    assert later.id not in sent


def test_replies_generated_by_many_threads_at_once_are_each_claimed_saved_and_ended_once(make_user, settings, monkeypatch):
    from billing.models import UsageRecord
    from chatsite import generation

    settings.CHAT_SAVE_EVERY_S = 0.01  # renewals meet in batches too
    replies = [pending_reply(make_user, content=f"Question {index}") for index in range(6)]
    opened, real_open_all = [], generation._open_all
    monkeypatch.setattr(generation, "_open_all", lambda message_ids: opened.extend(message_ids) or real_open_all(message_ids))
    threads = [threading.Thread(target=reply_generate, kwargs={"message_id": reply.id}) for reply in replies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(opened) == sorted(reply.id for reply in replies)
    rows = Message.objects.filter(id__in=[reply.id for reply in replies])
    assert {(row.status, row.lease_owner, row.attempts) for row in rows} == {("done", "", 1)}
    assert all(row.content and row.completion_tokens for row in rows)
    records = UsageRecord.objects.filter(message_id__in=[reply.id for reply in replies])
    assert sorted(record.message_id for record in records) == sorted(reply.id for reply in replies)
    assert {record.completion_tokens for record in records} == {row.completion_tokens for row in rows}
