"""Throttles against guessing passwords and farming accounts (each new account is a fresh Free
quota), counted in Django's cache: Redis shared by every web process in the distributed mode,
the process's memory in the embedded one (a file cache with locked counters, chatsite/filecache.py,
when it runs several web processes).

The rules, each over a window that starts at the first event counted:
- log-in failures per account (LOGIN_FAILURES_PER_ACCOUNT in LOGIN_LOCKOUT_S): the account is
  locked for the rest of the window, its right password included;
- log-in failures per client address (LOGIN_FAILURES_PER_IP in LOGIN_LOCKOUT_S), for one
  address trying many accounts;
- accounts created per client address (SIGNUPS_PER_IP in SIGNUP_WINDOW_S).
A cache that cannot be reached counts nothing and locks nothing (logged): an outage must not
lock everyone out.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


class Throttled(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def login_check(*, username: str, ip: str) -> None:
    """Raise Throttled when this account or this address may not try to log in now."""
    for key, limit in _login_keys(username, ip):
        _check(key, limit, settings.LOGIN_LOCKOUT_S,
               "Too many failed log-ins. For your safety, logging in is paused; try again in {wait}.")


def login_failed(*, username: str, ip: str) -> None:
    for key, _ in _login_keys(username, ip):
        _count(key, settings.LOGIN_LOCKOUT_S)


def login_succeeded(*, username: str) -> None:
    """A right password clears the account's failures (not the address's)."""
    try:
        cache.delete_many(_window_keys(_account_key(username)))
    except Exception as error:
        logger.warning("throttle: cache unreachable: %r", error)


def signup_check(*, ip: str) -> None:
    _check(f"throttle:signup:{ip}", settings.SIGNUPS_PER_IP, settings.SIGNUP_WINDOW_S,
           "Too many accounts were created from your network. Try again in {wait}.")


def signup_done(*, ip: str) -> None:
    _count(f"throttle:signup:{ip}", settings.SIGNUP_WINDOW_S)


def client_ip(request) -> str:
    """The client's address as the server sees it (Daphne's --proxy-headers puts the proxy's
    X-Forwarded-For there)."""
    return request.META.get("REMOTE_ADDR") or "unknown"


def _login_keys(username: str, ip: str) -> list[tuple[str, int]]:
    return [(_account_key(username), settings.LOGIN_FAILURES_PER_ACCOUNT),
            (f"throttle:login-ip:{ip}", settings.LOGIN_FAILURES_PER_IP)]


def _account_key(username: str) -> str:
    # Hashed: a username is whatever was typed, and cache keys must be short and plain.
    return "throttle:login-account:" + hashlib.sha256(username.strip().lower().encode()).hexdigest()


def _window_keys(key: str) -> list[str]:
    return [key, key + ":since"]


def _check(key: str, limit: int, window_s: float, message: str) -> None:
    try:
        found = cache.get_many(_window_keys(key))
    except Exception as error:
        logger.warning("throttle: cache unreachable: %r", error)
        return
    if found.get(key, 0) >= limit:
        since = found.get(key + ":since", time.time())
        retry_after = max(1, math.ceil(since + window_s - time.time()))
        raise Throttled(message.format(wait=_minutes(retry_after)), retry_after)


def _count(key: str, window_s: float) -> None:
    timeout = math.ceil(window_s)
    try:
        cache.add(key + ":since", time.time(), timeout)
        cache.add(key, 0, timeout)
        cache.incr(key)
    except ValueError:  # the window ended between add and incr
        cache.set(key, 1, timeout)
    except Exception as error:
        logger.warning("throttle: cache unreachable: %r", error)


def _minutes(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
