from inference.detokenize import IncrementalDetokenizer


def test_streamed_deltas_join_to_the_full_decode(tiny_engine_config):
    from inference.loading import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(tiny_engine_config.model))
    text = "Héllo, wörld! 東京は日本の首都です。 Spaces  and\nnew lines 🙂."
    ids = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add(token_id) for token_id in ids]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in delta for delta in deltas)  # never half a character
