"""The embedded broker: a consumer sleeps until a message arrives or a prefetch slot frees."""
import socket
import threading
import time
import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from chatsite import broker


@pytest.fixture
def connection():
    with Connection("memory://localhost/", transport="chatsite.broker:Transport") as connection:
        yield connection


def _queue() -> Queue:
    name = f"test-{uuid.uuid4().hex}"  # the memory transport's state is global to the process
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _drain_in_thread(connection, timeout: float) -> dict:
    """Run drain_events in a thread; the dict gets `returned_after_s` or `timed_out_after_s`."""
    outcome: dict = {}
    started = time.monotonic()

    def drain():
        try:
            connection.drain_events(timeout=timeout)
            outcome["returned_after_s"] = time.monotonic() - started
        except TimeoutError:
            outcome["timed_out_after_s"] = time.monotonic() - started

    thread = threading.Thread(target=drain)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_a_waiting_consumer_gets_a_message_as_soon_as_it_is_put(connection):
    queue = _queue()
    received = []
    channel = connection.channel()
    Consumer(channel, [queue], callbacks=[lambda body, message: (received.append(body), message.ack())]).consume()
    waiting = _drain_in_thread(connection, timeout=5.0)
    time.sleep(0.2)  # the consumer is asleep now, with nothing to take
    Producer(connection.channel()).publish({"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key,
                                           declare=[queue])
    waiting["thread"].join(5.0)
    assert received == [{"n": 1}]
    assert waiting["returned_after_s"] < 1.0  # not after the 5 s timeout


def test_a_consumer_at_its_prefetch_limit_takes_the_next_message_once_one_is_acknowledged(connection):
    queue = _queue()
    messages = []
    channel = connection.channel()
    channel.basic_qos(prefetch_size=0, prefetch_count=1)
    Consumer(channel, [queue], callbacks=[lambda body, message: messages.append(message)]).consume()
    producer = Producer(connection.channel())
    for n in (1, 2):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
    connection.drain_events(timeout=1.0)
    assert [m.payload for m in messages] == [{"n": 1}]

    waiting = _drain_in_thread(connection, timeout=5.0)
    time.sleep(0.3)
    assert len(messages) == 1  # the prefetch slot is taken: the second message waits
    messages[0].ack()
    waiting["thread"].join(5.0)
    assert [m.payload for m in messages] == [{"n": 1}, {"n": 2}]
    assert waiting["returned_after_s"] < 1.0


def test_an_idle_consumer_does_not_poll_and_times_out_on_time(monkeypatch):
    # kombu's memory transport would look at its queues every polling_interval: 50 times here
    connection = Connection("memory://localhost/", transport="chatsite.broker:Transport",
                            transport_options={"polling_interval": 0.01})
    queue = _queue()
    Consumer(connection.channel(), [queue], callbacks=[lambda body, message: message.ack()]).consume()
    transport = connection.transport
    looks = []
    original = transport.cycle.get
    monkeypatch.setattr(transport.cycle, "get", lambda *args, **kwargs: (looks.append(1), original(*args, **kwargs))[1])
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        connection.drain_events(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.5
    assert len(looks) <= 2
    connection.release()


def test_a_change_made_while_the_consumer_looks_is_not_missed():
    changes = broker._Changes()
    seen = changes.count
    changes.mark()  # between reading the count and waiting
    started = time.monotonic()
    changes.wait_past(seen, timeout=5.0)
    assert time.monotonic() - started < 1.0
