"""`python -m bench.admission [--distributed] [--rounds 3] [--new-tokens 1] 1 32 128 256`: how long
the product takes to bring N requests that arrive together to the engine and their first token back.

N clients POST to `/v1/chat/completions` at once (streamed, one token each, or `--new-tokens`,
end of sequence ignored, with the burst's tokens/s and the server process's CPU seconds, its
engine process's left out); each measures the
seconds until its stream opens (the call admitted and its reply queued: "opened") and until the
first text of its answer arrives. The server runs a tiny random model (two layers,
SmolLM2's tokenizer), whose prefill and step take a millisecond or two on this CPU, so what
the figures show is the product's own path — the API's checks, the quota, the rows, the
broker, the task, the lease, the engine's queue, and the token's way back through the channel
layer — the part that must stay within a few hundred milliseconds when a GPU makes the model
fast. Embedded (daphne with the worker in a thread, SQLite) or `--distributed` (daphne and a
`celery worker` process, PostgreSQL, Redis); CHAT_MAX_RUNNING is the largest N.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.http import ROOT, HttpBench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("streams", nargs="+", type=int)
    parser.add_argument("--rounds", type=int, default=3, help="bursts per N; the median burst is shown")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="distributed: worker processes, more than one fed by one engine server")
    parser.add_argument("--web-processes", type=int, default=1, help="Daphne processes (python -m chatsite.serve)")
    parser.add_argument("--new-tokens", type=int, default=1, help="tokens per answer (64: bench.gpu's end-to-end burst)")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=value", help="server settings")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the source tree the server runs (a `git worktree`)")
    args = parser.parse_args()
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder))
        settings = {"CHAT_MODEL": str(model), "CHAT_DTYPE": "fp32", "CHAT_MAX_RUNNING": str(max(args.streams))}
        settings.update(item.split("=", 1) for item in args.set)
        bench = HttpBench(settings=settings, distributed=args.distributed, checkout=args.checkout, workers=args.workers,
                          web_processes=args.web_processes)
        try:
            bench.run(max(args.streams), new_tokens=1)  # warm-up: connections, task threads
            print(f"{'mode':<12}{'N':>5}{'opened':>9}{'p50 s':>9}{'p90 s':>9}{'max s':>9}{'tok/s':>9}{'cpu s':>7}", flush=True)
            for n in args.streams:
                runs = sorted((bench.run(n, new_tokens=args.new_tokens) for _ in range(args.rounds)), key=lambda run: run["ttft_p50_s"])
                run = runs[len(runs) // 2]
                print(f"{'distributed' if args.distributed else 'embedded':<12}{n:>5}{run['opened_p50_s']:>9.3f}{run['ttft_p50_s']:>9.3f}"
                      f"{run['ttft_p90_s']:>9.3f}{run['ttft_max_s']:>9.3f}{run['tok_s']:>9.0f}"
                      f"{run['torch_cpu_s'] + run['rest_cpu_s']:>7.2f}   (p50 of each burst: "
                      + ", ".join(f"{r['ttft_p50_s']:.3f}" for r in runs) + ")"
                      + ("   worker processes' cpu s: " + ", ".join(f"{s:.2f}" for s in run["worker_cpu_s"]) if run["worker_cpu_s"] else ""),
                      flush=True)
        finally:
            bench.close()


if __name__ == "__main__":
    main()
