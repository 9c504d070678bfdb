"""The one module that touches torch devices: places the model and runs its forward passes."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import DynamicCache

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(setting: str = "auto") -> torch.device:
    """CHAT_DEVICE: `auto` takes CUDA when a GPU is present, else the CPU."""
    if setting not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CHAT_DEVICE=cuda, but torch sees no CUDA device")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(device: torch.device, setting: str = "auto") -> torch.dtype:
    """CHAT_DTYPE: `auto` is bf16 where the device computes it natively, else fp32."""
    if setting not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {setting!r}")
    if setting != "auto":
        return DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_supports_bf16() else torch.float32


def _cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class ModelRunner:
    """Runs forward passes for one sequence at a time; keeps no request state of its own."""

    def __init__(self, model, device: torch.device) -> None:
        self.model = model.to(device)
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.context_length = int(model.config.max_position_embeddings)

    @torch.inference_mode()
    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, DynamicCache]:
        """Run the whole prompt; return the last position's logits [vocab] and its KV cache."""
        cache = DynamicCache()
        input_ids = torch.tensor([token_ids], device=self.device)  # [1, prompt_len]
        output = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        return output.logits[0, -1], cache

    @torch.inference_mode()
    def decode(self, token_id: int, cache: DynamicCache) -> torch.Tensor:
        """Feed one token after what `cache` holds; return the next logits [vocab]."""
        input_ids = torch.tensor([[token_id]], device=self.device)  # [1, 1]
        output = self.model(input_ids=input_ids, cache=cache, use_cache=True)
        return output.logits[0, -1]
