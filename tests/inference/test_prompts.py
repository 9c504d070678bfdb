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
