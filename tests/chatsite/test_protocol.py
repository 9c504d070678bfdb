import json

import pytest

from chatsite.protocol import ProtocolError, SendFrame, StopFrame, parse_client_frame


def parse(frame):
    return parse_client_frame(frame if isinstance(frame, str) or frame is None else json.dumps(frame), max_content_chars=10)


def test_a_send_frame_is_parsed_with_trimmed_content():
    assert parse({"type": "send", "conversation": None, "content": "  hi \n"}) == SendFrame(None, "hi")
    assert parse({"type": "send", "conversation": 5, "content": "hi"}) == SendFrame(5, "hi")


def test_a_stop_frame_is_parsed():
    assert parse({"type": "stop"}) == StopFrame()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (None, "bad_frame"),
        ("{not json", "bad_json"),
        ([1, 2], "bad_frame"),
        ({"content": "hi"}, "unknown_type"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "send", "conversation": None}, "empty_content"),
        ({"type": "send", "conversation": None, "content": "   "}, "empty_content"),
        ({"type": "send", "conversation": None, "content": 42}, "empty_content"),
        ({"type": "send", "conversation": "7", "content": "hi"}, "bad_frame"),
        ({"type": "send", "conversation": True, "content": "hi"}, "bad_frame"),
        ({"type": "send", "conversation": None, "content": "x" * 11}, "too_long"),
        ({"type": "send", "conversation": None, "content": "a\x00b"}, "bad_text"),
        ({"type": "send", "conversation": None, "content": "\ud800"}, "bad_text"),
        ('{"type": "send", "content": ' + "[" * 2000 + "]" * 2000 + "}", "bad_json"),
    ],
)
def test_bad_frames_are_refused_with_a_code_and_a_readable_message(frame, code):
    with pytest.raises(ProtocolError) as error:
        parse(frame)
    assert error.value.code == code
    assert error.value.message.endswith(".")
