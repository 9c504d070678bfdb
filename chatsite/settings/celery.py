"""Celery: Redis (or any URL in CELERY_BROKER_URL) when set, else kombu's in-process memory://."""
from chatsite.settings.env import env_bool, env_int, env_str

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or env_str("REDIS_URL") or "memory://localhost/"
CELERY_RESULT_BACKEND = None  # results live in the database rows, never in Celery
CELERY_TASK_IGNORE_RESULT = True

# Queues are named here only. A worker consumes both; Plus work goes to `plus`.
CHAT_QUEUE_PLUS = "plus"
CHAT_QUEUE_FREE = "free"
CELERY_TASK_DEFAULT_QUEUE = CHAT_QUEUE_FREE
CELERY_TASK_CREATE_MISSING_QUEUES = True

# One Engine per worker process serves every task, so tasks run as threads of one process.
# Priority is the engine's job: it admits Plus first and preempts Free for it. For that to
# hold, a Plus task must reach the engine while Free tasks wait in it, so a worker has more
# task threads than the engine has batch slots (twice CHAT_MAX_RUNNING), and prefetches no
# more messages than it has free threads (prefetch 1, late acks).
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2 * env_int("CHAT_MAX_RUNNING", 32))
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith("memory://"):
    # kombu's memory transport, but the worker sleeps until a message arrives or a prefetch
    # slot frees, instead of polling (chatsite/broker.py).
    CELERY_BROKER_TRANSPORT = "chatsite.broker:Transport"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# The Celery worker runs inside the web server process when the broker is memory://.
CHATSITE_EMBEDDED_WORKER = env_bool("CHATSITE_EMBEDDED_WORKER", CELERY_BROKER_URL.startswith("memory://"))
