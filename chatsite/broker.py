"""The embedded mode's broker: kombu's in-process memory transport, with a worker that sleeps
until there is something to take instead of polling.

kombu's memory transport looks at its queues every `polling_interval`: at its default of 1 s
a reply waits half a second on average before it starts, and at 10 ms the consumer thread
wakes 100 times a second for ever, each wake taking a core from the model mid-step. Here the consumer waits on a condition that is signalled when a message is
put on a queue or when one is acknowledged or rejected (a prefetch slot is free again), and
looks at the queues only then. Enabled by CELERY_BROKER_TRANSPORT in chatsite/settings/celery.py.
"""
from __future__ import annotations

import threading
import time
from queue import Empty

from kombu.transport import memory


class _Changes:
    """A counter of events a waiting consumer must look at. Read it, look at the queues,
    then wait only while it has not moved: a change made while looking is never missed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.count = 0

    def mark(self) -> None:
        with self._condition:
            self.count += 1
            self._condition.notify_all()

    def wait_past(self, seen: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self.count != seen, timeout)


_changes = _Changes()


class Channel(memory.Channel):
    def _put(self, queue, message, **kwargs):
        super()._put(queue, message, **kwargs)
        _changes.mark()

    def _put_fanout(self, exchange, message, routing_key=None, **kwargs):
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _changes.mark()

    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple)
        _changes.mark()

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue)
        _changes.mark()


class Transport(memory.Transport):
    Channel = Channel

    def drain_events(self, connection, timeout=None):
        """Deliver one message; wait for a change while there is none (socket.timeout after
        `timeout` seconds, as kombu's own transports do)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = _changes.count
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError() from None
                _changes.wait_past(seen, remaining)
