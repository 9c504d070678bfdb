"""Log-in and sign-up throttles, through the real pages."""
import pytest
from django.contrib.auth import get_user_model

from chatsite import throttle

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-Passw0rd!"


def log_in(client, username, password, ip="10.0.0.1"):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_an_account_is_locked_after_five_failures_even_for_the_right_password(client, make_user):
    user = make_user()
    for _ in range(5):
        assert log_in(client, user.username, "wrong").status_code == 200
    refused = log_in(client, user.username, PASSWORD)
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many failed log-ins" in refused.content.decode() and "try again in 15 minutes" in refused.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_lock_ends_with_its_window_and_a_success_clears_the_count(client, make_user, settings):
    settings.LOGIN_LOCKOUT_S = 4
    user = make_user()
    for _ in range(5):
        log_in(client, user.username, "wrong")
    assert log_in(client, user.username, PASSWORD).status_code == 429
    import time

    time.sleep(4.1)
    assert log_in(client, user.username, PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(4):
        log_in(client, user.username, "wrong")
    assert log_in(client, user.username, PASSWORD).status_code == 302  # the count started again


def test_one_address_failing_on_many_accounts_is_locked(client, make_user):
    users = [make_user() for _ in range(5)]
    for user in users:
        for _ in range(4):  # under each account's own limit
            log_in(client, user.username, "wrong", ip="10.0.0.9")
    assert log_in(client, users[0].username, PASSWORD, ip="10.0.0.9").status_code == 429
    assert log_in(client, users[0].username, PASSWORD, ip="10.0.0.10").status_code == 302  # another address


def test_sign_ups_from_one_address_are_limited_and_the_refused_one_creates_nothing(client):
    for n in range(5):
        response = client.post("/accounts/signup/", {"username": f"farm{n}", "password1": PASSWORD, "password2": PASSWORD},
                               REMOTE_ADDR="10.0.0.5")
        assert response.status_code == 302
        client.post("/accounts/logout/")
    refused = client.post("/accounts/signup/", {"username": "farm5", "password1": PASSWORD, "password2": PASSWORD},
                          REMOTE_ADDR="10.0.0.5")
    assert refused.status_code == 429 and "Too many accounts" in refused.content.decode()
    assert not get_user_model().objects.filter(username="farm5").exists()


def test_there_is_no_password_reset_without_mail(client):
    assert client.get("/accounts/password_reset/").status_code == 404


def test_many_addresses_counted_push_no_stop_flag_out_of_the_cache(settings):
    """A stop flag set before a spray of failed log-ins from many addresses is still there:
    the embedded cache makes room only far beyond them (Django's default dropped a third of
    its entries past 300)."""
    from django.core.cache import cache

    from chatsite.selectors import stop_key

    if settings.REDIS_URL:
        pytest.skip("the embedded mode's cache")
    cache.set(stop_key(999_999), True, 60)
    try:
        for n in range(400):
            throttle.login_failed(username=f"user{n}", ip=f"10.1.{n // 256}.{n % 256}")
        assert cache.get(stop_key(999_999)) is True
    finally:
        cache.clear()
