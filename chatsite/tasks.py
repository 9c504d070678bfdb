from celery import shared_task

from chatsite.generation import reply_generate


@shared_task(name="chatsite.tasks.generate_reply", ignore_result=True)
def generate_reply(message_id: int) -> None:
    """Generate assistant message `message_id`. Running it twice is harmless (status guard)."""
    reply_generate(message_id=message_id)
