from inference.requests import Request
from inference.sampling_params import SamplingParams
from inference.scheduler import Scheduler


def request(priority=0, prompt_tokens=3):
    return Request(prompt_ids=list(range(1, prompt_tokens + 1)), params=SamplingParams(), priority=priority)


def test_admits_highest_priority_first_and_first_come_first_served_within_a_priority():
    scheduler = Scheduler(max_running=2, max_kv_tokens=1000)
    free_1, free_2, plus = request(0), request(0), request(10)
    for r in (free_1, free_2, plus):
        scheduler.add(r)
    assert scheduler.schedule().admitted == [plus, free_1]
    assert scheduler.waiting == [free_2]


def test_admits_no_more_than_the_running_cap():
    scheduler = Scheduler(max_running=1, max_kv_tokens=1000)
    first, second = request(), request()
    scheduler.add(first)
    scheduler.add(second)
    assert scheduler.schedule().admitted == [first]
    assert scheduler.schedule().admitted == []
    scheduler.retire(first)
    assert scheduler.schedule().admitted == [second]


def test_admits_no_more_than_the_kv_cap():
    scheduler = Scheduler(max_running=10, max_kv_tokens=25)
    big, small, other = request(prompt_tokens=20), request(prompt_tokens=3), request(prompt_tokens=3)
    for r in (big, small, other):
        scheduler.add(r)
    assert scheduler.schedule().admitted == [big, small]  # 21 + 4 = 25 KV tokens next step


def test_a_plus_request_preempts_the_newest_free_one_when_the_batch_is_full():
    scheduler = Scheduler(max_running=2, max_kv_tokens=1000)
    old_free, new_free = request(0), request(0)
    scheduler.add(old_free)
    scheduler.add(new_free)
    scheduler.schedule()
    new_free.output_ids = [7, 8]
    plus = request(10)
    scheduler.add(plus)
    schedule = scheduler.schedule()
    assert schedule.preempted == [new_free] and schedule.admitted == [plus]
    assert scheduler.running == [old_free, plus]
    assert scheduler.waiting == [new_free] and new_free.output_ids == [7, 8] and new_free.preemptions == 1


def test_equal_priority_never_preempts():
    scheduler = Scheduler(max_running=1, max_kv_tokens=1000)
    first, second = request(0), request(0)
    scheduler.add(first)
    scheduler.schedule()
    scheduler.add(second)
    assert scheduler.schedule().preempted == []


def test_a_preempted_request_keeps_its_place_in_line():
    scheduler = Scheduler(max_running=1, max_kv_tokens=1000)
    early, late = request(0), request(0)
    scheduler.add(early)
    scheduler.schedule()
    scheduler.add(late)
    scheduler.add(plus := request(10))
    scheduler.schedule()  # early is preempted for plus
    scheduler.retire(plus)
    assert scheduler.schedule().admitted == [early]  # ahead of late, which came after it


def test_growing_past_the_kv_cap_preempts_the_lowest_priority():
    scheduler = Scheduler(max_running=5, max_kv_tokens=20)
    plus, free = request(10, prompt_tokens=5), request(0, prompt_tokens=5)
    scheduler.add(plus)
    scheduler.add(free)
    scheduler.schedule()
    free.output_ids = list(range(10))  # 15 + 6 + 2 > 20
    schedule = scheduler.schedule()
    assert schedule.preempted == [free] and scheduler.running == [plus]


def test_cancelled_requests_are_taken_out_of_both_queues():
    scheduler = Scheduler(max_running=1, max_kv_tokens=1000)
    running, waiting, kept = request(), request(), request()
    for r in (running, waiting, kept):
        scheduler.add(r)
    scheduler.schedule()
    running.cancel()
    waiting.cancel()
    assert set(scheduler.take_cancelled()) == {running, waiting}
    assert scheduler.running == []
    assert scheduler.waiting == [kept]


def test_outranking_lists_the_waiting_requests_the_next_schedule_admits_ahead_of_running_ones():
    scheduler = Scheduler(max_running=3, max_kv_tokens=1000)
    running = [request(0), request(0), request(10)]
    for r in running:
        scheduler.add(r)
    scheduler.schedule()
    plus_1, plus_2, mid, free = request(10), request(10), request(5), request(0)
    for r in (free, mid, plus_2, plus_1):
        scheduler.add(r)
    assert scheduler.outranks_running(5) and not scheduler.outranks_running(0)
    # the two Plus requests take the two Free places; nothing below 10 is left for the 5
    assert scheduler.outranking() == [plus_2, plus_1]
    assert scheduler.schedule().admitted == [plus_2, plus_1]
    scheduler.discard(mid)
    assert scheduler.waiting[-1] is not mid and mid not in scheduler.waiting


def test_outranking_takes_free_slots_only_for_requests_above_every_running_priority():
    scheduler = Scheduler(max_running=3, max_kv_tokens=1000)
    scheduler.add(request(0))
    scheduler.schedule()
    free, plus = request(0), request(10)
    scheduler.add(free)
    assert scheduler.outranking() == []  # a Free arrival waits for the step, room or not
    scheduler.add(plus)
    assert scheduler.outranking() == [plus]


class CancelledWhileLooked(Request):
    """A request whose cancel arrives from another thread just after the scheduler first
    looked at it: the flag reads False once, then True."""

    looks = 0

    @property
    def cancel_requested(self) -> bool:
        self.looks += 1
        return self.looks > 1


def test_a_cancel_that_arrives_while_the_cancelled_are_taken_neither_loses_the_request_nor_takes_it_twice():
    scheduler = Scheduler(max_running=4, max_kv_tokens=1000)
    stopped = request()
    running = CancelledWhileLooked(prompt_ids=[1, 2, 3], params=SamplingParams())
    waiting = CancelledWhileLooked(prompt_ids=[1, 2, 3], params=SamplingParams())
    for r in (stopped, running):
        scheduler.add(r)
    scheduler.schedule()
    scheduler.add(waiting)
    scheduler.max_running = 2  # `waiting` stays in the queue
    stopped.cancel()
    assert scheduler.take_cancelled() == [stopped]  # the other two were not cancelled yet when it looked
    assert scheduler.running == [running] and scheduler.waiting == [waiting]  # still there, so still ended later
    assert set(scheduler.take_cancelled()) == {running, waiting}
    assert scheduler.running == [] and scheduler.waiting == []
