"""A Request's reading side, without an engine."""
import threading

from inference import FinishEvent, SamplingParams, TokenEvent
from inference.requests import Request, RequestStatus


def test_wait_finished_returns_false_while_running_and_wakes_when_it_ends():
    request = Request(prompt_ids=[1, 2], params=SamplingParams())
    request.emit(TokenEvent(text="Hi", index=0))
    assert request.wait_finished(timeout=0.01) is False
    threading.Timer(0.05, request.finish, args=(RequestStatus.DONE, "eos")).start()
    assert request.wait_finished(timeout=30) is True
    events = request.drain()
    assert events[0] == TokenEvent(text="Hi", index=0)
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "eos"


def test_next_event_returns_none_when_nothing_comes():
    request = Request(prompt_ids=[1], params=SamplingParams())
    assert request.next_event(timeout=0.01) is None
    request.emit(TokenEvent(text="a", index=0))
    assert request.next_event(timeout=0.01) == TokenEvent(text="a", index=0)
