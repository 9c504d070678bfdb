from inference.requests import Request
from inference.sampling import SamplingParams
from inference.scheduler import Scheduler


def request(priority=0):
    return Request(prompt_ids=[1, 2, 3], params=SamplingParams(), priority=priority)


def test_admits_highest_priority_first_and_first_come_first_served_within_a_priority():
    scheduler = Scheduler(max_running=2)
    free_1, free_2, plus = request(0), request(0), request(10)
    for r in (free_1, free_2, plus):
        scheduler.add(r)
    assert scheduler.admit() == [plus, free_1]
    assert scheduler.waiting == [free_2]


def test_admits_no_more_than_the_running_cap():
    scheduler = Scheduler(max_running=1)
    first, second = request(), request()
    scheduler.add(first)
    scheduler.add(second)
    assert scheduler.admit() == [first]
    assert scheduler.admit() == []
    scheduler.retire(first)
    assert scheduler.admit() == [second]


def test_cancelled_requests_are_taken_out_of_both_queues():
    scheduler = Scheduler(max_running=1)
    running, waiting, kept = request(), request(), request()
    for r in (running, waiting, kept):
        scheduler.add(r)
    scheduler.admit()
    running.cancel()
    waiting.cancel()
    assert set(scheduler.take_cancelled()) == {running, waiting}
    assert scheduler.running == []
    assert scheduler.waiting == [kept]
