"""Turn a conversation branch into prompt token ids that fit the model's context window."""
from __future__ import annotations

import threading
import weakref

_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.Lock:
    """The lock to hold while using `tokenizer`. A fast tokenizer is one Rust object behind a
    RefCell: a call that changes its truncation or padding settings while another thread
    encodes or decodes raises "Already borrowed", so every use of a shared one takes turns."""
    with _locks_lock:
        lock = _locks.get(tokenizer)
        if lock is None:
            lock = _locks[tokenizer] = threading.Lock()
        return lock


class PromptTooLong(ValueError):
    """Even the newest message alone leaves no room for an answer."""


def build_prompt_ids(
    tokenizer, messages: list[dict[str, str]], *, context_length: int, reserve_tokens: int
) -> list[int]:
    """Apply the chat template to `messages`, dropping the oldest turns until the prompt plus
    `reserve_tokens` of answer fits in `context_length`. A leading system message and the last
    message are always kept; if those alone do not fit, raise PromptTooLong.

    Dropping a turn never lengthens the prompt, so the first turn to keep is found by bisection:
    about log2(turns) encodings, not one per dropped turn.
    """
    if not messages:
        raise ValueError("a prompt needs at least one message")
    budget = context_length - reserve_tokens
    system = [messages[0]] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    newest_only = encode_chat(tokenizer, system + turns[-1:])
    if len(newest_only) > budget:
        raise PromptTooLong(
            f"the message is too long for the model: it needs {len(newest_only)} tokens "
            f"and at most {budget} fit with room for the answer"
        )
    fits, does_not_fit = len(turns) - 1, -1  # indexes of the first kept turn
    best = newest_only
    while fits - does_not_fit > 1:
        middle = (fits + does_not_fit) // 2
        prompt_ids = encode_chat(tokenizer, system + turns[middle:])
        if len(prompt_ids) <= budget:
            fits, best = middle, prompt_ids
        else:
            does_not_fit = middle
    return best


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of `messages` through the model's chat template, ready for an answer."""
    with tokenizer_lock(tokenizer):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(encoded, "keys"):  # transformers 5 returns a BatchEncoding
        encoded = encoded["input_ids"]
    return list(encoded)


def shared_prefix_ids(tokenizer) -> list[int]:
    """The tokens every chat prompt of this template begins with when it has no system message
    of its own: the template's default system part and the first user header."""
    first = encode_chat(tokenizer, [{"role": "user", "content": "Hello"}])
    second = encode_chat(tokenizer, [{"role": "user", "content": "Goodbye, and thanks"}])
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return first[:length]


def continuation_ids(tokenizer, text: str) -> list[int]:
    """The token ids of an answer's text so far, to append to its prompt and go on from there."""
    with tokenizer_lock(tokenizer):
        return list(tokenizer.encode(text, add_special_tokens=False))
