"""The GPU runner on a GPU, with its decode steps replayed as CUDA graphs: every row's greedy
tokens are those of `generate` on its prompt alone (fp32), while requests join, leave and are
preempted. Skipped where torch sees no CUDA device: the CPU suite runs the same runner without
graphs (test_gpu_runner.py, and every engine test on both runners in test_engine.py)."""
import pytest
import torch

from inference import Engine, EngineConfig, SamplingParams
from inference.gpu_runner import GpuRunner
from inference.loading import load_model, resolve_model_source
from inference.prompts import build_prompt_ids
from tests.inference.runner_checks import drive
from tests.inference.test_engine import collect

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def generate_alone(model, prompt_ids, tokens):
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids], device="cuda"), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32).to("cuda")


def test_graph_steps_give_each_row_the_logits_of_its_sequence_alone(tiny_model_dir, reference):
    model = load_model(resolve_model_source(tiny_model_dir), dtype=torch.float32)
    runner = GpuRunner(model, torch.device("cuda"), slots=8, capacity=300)
    assert runner.graphs
    sequences = {1: [5, 6, 7, 8, 9, 10, 11], 2: [12, 13, 14], 3: list(range(100, 230)), 4: [40, 41]}
    # 4 takes the slot 1 left; 3's steps attend past 128 columns
    rows = drive(runner, reference, sequences, first=[1, 2], joins={3: [3], 7: [4]}, leaves={5: [1]}, steps=24, atol=1e-3)
    assert rows == [2, 3, 4]
    assert {span for _, span in runner._graphs} == {128, 256}  # steps past 128 columns took the next graph


def test_the_engine_on_cuda_answers_as_generate_alone(tiny_model_dir, reference):
    """Eight requests through a batch of four (so they join and leave), then a Plus request
    preempting a Free one in a batch of one: every answer's tokens are generate's."""
    engine = Engine.load(EngineConfig(model=tiny_model_dir, dtype="fp32", device="cuda", max_running=4))
    try:
        assert isinstance(engine.runner, GpuRunner) and engine.runner.graphs

        def prompt(text):
            return build_prompt_ids(engine.tokenizer, [{"role": "user", "content": text}], context_length=1024, reserve_tokens=64)

        prompts = [prompt(f"question number {n}") for n in range(8)]
        requests = [engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=8 + 5 * n, ignore_eos=True))
                    for n, ids in enumerate(prompts)]
        for n, request in enumerate(requests):
            collect(request, 60)
            assert request.output_ids == generate_alone(reference, prompts[n], 8 + 5 * n)
    finally:
        engine.shutdown()
    engine = Engine.load(EngineConfig(model=tiny_model_dir, dtype="fp32", device="cuda", max_running=1))
    try:
        free = engine.submit(prompts[0], SamplingParams(temperature=0, max_new_tokens=200, ignore_eos=True))
        next(free.events(timeout=60))
        plus = engine.submit(prompts[1], SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True), priority=10)
        collect(plus, 60)
        collect(free, 60)
        assert free.preemptions == 1
        assert plus.output_ids == generate_alone(reference, prompts[1], 6)
        assert free.output_ids == generate_alone(reference, prompts[0], 200)
    finally:
        engine.shutdown()
