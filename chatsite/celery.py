"""The Celery app. `celery -A chatsite worker -Q plus,free` runs a GPU/CPU inference worker."""
from __future__ import annotations

import os
import threading

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

app = Celery("chatsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["chatsite"])


@worker_init.connect
@worker_process_init.connect
def _load_engine_early(**_) -> None:
    """Load the model when the worker starts rather than on its first task. In a thread:
    worker_init runs in the caller's thread, which for the embedded worker is the server's."""
    from django.conf import settings

    from inference import EngineConfig
    from inference.worker import engine_get

    config = EngineConfig(**settings.INFERENCE_ENGINE)
    threading.Thread(target=engine_get, args=(config,), name="engine-load", daemon=True).start()


@worker_shutdown.connect
def _stop_engine(**_) -> None:
    from inference.worker import engine_shutdown

    engine_shutdown()
