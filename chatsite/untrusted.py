"""Input from users and API clients, parsed with bounds: JSON no deeper than the protocols need,
text that every database can store.

Python's json module recurses once per nesting level, so a body of a few kilobytes of `[[[[…`
raises RecursionError (a server error) or, just under the limit, costs a deep parse for
nothing. PostgreSQL refuses NUL characters in text, and no UTF-8 database can store a lone
surrogate that JSON's `\\ud800` escape produces. The model's text is no safer: a byte-level
vocabulary has a token for the NUL byte, and a sampled answer can hold it.
"""
from __future__ import annotations

import json
import re

MAX_JSON_DEPTH = 32  # the deepest real frame or body: a message list of content parts is 4

# A JSON string token, or a bracket outside one.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class UntrustedInputError(ValueError):
    """The input is refused; the message says why, for people."""


def json_depth(text: str) -> int:
    """How deeply `text`'s arrays and objects nest (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def json_loads(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH):
    """`json.loads` for untrusted input: UntrustedInputError when it is not JSON or nests deeper
    than `max_depth`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UntrustedInputError("The body is not UTF-8 text.") from None
    # Counting brackets is cheap; the exact depth is worked out only where it could be too deep.
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise UntrustedInputError(f"The JSON nests deeper than {max_depth} levels.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise UntrustedInputError("The body is not valid JSON.") from None


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as a message, or None when it can."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def text_storable(text: str) -> str:
    """What the model wrote, as every database stores it: each NUL character becomes U+FFFD,
    the replacement character (decoded tokens are valid Unicode otherwise). One character for
    one, so offsets into the streamed text stay those of the saved one."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
