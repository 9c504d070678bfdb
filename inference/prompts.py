"""Turn a conversation branch into prompt token ids that fit the model's context window."""
from __future__ import annotations


class PromptTooLong(ValueError):
    """Even the newest message alone leaves no room for an answer."""


def build_prompt_ids(
    tokenizer, messages: list[dict[str, str]], *, context_length: int, reserve_tokens: int
) -> list[int]:
    """Apply the chat template to `messages`, dropping the oldest turns until the prompt plus
    `reserve_tokens` of answer fits in `context_length`. A leading system message and the last
    message are always kept; if those alone do not fit, raise PromptTooLong.
    """
    if not messages:
        raise ValueError("a prompt needs at least one message")
    budget = context_length - reserve_tokens
    system = [messages[0]] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    for first_kept in range(len(turns)):
        prompt_ids = _encode(tokenizer, system + turns[first_kept:])
        if len(prompt_ids) <= budget:
            return prompt_ids
    raise PromptTooLong(
        f"the message is too long for the model: it needs {len(prompt_ids)} tokens "
        f"and at most {budget} fit with room for the answer"
    )


def _encode(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(encoded, "keys"):  # transformers 5 returns a BatchEncoding
        encoded = encoded["input_ids"]
    return list(encoded)


def shared_prefix_ids(tokenizer) -> list[int]:
    """The tokens every chat prompt of this template begins with when it has no system message
    of its own: the template's default system part and the first user header."""
    first = _encode(tokenizer, [{"role": "user", "content": "Hello"}])
    second = _encode(tokenizer, [{"role": "user", "content": "Goodbye, and thanks"}])
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return first[:length]
