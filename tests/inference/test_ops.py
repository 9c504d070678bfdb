"""`bench.ops`: the GPU runner's decode step and prefill stay few ops (on a GPU, kernels: a
step replays each one from its graph, a prefill launches each one from Python). The bounds
fail when a change, or a torch release, adds ops to a layer."""
import torch

from bench.gpu import SHAPES
from bench.ops import count, runner_for

LAYERS = SHAPES["smollm2-135m"]["num_hidden_layers"]


def test_a_bf16_step_and_prefill_take_about_twenty_ops_a_layer():
    ops = count(runner_for("smollm2-135m", torch.bfloat16))
    step, prefill = sum(ops["step"].values()), sum(ops["prefill"].values())
    assert step <= 19 * LAYERS, ops["step"]  # 550 with torch 2.13
    assert prefill <= 21 * LAYERS, ops["prefill"]  # 594, the KV copied into its slot included
    assert ops["step"]["rms_norm.default"] == 2 * LAYERS + 1
    assert ops["step"]["index_put_.default"] == LAYERS  # a row's key and value in one write


def test_fp32_keeps_the_norm_written_out():
    ops = count(runner_for("smollm2-135m", torch.float32))
    assert "rms_norm.default" not in ops["step"] and ops["step"]["rsqrt_.default"] == 2 * LAYERS + 1
