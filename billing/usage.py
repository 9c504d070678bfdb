"""Usage records: one row per generation, written when it ends."""
from __future__ import annotations

from billing.models import UsageRecord


def usage_record(
    *,
    user,
    message_id: int,
    plan: str,
    source: str,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    queue_wait_s: float,
    ttft_s: float | None,
    decode_s: float,
    compute_s: float,
) -> UsageRecord:
    """Record generation `message_id`; recording it again overwrites (a task run twice)."""
    record, _ = UsageRecord.objects.update_or_create(
        message_id=message_id,
        defaults={
            "user": user,
            "plan": plan,
            "source": source,
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "queue_wait_s": queue_wait_s,
            "ttft_s": ttft_s,
            "decode_s": decode_s,
            "compute_s": compute_s,
        },
    )
    return record
