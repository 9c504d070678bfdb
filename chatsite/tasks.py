from celery import shared_task
from django.db import InterfaceError, OperationalError

from chatsite.generation import reply_generate
from chatsite.titles import title_generate


# A database that refuses a connection for a moment (a full pool, a restart) must not leave
# the reply pending for ever: the task runs again. Safe, because it only claims a reply that
# is still pending; once claimed, failures end the reply as failed instead.
@shared_task(
    name="chatsite.tasks.generate_reply",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=6,
)
def generate_reply(message_id: int) -> None:
    """Generate assistant message `message_id`. Running it twice is harmless (status guard)."""
    reply_generate(message_id=message_id)


@shared_task(name="chatsite.tasks.title_conversation", ignore_result=True)
def title_conversation(conversation_id: int) -> None:
    """Ask the model for a short title for a conversation's first exchange."""
    title_generate(conversation_id=conversation_id)


@shared_task(name="chatsite.tasks.usage_roll_up", ignore_result=True)
def usage_roll_up() -> None:
    """Add the day's usage records up for the console (Celery beat runs it in the
    distributed mode; the embedded worker has a timer)."""
    from billing.rollup import usage_roll_up as roll_up

    roll_up()
