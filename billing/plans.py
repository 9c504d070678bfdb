"""What a plan allows: input size, answer length, queue and priority."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    code: str
    name: str
    max_input_chars: int  # longest message a user may send
    max_output_tokens: int  # longest answer the model may write
    queue: str  # Celery queue the generation goes to
    priority: int  # engine priority; higher is admitted first
    max_choices: int  # most answers one request may ask for: API `n` and `best_of`


FREE = Plan(code="free", name="Free", max_input_chars=4000, max_output_tokens=512, queue="free", priority=0, max_choices=1)
PLUS = Plan(code="plus", name="Plus", max_input_chars=32000, max_output_tokens=2048, queue="plus", priority=10, max_choices=4)


def plan_for_user(user) -> Plan:
    """The plan that governs `user` now. Subscriptions arrive with the Billing issue; until a
    user has one, every account is on Free."""
    return FREE
