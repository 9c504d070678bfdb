"""A worker takes Plus work from the broker before Free work queued earlier, on a real Redis."""
import kombu
import pytest
import redis
from celery import Celery

from billing.plans import FREE, PLUS, plan_get
from chatsite.celery import broker_priority
from chatsite.titles import TITLE_PRIORITY

REDIS_URL = "redis://127.0.0.1:6379/8"  # a database of its own, emptied before and after


@pytest.fixture
def broker(settings):
    settings.CELERY_BROKER_URL = REDIS_URL
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield Celery("broker-priority-test", broker=REDIS_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()


def test_on_redis_a_worker_takes_plus_work_before_free_work_queued_earlier(broker):
    free, plus = plan_get(FREE), plan_get(PLUS)
    sent = [("free", free), ("free", free), ("title", free), ("plus", plus), ("free", free), ("plus", plus)]
    for number, (kind, plan) in enumerate(sent):
        priority = TITLE_PRIORITY if kind == "title" else plan.priority
        broker.send_task("chatsite.tasks.generate_reply", args=[f"{kind} {number}"], queue=plan.queue,
                         priority=broker_priority(priority))
    taken = []
    with kombu.Connection(REDIS_URL) as connection:
        # As a worker consumes: both queues, one message at a time, the Free queue named first.
        queues = [kombu.Queue(name, kombu.Exchange(name), routing_key=name) for name in ("free", "plus")]
        with connection.Consumer(queues, prefetch_count=1,
                                 callbacks=[lambda body, message: (taken.append(body[0][0]), message.ack())]):
            while len(taken) < len(sent):
                connection.drain_events(timeout=5)
    assert taken[:2] == ["plus 3", "plus 5"]
    assert sorted(taken[2:]) == ["free 0", "free 1", "free 4", "title 2"]


def test_the_order_is_the_engines_where_the_broker_takes_the_highest_number_first(settings):
    settings.CELERY_BROKER_URL = "amqp://guest@127.0.0.1//"
    assert broker_priority(plan_get(PLUS).priority) > broker_priority(plan_get(FREE).priority) >= broker_priority(-1)
    settings.CELERY_BROKER_URL = "rediss://cache.example:6380/0"
    assert broker_priority(plan_get(PLUS).priority) < broker_priority(plan_get(FREE).priority)
