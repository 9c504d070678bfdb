import pytest

from billing.plans import FREE, plan_get
from chatsite import services
from chatsite.models import Conversation, Message
from chatsite.selectors import replies_stop_requested
from tests.chatsite.factories import conversation_with_reply

pytestmark = pytest.mark.django_db


def test_sending_starts_a_conversation_with_the_question_and_a_pending_reply(make_user):
    user = make_user()
    question, reply, _ = services.message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="What is the capital of France?")
    conversation = reply.conversation
    assert conversation.owner == user and conversation.title == "What is the capital of France?"
    assert question.role == "user" and question.parent is None
    assert reply.role == "assistant" and reply.parent == question and reply.status == "pending"
    assert conversation.current == reply


def test_sending_again_continues_the_shown_branch(make_user):
    user = make_user()
    conversation, _, first_reply = conversation_with_reply(user)
    question, reply, _ = services.message_send(user=user, plan=plan_get(FREE), conversation_id=conversation.id, content="And then?")
    assert question.parent == first_reply
    conversation.refresh_from_db()
    assert conversation.current == reply


def test_long_titles_are_shortened(make_user):
    _, reply, _ = services.message_send(user=make_user(), plan=plan_get(FREE), conversation_id=None, content="word " * 40)
    assert len(reply.conversation.title) == services.TITLE_CHARS and reply.conversation.title.endswith("…")


def test_sending_to_someone_elses_conversation_fails_and_writes_nothing(make_user):
    conversation, _, _ = conversation_with_reply(make_user())
    before = Message.objects.count()
    with pytest.raises(Conversation.DoesNotExist):
        services.message_send(user=make_user(), plan=plan_get(FREE), conversation_id=conversation.id, content="hi")
    assert Message.objects.count() == before


def test_stopping_a_queued_reply_marks_it_stopped_at_once(make_user):
    user = make_user()
    _, reply, _ = services.message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="hi")
    assert services.reply_stop(user=user, message_id=reply.id) is services.StopOutcome.STOPPED
    reply.refresh_from_db()
    assert reply.status == "stopped"


def test_stopping_a_streaming_reply_signals_the_worker(make_user):
    user = make_user()
    _, _, reply = conversation_with_reply(user, status=Message.Status.STREAMING)
    assert services.reply_stop(user=user, message_id=reply.id) is services.StopOutcome.STOPPING
    assert replies_stop_requested(message_ids=[reply.id, reply.id + 1]) == {reply.id}


def test_nobody_can_stop_someone_elses_reply(make_user):
    _, _, reply = conversation_with_reply(make_user(), status=Message.Status.STREAMING)
    assert services.reply_stop(user=make_user(), message_id=reply.id) is services.StopOutcome.NOTHING
    assert replies_stop_requested(message_ids=[reply.id]) == set()


@pytest.mark.parametrize(("broker", "plan_code", "queue", "priority"), [
    ("memory://localhost/", "free", "free", 0), ("memory://localhost/", "plus", "plus", 9),
    ("redis://127.0.0.1:6379/0", "free", "free", 9), ("redis://127.0.0.1:6379/0", "plus", "plus", 0),  # lowest first
])
def test_a_reply_is_queued_on_its_plans_queue_with_its_priority(make_user, monkeypatch, settings, broker, plan_code,
                                                                 queue, priority):
    settings.CELERY_BROKER_URL = broker
    sent = []
    monkeypatch.setattr(services.celery_app, "send_task", lambda name, **kwargs: sent.append((name, kwargs)))
    _, reply, _ = services.message_send(user=make_user(), plan=plan_get(plan_code), conversation_id=None, content="hi")
    services.reply_send(reply=reply)
    assert sent == [("chatsite.tasks.generate_reply", {"args": [reply.id], "queue": queue, "priority": priority})]


@pytest.fixture
def two_free_messages(settings):
    settings.BILLING_PLANS = {**settings.BILLING_PLANS, "free": {**settings.BILLING_PLANS["free"], "messages_per_window": 2}}
    return plan_get(FREE)


def test_api_calls_admitted_together_are_saved_as_each_would_be_alone(make_user, two_free_messages):
    from billing.quota import QuotaExceeded
    from chatsite.services import ApiCall, api_completions_create

    ada, bob = make_user(), make_user()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}]
    calls = [
        ApiCall(user=ada, plan=two_free_messages, messages=chat, sampling={"temperature": 0.5}, n=2),
        ApiCall(user=bob, plan=two_free_messages, messages=[{"role": "user", "content": "One"}], sampling={}),
        ApiCall(user=ada, plan=two_free_messages, messages=[{"role": "user", "content": "Two"}], sampling={}),
        ApiCall(user=ada, plan=two_free_messages, messages=[{"role": "user", "content": "Three"}], sampling={}),
    ]
    outcomes = api_completions_create(calls)
    assert isinstance(outcomes[3], QuotaExceeded)  # Ada's third call: her window holds two
    (first_replies, first_quota), (bob_replies, bob_quota), (second_replies, second_quota) = outcomes[:3]
    assert (first_quota.used, second_quota.used, bob_quota.used) == (1, 2, 1)
    # The first call: its conversation holds its messages as a chain, then two sibling replies.
    conversation = first_replies[0].conversation
    assert conversation.owner == ada and conversation.source == "api" and conversation.title == "Hi"
    assert conversation.current_id == first_replies[0].id
    saved = dict(Conversation.objects.filter(owner__in=[ada, bob]).values_list("id", "current_id"))
    assert saved == {r[0].conversation_id: r[0].id for r in (first_replies, bob_replies, second_replies)}
    chain, message = [], first_replies[0].parent
    while message is not None:
        chain.append((message.role, message.content))
        message = message.parent
    assert chain[::-1] == [(m["role"], m["content"]) for m in chat]
    assert len(first_replies) == 2 and first_replies[1].parent_id == first_replies[0].parent_id
    assert all(r.status == "pending" and r.sampling == {"temperature": 0.5} and r.plan == "free" for r in first_replies)
    assert [r.parent.content for r in bob_replies + second_replies] == ["One", "Two"]
    assert Message.objects.filter(conversation__owner=ada).count() == 4 + 2 + 1 + 1
    assert not Message.objects.filter(content="Three").exists()  # the refused call saved nothing
