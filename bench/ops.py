"""`python -m bench.ops [--shape smollm2-135m] [--dtype bf16]`: the ops the GPU runner launches
for one decode step and for one prefill, counted on the CPU.

On a GPU a decode step is replayed from a CUDA graph, and each kernel in it costs a few
microseconds however little it computes; a prefill is launched op by op from Python. For a
small model both are bound by how many kernels there are, not by arithmetic, so their count
is the figure to watch where no GPU is at hand. Each op that reaches torch's dispatcher is
counted (a TorchDispatchMode), views and other ops that return their input left out; on CUDA
about one kernel each. The model has random weights in the shape of `bench.gpu`'s; the step
runs at one row over 128 columns, the prefill over one prompt of 30 tokens.
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from bench.gpu import COMMON, SHAPES
from inference.gpu_runner import GpuRunner

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PREFILL_TOKENS = 30


class OpCounter(TorchDispatchMode):
    """Counts the ops that compute something. An op whose schema says its result may alias
    an input without writing it (a view, `contiguous` or `to` where nothing changes) and whose
    result does share that input's memory launches nothing; in-place and `out=` ops write,
    and count."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        alias = returns[0].alias_info if returns else None
        first = next((arg for arg in args if isinstance(arg, torch.Tensor)), None)
        out = result[0] if isinstance(result, (list, tuple)) and result else result
        viewed = (alias is not None and not alias.is_write and isinstance(out, torch.Tensor) and first is not None
                  and out.untyped_storage().data_ptr() == first.untyped_storage().data_ptr())
        if not viewed:
            self.ops[func.__name__] += 1
        return result


def count(runner: GpuRunner) -> dict:
    """Ops of one decode step (one row, 128 columns) and of one prefill of PREFILL_TOKENS."""
    prompt = list(range(10, 10 + PREFILL_TOKENS))
    with torch.inference_mode():
        runner.prefill({1: prompt})
        runner.drop_pending({1})
        with OpCounter() as prefill:
            runner.prefill({2: prompt})
        runner.drop_pending({2})
        runner._step(1, 128)
        with OpCounter() as step:
            runner._step(1, 128)
    return {"step": step.ops, "prefill": prefill.ops}


def runner_for(shape: str, dtype: torch.dtype) -> GpuRunner:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**COMMON, **SHAPES[shape])).to(dtype).eval()
    return GpuRunner(model, torch.device("cpu"), slots=2, capacity=256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    args = parser.parse_args()
    runner = runner_for(args.shape, DTYPES[args.dtype])
    layers = SHAPES[args.shape]["num_hidden_layers"]
    for part, ops in count(runner).items():
        total = sum(ops.values())
        print(f"{part}: {total} ops, {total / layers:.1f} a layer")
        print("   " + ", ".join(f"{name} {n}" for name, n in ops.most_common()))


if __name__ == "__main__":
    main()
