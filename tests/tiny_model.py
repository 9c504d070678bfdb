"""A tiny randomly initialised Llama with SmolLM2's tokenizer and chat template, saved as a
normal transformers folder: loads in a second, so tests exercise the real loading and
generation code without the real weights.

Where the default model is not installed (a lent GPU machine: its 98 MB do not travel),
CHAT_TEST_TOKENIZER names a folder holding SmolLM2's tokenizer (`python -m bench.gpu
--save-tokenizer DIR` writes one; bench/gpu_device.sh sets it)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from inference.loading import ModelSource, load_tokenizer, resolve_model_source

SEED = 1234


def build_tiny_model(folder: Path) -> Path:
    folder_given = os.environ.get("CHAT_TEST_TOKENIZER")
    tokenizer = load_tokenizer(ModelSource(path=folder_given) if folder_given else resolve_model_source(""))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    # Weaken the end-of-sequence token so random weights write long answers.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
