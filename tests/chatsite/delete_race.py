"""A send and a delete of the same conversation, at once, ROUNDS times, each on its own
database connection; prints what each round came to as JSON. Run by
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
    from chatsite.services import ConversationBusy, conversation_delete, message_send

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(username="racer", password="a-long-Passw0rd!")
    plan = plan_get(PLUS)
    outcomes: collections.Counter = collections.Counter()
    for number in range(rounds):
        conversation = message_send(user=user, plan=plan, conversation_id=None, content="first").reply.conversation
        Message.objects.filter(conversation=conversation).update(status=Message.Status.DONE)
        connection.close()
        start = threading.Barrier(2)
        results: dict[str, str] = {}

        def send() -> None:
            start.wait()
            try:
                message_send(user=user, plan=plan, conversation_id=conversation.id, content=f"again {number}")
                results["send"] = "accepted"
            except Conversation.DoesNotExist:
                results["send"] = "not_found"
            except Exception as error:  # reported, so the test shows it
                results["send"] = f"error: {type(error).__name__}"
            finally:
                connection.close()

        def delete() -> None:
            start.wait()
            try:
                conversation_delete(user=user, conversation_id=conversation.id)
                results["delete"] = "deleted"
            except ConversationBusy:
                results["delete"] = "busy"
            except Conversation.DoesNotExist:
                results["delete"] = "not_found"
            except Exception as error:
                results["delete"] = f"error: {type(error).__name__}"
            finally:
                connection.close()

        threads = [threading.Thread(target=send), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        exists = Conversation.objects.filter(id=conversation.id).exists()
        outcomes[f"send {results['send']}, delete {results['delete']}, conversation {'kept' if exists else 'gone'}"] += 1
        connection.close()
    return dict(outcomes)


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
