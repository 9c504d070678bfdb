"""Titles the model writes after a conversation's first exchange."""
import pytest

from billing.plans import FREE, plan_get
from chatsite import titles
from chatsite.generation import reply_generate
from chatsite.models import Conversation
from chatsite.services import conversation_rename, message_send
from chatsite.titles import title_clean, title_generate

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("written", "title"),
    [
        ('"Paris, the capital of France"', "Paris, the capital of France"),
        ("Title: Green tea at home.\nMore text", "Green tea at home"),
        ("**Learning languages**", "Learning languages"),
        ("  \n  ", None),
        ("42 !!", None),
        ("word " * 30, ("word " * 30).strip()[:59].rstrip() + "…"),
        ("Tea\x00 at home", "Tea\ufffd at home"),  # PostgreSQL stores no NUL
    ],
)
def test_what_the_model_wrote_is_cleaned_into_a_one_line_title(written, title):
    assert title_clean(written) == title


@pytest.fixture
def model_writes(monkeypatch):
    """What the model answers when asked for a title (the tiny random model writes newlines);
    the real model's titles are checked in the browser test with SmolLM2."""
    asked = []

    def ask(prompt):
        asked.append(prompt)
        return '"A friendly greeting"\n'

    monkeypatch.setattr(titles, "_ask_model", ask)
    return asked


def test_the_first_exchange_gets_a_title_from_the_model_and_every_tab_is_told(make_user, settings, model_writes,
                                                                               monkeypatch):
    settings.CHAT_MODEL_TITLES = True
    told = []
    monkeypatch.setattr(titles.publisher, "publish_conversation", lambda user_id, **kw: told.append((user_id, kw)))
    user = make_user()
    turn = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello there")
    reply_generate(message_id=turn.reply.id)
    assert title_generate(conversation_id=turn.reply.conversation_id) == "A friendly greeting"
    assert "Question: Hello there" in model_writes[0]
    conversation = Conversation.objects.get(id=turn.reply.conversation_id)
    assert (conversation.title, conversation.title_source) == ("A friendly greeting", "model")
    assert told == [(user.id, {"conversation_id": conversation.id, "title": "A friendly greeting"})]


def test_a_title_the_user_gave_is_never_overwritten(make_user, settings, model_writes):
    settings.CHAT_MODEL_TITLES = True
    user = make_user()
    turn = message_send(user=user, plan=plan_get(FREE), conversation_id=None, content="Hello there")
    reply_generate(message_id=turn.reply.id)
    conversation_rename(user=user, conversation_id=turn.reply.conversation_id, title="Mine")
    assert title_generate(conversation_id=turn.reply.conversation_id) is None
    assert Conversation.objects.get(id=turn.reply.conversation_id).title == "Mine"
