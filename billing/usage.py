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
    """Record generation `message_id`; recording it again overwrites all but `created_at` (a
    task run twice). One INSERT … ON CONFLICT statement: `update_or_create` took six (two
    savepoints, a SELECT … FOR UPDATE, the INSERT) inside the reply's closing transaction,
    which on SQLite holds the one writer's lock."""
    fields = {
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
    }
    record = UsageRecord(message_id=message_id, **fields)
    usage_record_many(records=[record])
    return record


def usage_record_many(*, records: list[UsageRecord]) -> None:
    """`usage_record` for unsaved records, in one statement."""
    if records:
        UsageRecord.objects.bulk_create(
            records, update_conflicts=True, unique_fields=["message_id"], update_fields=_OVERWRITTEN
        )


_OVERWRITTEN = ["user", "plan", "source", "status", "prompt_tokens", "completion_tokens", "queue_wait_s", "ttft_s",
                "decode_s", "compute_s"]
