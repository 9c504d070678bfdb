"""chatsite.live: the text of a reply as far as it has streamed, from its pieces, is always a
true beginning of the reply, even where this process missed some of the pieces."""
import itertools

import pytest

from chatsite import live

_ids = itertools.count(10_000)


@pytest.fixture
def reply_id(settings):
    if settings.REDIS_URL:
        pytest.skip("the embedded mode's memory store")
    message_id = next(_ids)
    yield message_id
    live.live_clear(message_id)


def test_pieces_make_the_text_from_its_start(reply_id):
    live.live_reset(reply_id, "")
    for offset, piece in [(0, "Hello"), (5, ", "), (7, "world")]:
        live.live_append(reply_id, offset, piece)
    assert live.live_text(reply_id) == "Hello, world"
    assert live.live_text(reply_id, "Hello") == "Hello, world"


def test_a_reply_taken_over_starts_again_from_its_saved_text(reply_id):
    for offset, piece in [(0, "Hello"), (5, ", wor")]:
        live.live_append(reply_id, offset, piece)
    live.live_reset(reply_id, "Hello, ")  # the new worker resumes from the last save
    live.live_append(reply_id, 7, "there")
    assert live.live_text(reply_id) == "Hello, there"


def test_pieces_past_a_hole_are_not_taken_for_the_start_of_the_text(reply_id):
    # A web process that began listening after the reply's first frames: no reset, no start.
    live.live_apply([(f"gen.{reply_id}", {"type": "gen.token", "offset": 12, "text": " again"}),
                     (f"gen.{reply_id}", {"type": "gen.token", "offset": 18, "text": "!"})])
    assert live.live_text(reply_id) == ""
    # With the row's saved text reaching the hole, the pieces carry it on.
    assert live.live_text(reply_id, "Hello, world") == "Hello, world again!"
    assert live.live_text(reply_id, "Hello, wo") == "Hello, wo"


def test_an_ended_reply_has_no_live_text(reply_id):
    live.live_append(reply_id, 0, "Hi")
    live.live_clear(reply_id)
    assert live.live_text(reply_id) == ""
