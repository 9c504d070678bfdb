"""Usage records: one per generation; a generation recorded again is overwritten."""
import pytest

from billing.models import UsageRecord
from billing.usage import usage_record_many

pytestmark = pytest.mark.django_db


def record(user, message_id, **changes):
    fields = {"plan": "free", "source": "api", "status": "done", "prompt_tokens": 12, "completion_tokens": 30,
              "queue_wait_s": 0.5, "ttft_s": 0.1, "decode_s": 1.2, "compute_s": 0.4, **changes}
    written = UsageRecord(user=user, message_id=message_id, **fields)
    usage_record_many(records=[written])
    return written


def test_a_generation_is_recorded_once_and_recording_it_again_overwrites_all_but_when(make_user):
    first_user, second_user = make_user(), make_user()
    record(first_user, 7)
    record(first_user, 8, completion_tokens=5)
    created = UsageRecord.objects.get(message_id=7).created_at

    written = record(second_user, 7, plan="plus", status="stopped", completion_tokens=31, ttft_s=None, compute_s=0.9)

    assert UsageRecord.objects.filter(message_id=7).count() == 1
    stored = UsageRecord.objects.get(message_id=7)
    assert (stored.user, stored.plan, stored.status, stored.completion_tokens, stored.ttft_s, stored.compute_s) == (
        second_user, "plus", "stopped", 31, None, 0.9)
    assert stored.created_at == created
    assert (written.plan, written.completion_tokens) == ("plus", 31)
    assert UsageRecord.objects.get(message_id=8).completion_tokens == 5  # the other untouched
