"""An API call's prompt tokens, checked before anything is saved."""
import pytest

from chatsite import prompt_limits
from chatsite.prompt_limits import prompt_limit_check
from inference.prompts import PromptTooLong, encode_chat


def test_a_prompt_within_the_plan_passes_without_loading_a_tokenizer(monkeypatch):
    monkeypatch.setattr(prompt_limits, "web_tokenizer", lambda: pytest.fail("short prompts need no tokenizer"))
    prompt_limit_check([{"role": "user", "content": "Hello"}], max_prompt_tokens=4096)


def test_a_prompt_near_the_limit_is_counted_exactly():
    messages = [{"role": "user", "content": "hello " * 100}]
    tokens = len(encode_chat(prompt_limits.web_tokenizer(), messages))
    prompt_limit_check(messages, max_prompt_tokens=tokens)  # exactly at the limit: allowed
    with pytest.raises(PromptTooLong, match=f"take {tokens:,} tokens.*allows {tokens - 1:,}"):
        prompt_limit_check(messages, max_prompt_tokens=tokens - 1)


def test_the_cheap_bound_is_never_below_the_real_count():
    tokenizer = prompt_limits.web_tokenizer()
    for messages in (
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "日本語のテキスト 🙂 " * 30}],
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}] * 20,
    ):
        bound = prompt_limits.TEMPLATE_TOKENS_FIXED + sum(
            len(m["content"].encode()) + prompt_limits.TEMPLATE_TOKENS_PER_MESSAGE for m in messages
        )
        assert len(encode_chat(tokenizer, messages)) <= bound
