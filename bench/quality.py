"""`make bench-quality`: what CHAT_QUANT costs in quality, on the default model.

(a) Perplexity of a fixed public-domain text (tests/data/public-domain.txt), fed one token per
decode step (the steps the quantized weights serve), with the de-quantized bf16 weights
(`none`) and with each quantized kind; (b) greedy answers (48 tokens) to the first 20 of
bench.prompts' questions with `none` and `auto`, side by side. Prints both as markdown tables
and writes bench/results/quality.json.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from bench.prompts import QUESTIONS
from inference import Engine, EngineConfig, SamplingParams
from inference.loading import load_model, load_tokenizer, resolve_model_source
from inference.prompts import build_prompt_ids
from inference.runner import ModelRunner, pick_dtype

RESULTS = Path(__file__).parent / "results"
TEXT = Path(__file__).parent.parent / "tests" / "data" / "public-domain.txt"
KINDS = ("none", "auto", "int8")
ANSWER_TOKENS = 48


def perplexity(kind: str) -> dict:
    cpu = torch.device("cpu")
    source = resolve_model_source(None)
    ids = load_tokenizer(source)(TEXT.read_text())["input_ids"]
    runner = ModelRunner(load_model(source, dtype=pick_dtype(cpu)), cpu)
    what = runner.quantize(kind, f"{source.path}/{source.gguf_file}")
    runner.prefill({0: ids[:1]})
    runner.commit()
    started = time.perf_counter()
    logits = torch.stack([runner.decode([token])[0].float() for token in ids[1:-1]])
    step_ms = (time.perf_counter() - started) / (len(ids) - 2) * 1e3
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[2:])).item()
    return {"perplexity": math.exp(loss), "tokens": len(ids), "ms_per_step": step_ms, "path": what or "de-quantized bf16"}


def answers(kind: str) -> list[str]:
    engine = Engine.load(EngineConfig(quant=kind))
    try:
        replies = []
        for question in QUESTIONS[:20]:
            prompt = build_prompt_ids(engine.tokenizer, [{"role": "user", "content": question}],
                                      context_length=engine.context_length, reserve_tokens=ANSWER_TOKENS)
            request = engine.submit(prompt, SamplingParams(temperature=0, max_new_tokens=ANSWER_TOKENS))
            replies.append("".join(getattr(event, "text", "") for event in request.events(timeout=600)))
        return replies
    finally:
        engine.shutdown()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main() -> None:
    result = {"perplexity": {kind: perplexity(kind) for kind in KINDS}}
    reference = result["perplexity"]["none"]["perplexity"]
    print("| CHAT_QUANT | perplexity | vs none | ms a step | path |\n|---|---|---|---|---|")
    for kind, row in result["perplexity"].items():
        row["change"] = row["perplexity"] / reference - 1
        print(f"| {kind} | {row['perplexity']:.3f} | {row['change'] * 100:+.2f} % | {row['ms_per_step']:.1f} | {row['path']} |")
    side = {kind: answers(kind) for kind in ("none", "auto")}
    result["answers"] = [
        {"question": question, "none": side["none"][i], "auto": side["auto"][i], "same": side["none"][i] == side["auto"][i]}
        for i, question in enumerate(QUESTIONS[:20])
    ]
    same = sum(row["same"] for row in result["answers"])
    print(f"\n{same} of 20 greedy answers identical\n\n| question | none | auto |\n|---|---|---|")
    for row in result["answers"]:
        print(f"| {_cell(row['question'])} | {_cell(row['none'])} | {'(same)' if row['same'] else _cell(row['auto'])} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'quality.json'}")


if __name__ == "__main__":
    main()
