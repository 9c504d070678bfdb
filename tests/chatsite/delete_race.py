"""A send and a delete of the same conversation, at once, ROUNDS times, each on its own
database connection; prints what the rounds came to as JSON. Run by
test_conversation_views.py against a fresh PostgreSQL database:
`python -m tests.chatsite.delete_race ROUNDS` with DATABASE_URL set."""
from __future__ import annotations

import collections
import json
import sys
import threading


def main(rounds: int) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from billing.plans import PLUS, plan_get
    from chatsite.models import Conversation, Message
    from chatsite.services import message_send

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(username="racer", password="a-long-Passw0rd!")
    plan = plan_get(PLUS)
    outcomes: collections.Counter = collections.Counter()
    for number in range(rounds):
        conversation = message_send(user=user, plan=plan, conversation_id=None, content="first").reply.conversation
        Message.objects.filter(conversation=conversation).update(status=Message.Status.DONE)
        connection.close()
        send, delete = _race(user, plan, conversation.id, f"again {number}")
        kept = "kept" if Conversation.objects.filter(id=conversation.id).exists() else "gone"
        outcomes[f"send {send}, delete {delete}, conversation {kept}"] += 1
        connection.close()
    return dict(outcomes)


def _race(user, plan, conversation_id: int, content: str) -> tuple[str, str]:
    """A send and a delete started together on two threads; how each ended."""
    from django.db import connection

    from chatsite.models import Conversation
    from chatsite.services import ConversationBusy, conversation_delete, message_send

    start = threading.Barrier(2)
    results: dict[str, str] = {}

    def attempt(name: str, action) -> None:
        start.wait()
        try:
            results[name] = action()
        except ConversationBusy:
            results[name] = "busy"
        except Conversation.DoesNotExist:
            results[name] = "not_found"
        except Exception as error:  # reported, so the test shows it
            results[name] = f"error: {type(error).__name__}"
        finally:
            connection.close()

    def send() -> str:
        message_send(user=user, plan=plan, conversation_id=conversation_id, content=content)
        return "accepted"

    def delete() -> str:
        conversation_delete(user=user, conversation_id=conversation_id)
        return "deleted"

    threads = [threading.Thread(target=attempt, args=("send", send)), threading.Thread(target=attempt, args=("delete", delete))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results["send"], results["delete"]


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
