"""N threads send at once at the edge of one user's quota, each on its own database
connection; prints what got through as JSON. Run by test_quota.py against a fresh PostgreSQL
database: `python -m tests.billing.quota_race THREADS ALREADY_USED` with DATABASE_URL set."""
from __future__ import annotations

import json
import sys
import threading


def main(threads: int, already_used: int) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from billing.models import QuotaUse
    from billing.plans import FREE, plan_get
    from billing.quota import QuotaExceeded
    from chatsite.models import Message
    from chatsite.services import message_send

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(username="racer", password="a-long-Passw0rd!")
    QuotaUse.objects.bulk_create([QuotaUse(user=user, at=timezone.now()) for _ in range(already_used)])
    connection.close()
    plan = plan_get(FREE)
    start = threading.Barrier(threads)
    outcomes: list[str] = []

    def send(number: int) -> None:
        from django.db import connection as own_connection

        start.wait()
        try:
            message_send(user=user, plan=plan, conversation_id=None, content=f"message {number}")
            outcomes.append("accepted")
        except QuotaExceeded:
            outcomes.append("refused")
        except Exception as error:  # reported, so the test shows it
            outcomes.append(f"error: {error!r}")
        finally:
            own_connection.close()

    workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {
        "limit": plan.messages_per_window,
        "accepted": outcomes.count("accepted"),
        "refused": outcomes.count("refused"),
        "errors": [o for o in outcomes if o.startswith("error")],
        "user_messages": Message.objects.filter(conversation__owner=user, role="user").count(),
        "quota_uses": QuotaUse.objects.filter(user=user).count(),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
