"""What the GPU paths ask of the host, checked without a GPU on torch's meta device (tensors with
shapes and no values, where reading a value back raises): a decode step, as a CUDA graph
captures it, takes nothing from the host; prefill, decode steps and the device sampler launch
their work without waiting for the device. On CUDA either fault is silent: a capture fails (and
steps run without graphs, several times slower) or the host idles while a step runs."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM

from inference.gpu_runner import GpuRunner
from inference.sampling import greedy_batch, make_generator, on_device, sample_batch
from inference.sampling_params import SamplingParams

META = torch.device("meta")
aten = torch.ops.aten


class HostTraffic(TorchDispatchMode):
    """Records the ops that take a tensor from the host (`host_inputs`) and, among them, the
    copies to the device that wait for it (`blocking`: not `non_blocking`). A value read back
    (`item`, `tolist`, `bool`, a boolean mask) raises on the meta device by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.host_inputs: list[str] = []
        self.blocking: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # A 0-dimensional host tensor is a scalar argument, which a capture takes as a constant.
        if any(isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu" and leaf.dim() > 0
               for leaf in tree_leaves((args, kwargs))):
            self.host_inputs.append(str(func))
            if func is aten._to_copy.default:
                to_device = torch.device(kwargs.get("device", "cpu")).type != "cpu"
                waits = not kwargs.get("non_blocking", False)
            elif func is aten.copy_.default:
                to_device = args[0].device.type != "cpu"
                waits = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            else:
                to_device = waits = False
            if to_device and waits:
                self.blocking.append(str(func))
        return func(*args, **kwargs)


def meta_runner(**kwargs) -> GpuRunner:
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return GpuRunner(LlamaForCausalLM(config).eval(), META, slots=8, capacity=200, **kwargs)


def test_the_watch_sees_a_blocking_copy_and_the_meta_device_refuses_a_read_back():
    """The checks below can fail: a plain `.to(device)` of host values is seen, `on_device`'s
    copy is not, and a value read back raises."""
    with HostTraffic() as traffic:
        torch.tensor([1, 2]).to(META)
        torch.zeros(2, device=META).copy_(torch.tensor([1.0, 2.0]))
        on_device([3, 4], META)
        torch.zeros(2, device=META).copy_(torch.tensor([1.0, 2.0]), non_blocking=True)
    assert traffic.blocking == ["aten._to_copy.default", "aten.copy_.default"]
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.zeros(3, device=META).argmax().item()


def test_a_decode_step_as_a_graph_captures_it_takes_nothing_from_the_host():
    """The step replayed as a CUDA graph (`_step`, what `_capture` records) at a few batch and
    column sizes: every input is already on the device, and no value is read back."""
    runner = meta_runner(graphs=False)
    for batch, span in ((1, runner._length_sizes[0]), (8, runner._length_sizes[-1])):
        with torch.inference_mode(), HostTraffic() as traffic:
            logits = runner._step(batch, span)
        assert logits.shape == (batch, 300)
        assert traffic.host_inputs == []


def test_prefill_and_decode_steps_never_wait_for_the_device():
    """The engine launches prefill and the next step while a step is still running: joins
    (padded, over the shared prefix, in parts), steps with tokens from the host and from the
    device, leaves — no copy that waits, no value read back."""
    runner = meta_runner(graphs=False)
    with torch.inference_mode(), HostTraffic() as traffic:
        runner.set_shared_prefix([5, 6, 7])
        assert runner.prefill({1: [5, 6, 7, 8, 9], 2: [10, 11]}).shape == (2, 300)
        assert runner.prefill_part(3, list(range(40)), 0, final=False) is None
        assert runner.prefill_part(3, list(range(40)), 20, final=True).shape == (300,)
        runner.commit()
        logits = runner.forward({1: 4, 2: 5, 3: 6})
        runner.feed(logits.argmax(dim=-1))
        assert runner.forward({2: 9}).shape == (3, 300)
        runner.remove({1})
        assert runner.prefill({4: [12, 13, 14]}).shape == (1, 300)
        runner.commit()
        assert runner.forward({4: 15}).shape == (3, 300)
    assert traffic.blocking == []
    assert traffic.host_inputs  # the tokens and positions did cross, without waiting


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_device_sampler_chooses_every_kind_of_row_without_reading_back(dtype):
    """`sample_batch(to_host=False)` and `greedy_batch(to_host=False)`, as the engine calls them
    after launching a step: greedy, plain, top-k, top-p, seeded, penalised and banned rows in
    one batch, all chosen on the device."""
    rows, vocab = 6, 300
    logits = torch.zeros(rows, vocab, device=META, dtype=dtype)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7),
              SamplingParams(temperature=0.7, top_p=0.9), SamplingParams(temperature=1.0, top_k=20, seed=3),
              SamplingParams(temperature=0.8, repetition_penalty=1.3, top_k=5, top_p=0.5),
              SamplingParams(temperature=0.7, seed=5)]
    generators = [None, None, None, make_generator(3), None, make_generator(5)]
    with torch.inference_mode(), HostTraffic() as traffic:
        chosen = sample_batch(logits, params, generators, seen_tokens=[[1, 2], [], [3], [], [4, 5, 6], []],
                              ban_rows=[True, False, True, False, False, False], banned_tokens={7, 8}, to_host=False)
        greedy = greedy_batch(logits, [True, False] * 3, {7}, to_host=False)
    assert chosen.shape == (3, rows) and chosen.device == META
    assert greedy.shape == (rows,) and greedy.device == META
    assert traffic.blocking == []
