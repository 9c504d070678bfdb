"""API keys: create (the key is shown once), revoke, and authenticate a presented key."""
from __future__ import annotations

import datetime
import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from billing.models import ApiKey

KEY_PREFIX = "cs-"
MAX_ACTIVE_KEYS = 20
LAST_USED_RESOLUTION = datetime.timedelta(minutes=1)


class ApiKeyError(ValueError):
    """A key request that is refused, with a message for the user."""


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def api_key_create(*, user, name: str) -> tuple[ApiKey, str]:
    """Create a key for `user`; return the row and the key itself, which is never stored."""
    name = name.strip()
    if not name:
        raise ApiKeyError("Give the key a name, so you can tell it apart later.")
    if len(name) > 100:
        raise ApiKeyError("Key names have at most 100 characters.")
    if ApiKey.objects.select_for_update().filter(user=user, revoked_at__isnull=True).count() >= MAX_ACTIVE_KEYS:
        raise ApiKeyError(f"You have {MAX_ACTIVE_KEYS} active keys; revoke one first.")
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(user=user, name=name, prefix=raw_key[:10], digest=_digest(raw_key))
    return key, raw_key


def api_key_revoke(*, user, key_id: int) -> bool:
    """Revoke one of `user`'s keys; False if it is not theirs or already revoked."""
    return bool(
        ApiKey.objects.filter(id=key_id, user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    )


def api_key_authenticate(*, raw_key: str):
    """The active user owning `raw_key`, or None. Records when the key was last used."""
    if not raw_key.startswith(KEY_PREFIX):
        return None
    key = (
        ApiKey.objects.select_related("user")
        .filter(digest=_digest(raw_key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if key is None:
        return None
    now = timezone.now()
    # To the minute: a write per call would take SQLite's one write lock on every request.
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(id=key.id).update(last_used_at=now)
    return key.user


def api_key_list(*, user) -> list[ApiKey]:
    return list(ApiKey.objects.filter(user=user))
