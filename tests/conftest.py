"""Shared fixtures: a tiny model for fast generation, users, and the process's engine."""
from __future__ import annotations

import time

import pytest

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_engine_config(tiny_model_dir):
    from inference import EngineConfig

    return EngineConfig(model=tiny_model_dir, dtype="fp32", max_running=8)


@pytest.fixture(scope="session", autouse=True)
def _worker_uses_tiny_model(tiny_model_dir, django_settings_session):
    """Every engine this test process loads through settings is the tiny model."""
    django_settings_session.INFERENCE_ENGINE = {
        **django_settings_session.INFERENCE_ENGINE,
        "model": tiny_model_dir,
        "dtype": "fp32",
    }
    # The embedded worker's lease sweeper would send other tests' lapsed replies to the queue
    # in the background; tests of the sweeper run it themselves (tests/chatsite/test_leases.py).
    django_settings_session.CHAT_LEASE_SWEEP_S = 3600
    # Titles written by the model arrive on every socket of the user after the first answer;
    # tests of other frames would meet them (tests/chatsite/test_titles.py turns them on).
    django_settings_session.CHAT_MODEL_TITLES = False
    # The embedded worker's roll-up timer would rewrite the console's tables under their tests.
    django_settings_session.USAGE_ROLLUP_INTERVAL_S = 0
    # Django's own PBKDF2 takes ~0.4 s a password here, by design; tests make hundreds of users
    # (Django's advice for test settings). The servers the end-to-end tests start keep PBKDF2.
    django_settings_session.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    yield
    from inference.worker import engine_shutdown

    engine_shutdown()


@pytest.fixture(scope="session")
def django_settings_session():
    from django.conf import settings

    return settings


@pytest.fixture
def make_user(django_user_model):
    counter = iter(range(1, 10_000))

    def make(username: str | None = None, **extra):
        return django_user_model.objects.create_user(
            username=username or f"user{next(counter)}-{time.monotonic_ns()}", password="a-long-Passw0rd!", **extra
        )

    return make


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Stop flags live in the cache, keyed by message id; ids repeat between tests."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def slow_engine(tiny_engine_config):
    """The tiny model slowed to 20 ms a token, so a stop lands mid-answer."""
    from inference import Engine
    from inference.worker import engine_set

    engine = Engine.load(tiny_engine_config)
    decode = engine.runner.decode

    def slow_decode(*args, **kwargs):
        time.sleep(0.02)
        return decode(*args, **kwargs)

    engine.runner.decode = slow_decode
    engine_set(engine)
    yield engine
    engine_set(None)
    engine.shutdown()


@pytest.fixture
def sampling_fails_for_seed(monkeypatch):
    """The engine's samplers raise, as they did on NaN probabilities, for requests with this
    seed: the batched one for any batch holding one, the per-row one for that row."""
    from inference import engine as engine_module

    doomed_seed = 666
    real_sample = engine_module.sample

    def sample(logits, params, *args, **kwargs):
        if params.seed == doomed_seed:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real_sample(logits, params, *args, **kwargs)

    real_sample_batch = engine_module.sample_batch

    def sample_batch(logits, params, *args, **kwargs):
        if any(p.seed == doomed_seed for p in params):
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real_sample_batch(logits, params, *args, **kwargs)

    monkeypatch.setattr(engine_module, "sample", sample)
    monkeypatch.setattr(engine_module, "sample_batch", sample_batch)
    return doomed_seed
