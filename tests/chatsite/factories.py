"""Rows for tests, built through the same services the product uses."""
from chatsite.models import Conversation, Message


def conversation_with_reply(user, content="Hello", reply_text="Hi there", status=Message.Status.DONE):
    conversation = Conversation.objects.create(owner=user, title=content[:60])
    question = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=content)
    reply = Message.objects.create(
        conversation=conversation, parent=question, role=Message.Role.ASSISTANT, content=reply_text, status=status
    )
    conversation.current = reply
    conversation.save()
    return conversation, question, reply
