"""Usage records: one row per generation, written when it ends."""
from __future__ import annotations

from billing.models import UsageRecord


def usage_record_many(*, records: list[UsageRecord]) -> None:
    """Save unsaved usage records, one per generation; recording a generation again
    overwrites all but `created_at` (a task run twice). One INSERT … ON CONFLICT statement:
    `update_or_create` took six a record (two savepoints, a SELECT … FOR UPDATE, the INSERT)
    inside the reply's closing transaction, which on SQLite holds the one writer's lock."""
    if records:
        UsageRecord.objects.bulk_create(
            records, update_conflicts=True, unique_fields=["message_id"], update_fields=_OVERWRITTEN
        )


_OVERWRITTEN = ["user", "plan", "source", "status", "prompt_tokens", "completion_tokens", "queue_wait_s", "ttft_s",
                "decode_s", "compute_s"]
