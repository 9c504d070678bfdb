"""The GPU runner's arithmetic and bookkeeping, on the CPU (without CUDA graphs): every row's
logits are those of its sequence alone, while sequences join into free slots and leave."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from inference.decoder import LlamaDecoder, _half_rms_norm, _rms_norm
from inference.gpu_runner import GpuRunner, supports
from inference.loading import load_model, resolve_model_source
from inference.slots import NoFreeSlot
from tests.inference.runner_checks import drive, logits_alone


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["", "shared-prefix"])
def test_every_row_gets_the_logits_of_its_sequence_alone(tiny_model_dir, shared_prefix):
    """Rows of different lengths in slots that are freed and taken again (a newcomer fills the
    hole a leaver left), past the first captured length (128 columns), some rows starting with
    the shared prefix: each prefill and each step equals a plain transformers forward pass over
    that row's sequence by itself."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cpu"), slots=4, capacity=200)
    assert not runner.graphs
    if shared_prefix:
        runner.set_shared_prefix([5, 6, 7])
    sequences = {1: [5, 6, 7, 8, 9, 10, 11], 2: [12, 13, 14], 3: [20, 21, 22, 23, 24], 4: [5, 6, 7, 40, 41]}
    sequences[5] = list(range(100, 220))  # 120 tokens: its steps attend over 200 columns (past 128)
    joins = {3: [3], 6: [4], 9: [5]}
    leaves = {2: [2], 8: [1]}
    slots_seen = {}
    real_prefill = runner.prefill

    def prefill(group):
        logits = real_prefill(group)
        slots_seen.update((request_id, runner._slots.slot_of(request_id)) for request_id in group)
        return logits

    runner.prefill = prefill
    assert drive(runner, model, sequences, first=[1, 2], joins=joins, leaves=leaves, steps=20) == [3, 4, 5]
    assert slots_seen == {1: 0, 2: 1, 3: 1, 4: 2, 5: 0}  # 3 took the slot 2 left, 5 the one 1 left
    assert runner.padded_tokens == 3 * 200


def test_pending_sequences_hold_slots_until_committed_or_dropped(tiny_model_dir):
    """A prefilled sequence holds its slot before it joins; dropping it frees the slot, and the
    rows still decoding are not disturbed by the empty rows of a step writing their scratch
    column (a pending slot inside the step's batch)."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cpu"), slots=2, capacity=64)
    runner.prefill({1: [5, 6, 7]})
    runner.commit()
    runner.prefill({2: [8, 9]})  # pending in slot 1, inside the step's batch of 2
    logits = runner.decode([10])
    torch.testing.assert_close(logits[0], logits_alone(model, [5, 6, 7, 10]), atol=1e-4, rtol=1e-4)
    with pytest.raises(NoFreeSlot):
        runner.prefill({3: [1, 2]})
    runner.drop_pending({2})
    logits = runner.prefill({3: [1, 2]})
    torch.testing.assert_close(logits[0], logits_alone(model, [1, 2]), atol=1e-4, rtol=1e-4)
    runner.commit()
    logits = runner.decode([11, 4])
    torch.testing.assert_close(logits[0], logits_alone(model, [5, 6, 7, 10, 11]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], logits_alone(model, [1, 2, 4]), atol=1e-4, rtol=1e-4)
    runner.clear()
    assert runner.rows == [] and runner.padded_tokens == 0


def test_a_step_takes_the_tokens_fed_on_the_device_where_the_host_names_none(tiny_model_dir):
    """`forward` launches a step before the host has the last step's tokens: a row the host
    names no token for takes the one `feed` left on the device; a newcomer's comes from the
    host. A row whose sequence fills its slot runs as an empty row and disturbs no other."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cpu"), slots=3, capacity=8)
    runner.prefill({1: [5, 6, 7], 2: [8, 9, 10, 11, 12, 13]})
    runner.commit()
    runner.forward({1: 20, 2: 21})
    runner.feed(torch.tensor([30, 31]))  # chosen on the device, never read by the host
    runner.prefill({3: [1, 2]})
    runner.commit()
    logits = runner.forward({3: 4})
    torch.testing.assert_close(logits[0], logits_alone(model, [5, 6, 7, 20, 30]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], logits_alone(model, [8, 9, 10, 11, 12, 13, 21, 31]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[2], logits_alone(model, [1, 2, 4]), atol=1e-4, rtol=1e-4)
    runner.feed(torch.tensor([40, 41, 42]))
    logits = runner.forward({})  # request 2 holds 8 tokens: its slot is full, its row empty
    torch.testing.assert_close(logits[0], logits_alone(model, [5, 6, 7, 20, 30, 40]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[2], logits_alone(model, [1, 2, 4, 42]), atol=1e-4, rtol=1e-4)


def test_a_prompt_prefilled_in_parts_is_the_prompt_prefilled_whole(tiny_model_dir):
    """Parts of 7, 20 and the rest: no logits until the last part, then the logits of the
    whole prompt; the steps after it and its neighbour's are those of each sequence alone."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cpu"), slots=3, capacity=128)
    neighbour = [9, 8, 7, 6]
    runner.prefill({1: neighbour})
    runner.commit()
    prompt = list(range(50, 90))
    assert runner.prefill_part(2, prompt[:7], 0, final=False) is None
    logits = runner.decode([3])  # a step while the prompt is half prefilled: only the neighbour's row
    neighbour.append(3)
    torch.testing.assert_close(logits[0], logits_alone(model, neighbour), atol=1e-4, rtol=1e-4)
    assert runner.rows == [1]
    assert runner.prefill_part(2, prompt[:27], 7, final=False) is None
    logits = runner.prefill_part(2, prompt, 27, final=True)
    torch.testing.assert_close(logits, logits_alone(model, prompt), atol=1e-4, rtol=1e-4)
    runner.commit()
    assert runner.rows == [1, 2]
    logits = runner.decode([4, 5])
    torch.testing.assert_close(logits[0], logits_alone(model, [*neighbour, 4]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], logits_alone(model, [*prompt, 5]), atol=1e-4, rtol=1e-4)
    runner.prefill_part(3, [1, 2, 3], 0, final=False)
    runner.remove({3})  # preempted half-way: its slot is free again
    assert runner.padded_tokens == 2 * 128


def test_a_prompt_longer_than_a_slot_is_refused_and_takes_no_slot(tiny_model_dir):
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cpu"), slots=1, capacity=16)
    assert runner.context_length == 16
    with pytest.raises(ValueError, match="do not fit"):
        runner.prefill({1: list(range(16))})
    assert runner.padded_tokens == 0
    runner.prefill({2: list(range(15))})


def test_only_llama_models_take_the_gpu_runner_and_graphs_need_cuda():
    tiny = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    assert supports(LlamaForCausalLM(LlamaConfig(**tiny)))
    assert not supports(MistralForCausalLM(MistralConfig(**tiny)))
    with pytest.raises(ValueError, match="Llama"):
        GpuRunner(MistralForCausalLM(MistralConfig(**tiny)), torch.device("cpu"), slots=1)
    with pytest.raises(ValueError, match="CUDA"):
        GpuRunner(LlamaForCausalLM(LlamaConfig(**tiny)), torch.device("cpu"), slots=1, graphs=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_half_precision_norm_rounds_as_transformers_norm_does(dtype):
    """The step's two-kernel RMSNorm for bf16 and fp16 rows gives transformers' values bit for
    bit (on the CPU; on a GPU the fused reduction may put a value one step apart)."""
    generator = torch.Generator().manual_seed(0)
    rows = (torch.randn((512, 576), generator=generator) * 3).to(dtype)
    weight = (torch.rand(576, generator=generator) + 0.5).to(dtype)
    assert torch.equal(_half_rms_norm(rows, weight, 1e-5), _rms_norm(rows, weight, 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_lean_prefill_gives_transformers_numbers_bit_for_bit(tiny_model_dir, dtype):
    """The GPU runner's prefill in half precision (two-op norms, q and k rotated together from
    tables) gives the plain prefill's logits, keys and values exactly: padded rows, and rows
    after a shared prefix."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=dtype)
    plain, lean = LlamaDecoder(model, prepack=False), LlamaDecoder(model, prepack=False, lean_prefill=True)
    assert lean.lean_prefill and not plain.lean_prefill
    input_ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefix = plain.prefill(torch.tensor([[20, 21, 22]]), torch.arange(3)[None], torch.ones((1, 3), dtype=torch.long))
    prefix_kv = list(zip(prefix[1], prefix[2], strict=True))
    for before in (None, prefix_kv):
        full_mask = mask if before is None else torch.cat([torch.ones((2, 3), dtype=torch.long), mask], dim=1)
        shifted = positions if before is None else positions + 3
        expected, got = plain.prefill(input_ids, shifted, full_mask, before), lean.prefill(input_ids, shifted, full_mask, before)
        assert torch.equal(got[0], expected[0])
        assert all(torch.equal(a, b) for a, b in zip(got[1] + got[2], expected[1] + expected[2], strict=True))


def test_fp32_keeps_the_prefill_written_out(tiny_model_dir):
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    assert not LlamaDecoder(model, prepack=False, lean_prefill=True).lean_prefill


def test_a_bf16_step_gives_the_logits_of_each_sequence_alone_within_bf16_rounding(tiny_model_dir):
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.bfloat16)
    runner = GpuRunner(model, torch.device("cpu"), slots=2, capacity=64)
    assert runner._norm is _half_rms_norm
    sequences = {1: [5, 6, 7, 8], 2: [9, 10]}
    runner.prefill(sequences)
    runner.commit()
    for step in range(4):
        logits = runner.decode([11 + step, 20 + step])
        sequences[1].append(11 + step)
        sequences[2].append(20 + step)
        for row, request_id in enumerate((1, 2)):
            # Logits near 1 are 1/128 apart in bf16: a step or two of rounding, no more.
            torch.testing.assert_close(logits[row], logits_alone(model, sequences[request_id]), atol=2e-2, rtol=0)


def test_a_step_that_cannot_be_captured_runs_without_graphs_from_then_on(tiny_model_dir, monkeypatch, caplog):
    """Where capturing fails (an op a torch release cannot capture, say), the step runs as it
    is, its rows' logits right, and no capture is tried again: a slower engine, not a failed one."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cpu"), slots=2, capacity=64)
    runner.graphs = True  # as on CUDA; capturing needs CUDA, so it fails here as it may there
    tries = []
    real_capture = runner._capture

    def capture(batch, span):
        tries.append((batch, span))
        return real_capture(batch, span)

    def no_stream(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(runner, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "Stream", no_stream)
    runner.prefill({1: [5, 6, 7]})
    runner.commit()
    with caplog.at_level("ERROR", logger="inference.gpu_runner"):
        logits = runner.decode([8])
    torch.testing.assert_close(logits[0], logits_alone(model, [5, 6, 7, 8]), atol=1e-4, rtol=1e-4)
    assert "steps run without graphs" in caplog.text
    assert not runner.graphs and len(tries) == 1
    logits = runner.decode([9])
    torch.testing.assert_close(logits[0], logits_alone(model, [5, 6, 7, 8, 9]), atol=1e-4, rtol=1e-4)
    assert len(tries) == 1
