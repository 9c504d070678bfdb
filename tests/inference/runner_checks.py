"""What the runner tests share: drive a runner through joins, leaves and decode steps, checking
every row against a plain transformers forward pass over its sequence alone."""
import torch


def logits_alone(model, tokens):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens], device=model.device)).logits[0, -1]


def drive(runner, model, sequences, *, first, joins, leaves, steps, atol=1e-4):
    """Prefill `first`, then for each step: prefill the ids `joins[step]`, remove `leaves[step]`,
    decode a made-up token per row; each prefill's and each step's logits must equal the row's
    sequence alone. Returns the slot (or row) order as it ends."""
    def join(request_ids):
        logits = runner.prefill({request_id: sequences[request_id] for request_id in request_ids})
        for row, request_id in enumerate(request_ids):
            torch.testing.assert_close(logits[row], logits_alone(model, sequences[request_id]), atol=atol, rtol=atol)
        runner.commit()

    join(first)
    for step in range(steps):
        if step in joins:
            join(joins[step])
        for request_id in leaves.get(step, []):
            runner.remove({request_id})
            del sequences[request_id]
        next_tokens = [(30 + 7 * step + row) % 500 for row in range(len(runner.rows))]
        logits = runner.decode(next_tokens)
        assert logits.shape == (len(runner.rows), model.config.vocab_size)
        for row, request_id in enumerate(runner.rows):
            sequences[request_id].append(next_tokens[row])
            torch.testing.assert_close(logits[row], logits_alone(model, sequences[request_id]), atol=atol, rtol=atol)
    return runner.rows
