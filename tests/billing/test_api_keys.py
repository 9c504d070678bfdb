"""API keys: only a digest is stored, revoked keys stop working, last use kept to the minute."""
import datetime

import pytest
from django.utils import timezone

from billing import api_keys
from billing.api_keys import api_key_authenticate, api_key_create, api_key_revoke
from billing.models import ApiKey

pytestmark = pytest.mark.django_db


def test_a_key_authenticates_its_user_and_only_its_digest_is_stored(make_user):
    user = make_user()
    key, raw = api_key_create(user=user, name="laptop")
    assert api_key_authenticate(raw_key=raw) == user
    assert raw not in (key.digest, key.prefix) and len(key.digest) == 64
    assert api_key_authenticate(raw_key=raw + "x") is None
    assert api_key_revoke(user=user, key_id=key.id)
    assert api_key_authenticate(raw_key=raw) is None


def test_last_use_is_written_at_most_once_a_minute(make_user, monkeypatch):
    key, raw = api_key_create(user=make_user(), name="script")
    start = timezone.now()
    for offset, expected in ((0, 0), (59, 0), (61, 61)):
        monkeypatch.setattr(api_keys.timezone, "now", lambda offset=offset: start + datetime.timedelta(seconds=offset))
        api_key_authenticate(raw_key=raw)
        assert ApiKey.objects.get(id=key.id).last_used_at == start + datetime.timedelta(seconds=expected)
