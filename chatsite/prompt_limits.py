"""How many tokens an API call's prompt takes, checked in the web process before anything is
saved, so that a call too long for its plan is a 400 and not a failed reply.

Most calls are far below the limit, and their tokens need not be counted: a byte-level BPE
tokenizer makes at most one token of each UTF-8 byte, so the bytes plus what the chat template
adds bound the count from above. Only calls near the limit are tokenized, with a tokenizer of
the web process's own.
"""
from __future__ import annotations

import threading

from django.conf import settings

from inference.prompts import PromptTooLong, encode_chat

TEMPLATE_TOKENS_PER_MESSAGE = 16  # a role header and an end marker take 4-6 with common templates
TEMPLATE_TOKENS_FIXED = 128  # a default system prompt and the answer's header

_tokenizer = None
_tokenizer_lock = threading.Lock()


def prompt_limit_check(messages: list[dict[str, str]], *, max_prompt_tokens: int) -> None:
    """Raise PromptTooLong when `messages`, templated, take more than `max_prompt_tokens`."""
    upper_bound = TEMPLATE_TOKENS_FIXED + sum(
        len(message["content"].encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE for message in messages
    )
    if upper_bound <= max_prompt_tokens:
        return
    tokens = len(encode_chat(web_tokenizer(), messages))
    if tokens > max_prompt_tokens:
        raise PromptTooLong(
            f"The messages take {tokens:,} tokens with the chat template; your plan allows {max_prompt_tokens:,} "
            "in one call. Send fewer or shorter messages."
        )


def web_tokenizer():
    """The model's tokenizer, loaded once per process (a GGUF file's from its conversion in
    CHAT_MODEL_CACHE after the first load anywhere; a few seconds before that)."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            from inference.loading import load_tokenizer, resolve_model_source

            engine = settings.INFERENCE_ENGINE
            _tokenizer = load_tokenizer(
                resolve_model_source(engine["model"]), allow_download=engine["allow_download"], cache=engine["model_cache"]
            )
        return _tokenizer
