"""Loading a model: a GGUF file's conversion kept in a cache folder and read back on later
loads, the same weights and tokenizer as converting the file again."""
import os
from pathlib import Path

import pytest
import torch

from inference import loading
from inference.loading import ModelSource, cached_conversion, load_model, load_tokenizer, resolve_model_source


class Converted:
    """What a conversion returns: saves one file, as save_pretrained saves a folder."""

    def __init__(self, text: str) -> None:
        self.text = text

    def save_pretrained(self, folder: str) -> None:
        Path(folder, "weights.txt").write_text(self.text)


def read(folder: str) -> Converted:
    return Converted(Path(folder, "weights.txt").read_text())


@pytest.fixture
def gguf(tmp_path) -> ModelSource:
    (tmp_path / "model.gguf").write_bytes(b"GGUF one")
    return ModelSource(path=str(tmp_path), gguf_file="model.gguf")


def test_a_conversion_is_kept_and_read_back_instead_of_converting_again(gguf, tmp_path):
    conversions = []

    def convert():
        conversions.append(1)
        return Converted("converted")

    cache = str(tmp_path / "cache")
    assert cached_conversion(gguf, cache, "model", convert, read).text == "converted"
    assert cached_conversion(gguf, cache, "model", convert, read).text == "converted"
    assert len(conversions) == 1
    (entry,) = Path(cache).iterdir()
    assert entry.name.startswith("model-") and [p.name for p in entry.iterdir()] == ["model"]  # no staging left


def test_a_changed_file_is_converted_again(gguf, tmp_path):
    cache = str(tmp_path / "cache")
    cached_conversion(gguf, cache, "model", lambda: Converted("first"), read)
    Path(gguf.path, "model.gguf").write_bytes(b"GGUF two, longer")
    assert cached_conversion(gguf, cache, "model", lambda: Converted("second"), read).text == "second"
    assert len(list(Path(cache).iterdir())) == 2


def test_a_kept_conversion_that_does_not_load_is_replaced(gguf, tmp_path, caplog):
    cache = str(tmp_path / "cache")
    cached_conversion(gguf, cache, "model", lambda: Converted("good"), read)
    (folder,) = Path(cache).glob("*/model")
    (folder / "weights.txt").unlink()  # damaged
    assert cached_conversion(gguf, cache, "model", lambda: Converted("again"), read).text == "again"
    assert "does not load" in caplog.text
    assert read(str(folder)).text == "again"


def test_a_cache_that_cannot_be_written_still_gives_the_conversion(gguf, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    assert cached_conversion(gguf, str(blocked), "model", lambda: Converted("converted"), read).text == "converted"
    assert "could not keep" in caplog.text


def test_a_process_that_renames_second_uses_its_own_copy_and_leaves_no_staging(gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real_rename = os.rename

    def rename_after_another(staging, folder):
        real_rename(staging, folder)  # the other process's copy lands first …
        Path(staging).mkdir()
        real_rename(staging, folder)  # … so ours meets a folder that is there: OSError

    monkeypatch.setattr(loading.os, "rename", rename_after_another)
    assert cached_conversion(gguf, str(cache), "tokenizer", lambda: Converted("mine"), read).text == "mine"
    (entry,) = cache.iterdir()
    assert [p.name for p in entry.iterdir()] == ["tokenizer"]


@pytest.mark.real_model
def test_the_default_model_from_the_cache_equals_its_gguf_converted_again(tmp_path, monkeypatch):
    """The weights (float32, and bf16 as cast from them) and the tokenizer read back from the
    cache are what converting the GGUF gives; the second load does not read the GGUF."""
    source = resolve_model_source(None)
    cache = str(tmp_path / "cache")
    # A first load converts the GGUF and returns that conversion itself.
    direct = load_model(source, dtype=torch.float32, cache=cache).state_dict()
    direct_tokenizer = load_tokenizer(source, cache=cache)
    assert len(list(Path(cache).glob("*/model/model.safetensors"))) == 1

    reads = []
    for name in ("AutoModelForCausalLM", "AutoTokenizer"):
        real = getattr(loading, name)

        class Recording:
            @staticmethod
            def from_pretrained(path, real=real, **options):
                reads.append(options.get("gguf_file"))
                return real.from_pretrained(path, **options)

        monkeypatch.setattr(loading, name, Recording)
    cached = load_model(source, dtype=torch.float32, cache=cache).state_dict()
    cached_bf16 = load_model(source, dtype=torch.bfloat16, cache=cache).state_dict()
    tokenizer = load_tokenizer(source, cache=cache)
    assert reads == [None, None, None]

    assert direct.keys() == cached.keys() == cached_bf16.keys()
    for name, tensor in direct.items():
        assert torch.equal(cached[name], tensor), name
        assert cached_bf16[name].dtype is torch.bfloat16 and torch.equal(cached_bf16[name], tensor.to(torch.bfloat16)), name

    texts = ["What is the capital of France?", "naïve café — ünïcödé 🙂\n\tcode: x = {'a': 1}", "<|im_start|>user"]
    for text in texts:
        assert tokenizer(text)["input_ids"] == direct_tokenizer(text)["input_ids"], text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": texts[1]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        direct_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id, len(tokenizer)) == \
        (direct_tokenizer.eos_token_id, direct_tokenizer.bos_token_id, direct_tokenizer.pad_token_id, len(direct_tokenizer))
    assert tokenizer.decode(tokenizer(texts[1])["input_ids"]) == direct_tokenizer.decode(direct_tokenizer(texts[1])["input_ids"])
