"""The chat page's plain requests: list, search, rename, delete, branches, export, feedback."""
import json
import subprocess
import sys

import pytest

from chatsite.models import Conversation, Feedback, Message
from tests.chatsite.factories import conversation_with_reply
from tests.e2e.servers import ROOT, server_env
from tests.postgres import fresh_database

pytestmark = pytest.mark.django_db


def post(client, url, body=None):
    return client.post(url, json.dumps(body or {}), content_type="application/json")


@pytest.fixture
def user_client(client, make_user):
    user = make_user()
    client.force_login(user)
    client.user = user
    return client


def test_the_list_pages_past_fifty_newest_first(user_client):
    ids = [conversation_with_reply(user_client.user, content=f"topic {n}")[0].id for n in range(120)]
    first = user_client.get("/chat/conversations/").json()
    assert [c["id"] for c in first["conversations"]] == ids[::-1][:50] and first["next"]
    seen = [c["id"] for c in first["conversations"]]
    cursor = first["next"]
    while cursor:
        page = user_client.get("/chat/conversations/", {"next": cursor}).json()
        seen += [c["id"] for c in page["conversations"]]
        cursor = page["next"]
    assert seen == ids[::-1]


def test_search_finds_titles_and_message_text_of_ones_own_conversations_only(user_client, make_user):
    by_title = conversation_with_reply(user_client.user, content="Quantum tunnelling", reply_text="Ok")[0]
    by_answer = conversation_with_reply(user_client.user, content="Physics", reply_text="... quantum effects ...")[0]
    conversation_with_reply(user_client.user, content="Cooking", reply_text="Pasta")
    conversation_with_reply(make_user(), content="quantum of someone else")
    found = user_client.get("/chat/conversations/", {"q": "QUANTUM"}).json()["conversations"]
    assert {c["id"] for c in found} == {by_title.id, by_answer.id}


def test_rename_keeps_the_users_title(user_client):
    conversation = conversation_with_reply(user_client.user)[0]
    response = post(user_client, f"/chat/{conversation.id}/rename/", {"title": "  My   trip  "})
    assert response.json()["title"] == "My trip"
    conversation.refresh_from_db()
    assert (conversation.title, conversation.title_source) == ("My trip", "user")
    assert post(user_client, f"/chat/{conversation.id}/rename/", {"title": " "}).status_code == 400


def test_delete_removes_the_conversation_but_not_while_an_answer_is_written(user_client):
    done = conversation_with_reply(user_client.user)[0]
    busy = conversation_with_reply(user_client.user, status=Message.Status.STREAMING)[0]
    assert post(user_client, f"/chat/{busy.id}/delete/").status_code == 409
    assert post(user_client, f"/chat/{done.id}/delete/").json() == {"deleted": done.id}
    assert set(Conversation.objects.values_list("id", flat=True)) == {busy.id}


@pytest.mark.django_db(False)
@pytest.mark.distributed
def test_a_delete_racing_a_send_on_postgresql_is_refused_or_wins_cleanly():
    """30 rounds of a send and a delete of one conversation at once: either the send lands
    and the delete is refused as busy, or the conversation is gone and the send finds no
    conversation. Never a database error (the delete once broke the new message's link)."""
    with fresh_database("chatsite_delete") as database_url:
        env = server_env(DATABASE_URL=database_url, DJANGO_SECRET_KEY="delete-race", DJANGO_SETTINGS_MODULE="chatsite.settings")
        result = subprocess.run([sys.executable, "-m", "tests.chatsite.delete_race", "30"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(outcomes) <= {"send accepted, delete busy, conversation kept",
                             "send not_found, delete deleted, conversation gone"}, outcomes
    assert sum(outcomes.values()) == 30


def test_someone_elses_conversation_or_message_is_not_found(user_client, make_user):
    conversation, _, reply = conversation_with_reply(make_user())
    for url, body in ((f"/chat/{conversation.id}/rename/", {"title": "x"}), (f"/chat/{conversation.id}/delete/", {}),
                      (f"/chat/{conversation.id}/branch/", {"message": reply.id}),
                      (f"/chat/messages/{reply.id}/feedback/", {"rating": 1})):
        assert post(user_client, url, body).status_code == 404, url
    assert user_client.get(f"/chat/{conversation.id}/export.md").status_code == 404
    assert Conversation.objects.get(id=conversation.id).title != "x"


def test_picking_an_alternative_shows_its_branch_down_to_its_latest_answer(user_client):
    conversation, question, first = conversation_with_reply(user_client.user, reply_text="First")
    second = Message.objects.create(conversation=conversation, parent=question, role="assistant", content="Second")
    follow_up = Message.objects.create(conversation=conversation, parent=second, role="user", content="More?")
    branch = post(user_client, f"/chat/{conversation.id}/branch/", {"message": first.id}).json()["branch"]
    assert [m["id"] for m in branch] == [question.id, first.id]
    assert branch[1]["siblings"] == [first.id, second.id]
    branch = post(user_client, f"/chat/{conversation.id}/branch/", {"message": second.id}).json()["branch"]
    assert [m["id"] for m in branch] == [question.id, second.id, follow_up.id]
    assert Conversation.objects.get(id=conversation.id).current_id == follow_up.id


@pytest.mark.parametrize("kind", ["md", "json"])
def test_export_is_the_branch_on_screen(user_client, kind):
    conversation, _, _ = conversation_with_reply(user_client.user, content="What is 2+2?", reply_text="**4**")
    response = user_client.get(f"/chat/{conversation.id}/export.{kind}")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    text = response.content.decode()
    if kind == "md":
        assert text == "# What is 2+2?\n\n## You\n\nWhat is 2+2?\n\n## Assistant\n\n**4**\n"
    else:
        document = json.loads(text)
        assert document["title"] == "What is 2+2?"
        assert [(m["role"], m["content"]) for m in document["messages"]] == [("user", "What is 2+2?"), ("assistant", "**4**")]
    assert user_client.get(f"/chat/{conversation.id}/export.html").status_code == 404


def test_feedback_is_one_per_user_and_answer_and_can_be_taken_back(user_client):
    _, question, reply = conversation_with_reply(user_client.user)
    assert post(user_client, f"/chat/messages/{reply.id}/feedback/", {"rating": 1}).json()["rating"] == 1
    post(user_client, f"/chat/messages/{reply.id}/feedback/", {"rating": -1, "comment": "Wrong capital"})
    feedback = Feedback.objects.get()
    assert (feedback.rating, feedback.comment, feedback.message_id) == (-1, "Wrong capital", reply.id)
    assert post(user_client, f"/chat/messages/{reply.id}/feedback/", {"rating": 5}).status_code == 400
    assert post(user_client, f"/chat/messages/{question.id}/feedback/", {"rating": 1}).status_code == 404  # a question
    post(user_client, f"/chat/messages/{reply.id}/feedback/", {"rating": 0})
    assert not Feedback.objects.exists()
