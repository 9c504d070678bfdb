import pytest

from chatsite.models import Message
from chatsite.selectors import branch_out, replies_with_branch
from inference import RequestStatus
from tests.chatsite.factories import conversation_with_reply

pytestmark = pytest.mark.django_db


def reply_with_branch(*, message_id):
    return replies_with_branch(message_ids=[message_id])[0]


def test_message_status_mirrors_the_engine_request_status():
    assert {choice.value for choice in Message.Status} == {status.value for status in RequestStatus}


def test_the_branch_follows_parents_from_the_current_message_and_skips_siblings(make_user):
    conversation, question, first_reply = conversation_with_reply(make_user())
    alternative = Message.objects.create(
        conversation=conversation, parent=question, role=Message.Role.ASSISTANT, content="another answer"
    )
    follow_up = Message.objects.create(conversation=conversation, parent=alternative, role=Message.Role.USER, content="more")
    conversation.current = follow_up
    conversation.save()
    assert [message["id"] for message in branch_out(conversation=conversation)] == [question.id, alternative.id, follow_up.id]
    reply, above = reply_with_branch(message_id=first_reply.id)
    assert [*above, reply] == [question, first_reply]


def test_a_reply_is_read_with_its_owner_and_the_branch_above_it_in_one_query(make_user, django_assert_num_queries):
    owner = make_user()
    conversation, question, first_reply = conversation_with_reply(owner)
    alternative = Message.objects.create(conversation=conversation, parent=question, role=Message.Role.ASSISTANT, content="b")
    follow_up = Message.objects.create(conversation=conversation, parent=alternative, role=Message.Role.USER, content="more")
    reply = Message.objects.create(conversation=conversation, parent=follow_up, role=Message.Role.ASSISTANT)
    conversation_with_reply(owner)  # another conversation: none of its messages come along
    with django_assert_num_queries(1):
        found, branch = reply_with_branch(message_id=reply.id)
        assert (found, found.conversation, found.conversation.owner) == (reply, conversation, owner)
    assert branch == [question, alternative, follow_up]
    assert reply_with_branch(message_id=first_reply.id)[1] == [question]
    assert reply_with_branch(message_id=reply.id + 1000) is None


def test_several_replies_are_read_with_their_branches_in_one_query(make_user, django_assert_num_queries):
    conversation, question, first_reply = conversation_with_reply(make_user())
    second_reply = Message.objects.create(conversation=conversation, parent=question, role=Message.Role.ASSISTANT)
    other_conversation, other_question, other_reply = conversation_with_reply(make_user())
    with django_assert_num_queries(1):
        found = replies_with_branch(message_ids=[first_reply.id, other_reply.id, first_reply.id + 1000, second_reply.id])
    assert [(reply, branch) if reply else None for reply, branch in (f or (None, None) for f in found)] == [
        (first_reply, [question]), (other_reply, [other_question]), None, (second_reply, [question]),
    ]
    assert found[1][0].conversation == other_conversation
