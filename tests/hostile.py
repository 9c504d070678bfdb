"""Hostile input for the fuzz tests: JSON of every shape, text that databases refuse, nesting
past any limit, and near-valid frames and bodies with one thing wrong. Hypothesis strategies
for the suite's bounded fuzz test, and a seeded generator of the same kinds for `make fuzz`."""
from __future__ import annotations

import json
import random

from hypothesis import strategies as st

NASTY_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "\udfff tail", "é" * 50, "🙂" * 20, "\u202e", "<script>alert(1)</script>",
              "x" * 5000, "\n" * 100, "null", "[]", "{}", "\\", '"']
ROLES = ["user", "assistant", "system", "developer", "tool", "", "USER", None, 1, ["user"], {"role": "user"}]


def json_values(max_leaves: int = 20):
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) \
        | st.text() | st.sampled_from(NASTY_TEXT)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                        max_leaves=max_leaves)


def socket_frames():
    """A socket frame as text: random JSON, a send frame with one field wrong, or raw text."""
    near_valid = st.fixed_dictionaries({
        "type": st.sampled_from(["send", "stop", "resume", "", None, 7]) | st.text(max_size=8),
        "conversation": st.none() | st.integers() | st.text(max_size=5) | st.booleans(),
        "content": st.sampled_from(NASTY_TEXT) | st.text() | json_values(5),
    })
    encoded = (json_values() | near_valid).map(lambda value: json.dumps(value))
    return encoded | st.text() | st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth)


def api_bodies(model: str):
    """A /v1/chat/completions body as bytes, mostly near-valid so the checks past parsing run."""
    message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.sampled_from(NASTY_TEXT) | json_values(5)})
    near_valid = st.fixed_dictionaries(
        {"model": st.sampled_from([model, "", None, "gpt-4o", 1]), "messages": st.lists(message, max_size=5) | json_values(5)},
        optional={
            "temperature": json_values(1) | st.floats(), "top_p": json_values(1), "top_k": json_values(1) | st.integers(),
            "seed": st.integers() | json_values(1), "max_tokens": st.integers() | json_values(1), "n": st.integers(-2, 5),
            "stop": json_values(3), "stream": json_values(1), "repetition_penalty": st.floats() | json_values(1),
            "stream_options": json_values(3), "best_of": st.integers(-1, 20), "tools": json_values(2),
        },
    )
    encoded = (near_valid | json_values()).map(lambda value: json.dumps(value).encode())
    return encoded | st.binary(max_size=200) | st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth)


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**64, 1e-300, 1e308, float("inf")])
    if kind == 2:
        return rng.choice(NASTY_TEXT)
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20)))
    if kind == 4:
        return rng.randrange(-10, 10**6)
    if kind in (5, 6):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "content", "role", "model", "messages", "x"]): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_frame(rng: random.Random) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        return json.dumps(random_json(rng))
    if choice == 1:
        return "[" * rng.randrange(1, 5000) + "]" * rng.randrange(1, 5000)
    if choice == 2:
        return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(40)))
    frame = {"type": rng.choice(["send", "send", "stop", "dance", None]), "conversation": rng.choice([None, None, 0, -1, "1", 10**20]),
             "content": rng.choice([*NASTY_TEXT, "Hello", "What is 2+2?", random_json(rng)])}
    return json.dumps(frame)


def random_body(rng: random.Random, model: str) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return json.dumps(random_json(rng)).encode()
    if choice == 1:
        return b"[" * rng.randrange(1, 5000) + b'"' + bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
    body = {"model": rng.choice([model, model, model, "gpt-4o", None]),
            "messages": [{"role": rng.choice(ROLES), "content": rng.choice([*NASTY_TEXT, "Hi"])} for _ in range(rng.randrange(4))]}
    for name in rng.sample(["temperature", "top_p", "top_k", "seed", "max_tokens", "n", "stop", "repetition_penalty", "best_of", "tools"],
                           rng.randrange(4)):
        body[name] = random_json(rng)
    return json.dumps(body).encode()
