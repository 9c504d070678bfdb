"""Django settings. Every value comes from the environment with a default that runs the
embedded mode (SQLite, in-memory channel layer, in-process worker); docs/configuration.md
lists every variable.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(env_str("CHATSITE_DATA_DIR", str(BASE_DIR / ".data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

REDIS_URL = env_str("REDIS_URL")  # set → Redis broker, channel layer and cache (distributed mode)
DATABASE_URL = env_str("DATABASE_URL")  # set → that database (PostgreSQL in distributed mode)
DEBUG = env_bool("DJANGO_DEBUG", False)
# Daphne processes `python -m chatsite.serve` (`make run`) starts on one port (chatsite/serve.py),
# and which of them this one is (set by chatsite.serve).
CHAT_WEB_PROCESSES = env_int("CHAT_WEB_PROCESSES", 1)
if CHAT_WEB_PROCESSES < 1:
    raise ImproperlyConfigured("CHAT_WEB_PROCESSES must be at least 1")
CHATSITE_WEB_INDEX = env_int("CHATSITE_WEB_INDEX", 0)
# With several web processes: one whose event loop has not answered /livez for this long is
# killed, which stops the rest for a supervisor to restart (chatsite/serve.py); 0 turns it off.
CHAT_WEB_LIVENESS_S = env_float("CHAT_WEB_LIVENESS_S", 30.0)
CHATSITE_STARTED_AT = env_float("CHATSITE_STARTED_AT", 0.0)  # when chatsite.serve started them all (Unix time)


def _secret_key() -> str:
    """A set DJANGO_SECRET_KEY wins. A single machine may keep a generated one in DATA_DIR;
    a deployment on a shared database must set it, or its web processes disagree on sessions."""
    configured = env_str("DJANGO_SECRET_KEY")
    if configured:
        return configured
    if DATABASE_URL and not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DATABASE_URL is set")
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first, so `manage.py runserver` serves ASGI with WebSockets
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chatsite",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chatsite.middleware.SecurityHeadersMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _databases() -> dict:
    if DATABASE_URL:
        database = dj_database_url.parse(DATABASE_URL)
        if database["ENGINE"] == "django.db.backends.postgresql":
            # A pool per process, not a persistent connection per thread: ASGI runs each
            # request's database work in a thread of its own, and with CONN_MAX_AGE those
            # threads' connections outlived them — 32 concurrent API calls on one embedded
            # server ran PostgreSQL out of its 100 connections and lost replies.
            database["CONN_MAX_AGE"] = 0
            database.setdefault("OPTIONS", {})["pool"] = {
                "min_size": 1,
                "max_size": env_int("DATABASE_POOL_SIZE", 20),  # per process
                "timeout": 30,  # seconds a thread waits for a free connection
            }
        else:
            database["CONN_MAX_AGE"] = 60
        return {"default": database}
    return {
        "default": {
            "ENGINE": "chatsite.sqlite",  # Django's, writers queued in-process (chatsite/sqlite/base.py)
            "NAME": DATA_DIR / "db.sqlite3",
            # Opening a connection costs the GIL milliseconds (Django registers ~50 SQL
            # functions on each): a connection per thread, kept, not one per query batch.
            "CONN_MAX_AGE": 60,
            # WAL lets the in-process worker write while pages read; IMMEDIATE avoids
            # "database is locked" when two threads upgrade read transactions at once.
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 20},
            # Tests use a file too: threads sharing an in-memory database fail on table locks.
            "TEST": {"NAME": str(DATA_DIR / "test-db.sqlite3")},
        }
    }


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The embedded caches hold stop flags and throttle counts, which must not be dropped to make
# room: Django's default of 300 entries, past which it deletes a third (the file cache at
# random), was reached by a few hundred addresses failing to log in. The bound stays, for memory
# and disk: 50,000 entries are some MB.
_EMBEDDED_CACHE_OPTIONS = {"MAX_ENTRIES": 50_000}
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
elif CHAT_WEB_PROCESSES > 1:  # the embedded mode over several processes: one cache they all read
    CACHES = {"default": {"BACKEND": "chatsite.filecache.SharedFileCache",
                          "LOCATION": str(DATA_DIR / "cache"), "OPTIONS": _EMBEDDED_CACHE_OPTIONS}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                          "OPTIONS": _EMBEDDED_CACHE_OPTIONS}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve straight from static/ without a collectstatic step

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "stripe": {"level": "WARNING"}},  # stripe logs each request at INFO
}

from chatsite.settings.billing import *  # noqa: E402, F403
from chatsite.settings.celery import *  # noqa: E402, F403
from chatsite.settings.channels import *  # noqa: E402, F403
from chatsite.settings.console import *  # noqa: E402, F403
from chatsite.settings.inference import *  # noqa: E402, F403
from chatsite.settings.security import *  # noqa: E402, F403

if DATABASES["default"]["ENGINE"] == "chatsite.sqlite":
    # Celery's Django fix-up closes every connection of the task's thread before and after
    # each task, so each reply opened a new SQLite connection (milliseconds of GIL for the
    # ~50 SQL functions Django registers). Kept instead; CONN_MAX_AGE still retires them
    # (chatsite/generation.py). Not with PostgreSQL: there closing is handing the pooled
    # connection back, which another task thread is waiting for.
    CELERY_DB_REUSE_MAX = 1_000_000
