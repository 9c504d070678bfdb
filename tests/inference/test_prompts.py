import pytest

from inference.loading import load_tokenizer, resolve_model_source
from inference.prompts import PromptTooLong, build_prompt_ids


@pytest.fixture(scope="module")
def tokenizer(tiny_engine_config):
    return load_tokenizer(resolve_model_source(tiny_engine_config.model))


def test_applies_the_chat_template_with_a_generation_prompt(tokenizer):
    ids = build_prompt_ids(tokenizer, [{"role": "user", "content": "Hello"}], context_length=1000, reserve_tokens=10)
    text = tokenizer.decode(ids)
    assert "<|im_start|>user\nHello<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_drops_oldest_turns_to_fit_but_keeps_the_system_prompt_and_last_message(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}]
    for n in range(20):
        messages += [{"role": "user", "content": f"question {n} " * 20}, {"role": "assistant", "content": f"answer {n} " * 20}]
    messages.append({"role": "user", "content": "the last question"})
    ids = build_prompt_ids(tokenizer, messages, context_length=600, reserve_tokens=100)
    text = tokenizer.decode(ids)
    assert len(ids) <= 500
    assert "Be brief." in text and "the last question" in text
    assert "question 0 " not in text  # the oldest went first
    assert "answer 19" in text  # the newest stayed


def test_a_last_message_that_cannot_fit_is_refused(tokenizer):
    with pytest.raises(PromptTooLong, match="too long"):
        build_prompt_ids(tokenizer, [{"role": "user", "content": "word " * 500}], context_length=300, reserve_tokens=100)


class CountingTokenizer:
    """Counts chat-template encodings; a token per word, five per message for the template."""

    def __init__(self) -> None:
        self.calls = 0

    def apply_chat_template(self, messages, **_):
        self.calls += 1
        return [0] * sum(5 + len(message["content"].split()) for message in messages)


def test_trimming_encodes_a_logarithmic_number_of_times_and_keeps_the_longest_fitting_tail():
    tokenizer = CountingTokenizer()
    messages = [{"role": "user", "content": f"turn {n} " + "word " * 8} for n in range(2000)]
    ids = build_prompt_ids(tokenizer, messages, context_length=1000, reserve_tokens=100)
    per_turn = 5 + 10
    assert len(ids) == (900 // per_turn) * per_turn  # as many newest turns as fit, no fewer
    assert tokenizer.calls <= 13  # 1 + log2(2000), where dropping turn by turn encoded ~1,940 times
