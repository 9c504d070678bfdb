"""The output stage: token ids in, each request's text and FinishEvent out, in order, stop
strings found there."""
import pytest

from inference import FinishEvent, RequestStatus, SamplingParams, TokenEvent
from inference.detokenize import IncrementalDetokenizer
from inference.outputs import OutputStage, find_stop, stop_prefix_length
from inference.requests import Request
from tests.inference.test_engine import collect


@pytest.fixture(scope="module")
def tokenizer(tiny_engine_config):
    from inference.loading import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source(tiny_engine_config.model))


class Engine:
    """What the engine does around the stage: appends each token, then records it; ends a
    request by setting its status and reason, then records that."""

    def __init__(self, tokenizer) -> None:
        self.stopped: list[tuple[int, int]] = []
        self.batches = 0
        self.stage = OutputStage(tokenizer, on_stop=self.on_stop, after_batch=self.after_batch)

    def on_stop(self, request, kept):
        self.stopped.append((request.id, kept))

    def after_batch(self):
        self.batches += 1

    def generate(self, request, ids, *, reason="length", step_size=1):
        for start in range(0, len(ids), step_size):
            for token in ids[start : start + step_size]:
                request.output_ids.append(token)
                request.usage.completion_tokens = len(request.output_ids)
                self.stage.token(request, token)
            self.stage.flush()
        request.status, request.finish_reason = RequestStatus.DONE, reason
        self.stage.finish(request)
        self.stage.flush()


def events_of(request):
    events = collect(request, 10)
    assert None not in events
    return [e for e in events if isinstance(e, TokenEvent)], events[-1]


def test_text_arrives_whole_and_in_order_with_the_finish_last(tokenizer):
    engine = Engine(tokenizer)
    text = "Héllo, wörld! 東京は日本の首都です。 🙂 and more"
    ids = tokenizer.encode(text, add_special_tokens=False)
    request = Request(prompt_ids=[1], params=SamplingParams(max_new_tokens=100))
    engine.generate(request, ids)
    engine.stage.flush()
    tokens, finish = events_of(request)
    assert "".join(t.text for t in tokens) == text
    assert [t.index for t in tokens] == sorted(t.index for t in tokens) and tokens[0].index == 0
    assert isinstance(finish, FinishEvent) and (finish.status, finish.reason) == (RequestStatus.DONE, "length")
    assert finish.usage.completion_tokens == len(ids) and engine.stopped == []
    assert engine.batches >= 1


def test_a_stop_string_cuts_the_answer_and_tokens_past_it_are_dropped(tokenizer):
    engine = Engine(tokenizer)
    text = "The answer is forty two. END of it, and then more words after the end"
    ids = tokenizer.encode(text, add_special_tokens=False)
    request = Request(prompt_ids=[1], params=SamplingParams(max_new_tokens=100, stop=("END", "never")))
    # The engine went on past the stop and ended the request for its length before hearing.
    engine.generate(request, ids, reason="length", step_size=3)
    engine.stage.flush()
    tokens, finish = events_of(request)
    assert "".join(t.text for t in tokens) == "The answer is forty two. "
    assert all("END" not in t.text and "E" not in t.text for t in tokens)  # a possible start is held back
    assert (finish.status, finish.reason) == (RequestStatus.DONE, "stop_string")
    [(request_id, kept)] = engine.stopped
    assert request_id == request.id
    assert tokenizer.decode(ids[:kept]).endswith("END") or "END" in tokenizer.decode(ids[:kept])
    assert request.output_ids == ids[:kept] and finish.usage.completion_tokens == kept < len(ids)


def test_a_held_back_tail_that_never_became_a_stop_string_is_sent_at_the_end(tokenizer):
    engine = Engine(tokenizer)
    ids = tokenizer.encode("It ends with EN", add_special_tokens=False)
    request = Request(prompt_ids=[1], params=SamplingParams(max_new_tokens=100, stop=("END",)))
    engine.generate(request, ids, reason="eos")
    engine.stage.flush()
    tokens, finish = events_of(request)
    assert "".join(t.text for t in tokens) == "It ends with EN" and finish.reason == "eos"


def test_a_best_of_candidate_is_never_streamed_and_its_parent_text_is_sent_as_given(tokenizer):
    engine = Engine(tokenizer)
    parent = Request(prompt_ids=[1], params=SamplingParams(max_new_tokens=10))
    candidate = Request(prompt_ids=[1], params=parent.params, parent=parent)
    engine.generate(candidate, tokenizer.encode("candidate text", add_special_tokens=False))
    engine.stage.text(parent, "chosen text")
    parent.status, parent.finish_reason = RequestStatus.DONE, "length"
    engine.stage.finish(parent)
    engine.stage.flush()
    assert events_of(candidate)[0] == []
    tokens, finish = events_of(parent)
    assert [t.text for t in tokens] == ["chosen text"] and finish.reason == "length"


def test_the_window_decoder_of_a_tokenizer_without_a_fast_backend_gives_the_same_text(tokenizer):
    class Slow:  # only `decode`, as a pure-Python tokenizer has
        def decode(self, ids, skip_special_tokens=True):
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    text = "Spaces  and\nnew lines, 東京 🙂."
    ids = tokenizer.encode(text, add_special_tokens=False)
    fast, slow = IncrementalDetokenizer(tokenizer), IncrementalDetokenizer(Slow())
    assert fast._stream is not None and slow._stream is None
    fast_deltas = [fast.add(i) for i in ids]
    slow_deltas = [slow.add(i) for i in ids]
    assert "".join(fast_deltas) == "".join(slow_deltas) == text
    assert all("\ufffd" not in delta for delta in fast_deltas + slow_deltas)


def test_stop_helpers():
    assert find_stop("abc STOP def", ("STOP", "xyz"), 0) == 4
    assert find_stop("abc STO", ("STOP",), 0) is None
    assert stop_prefix_length("abc STO", ("STOP",)) == 3
    assert stop_prefix_length("abc", ("STOP",)) == 0
