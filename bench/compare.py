"""`python -m bench.compare 5 'before:CHAT_STREAM_FRAMES_PER_S=0' 'after:'`: server settings side by side.

One server per named setting (environment variables after the colon), all loaded before the
first run, and the engine alone in this process; then, round after round, the engine with 32
requests and each server with 32 streams, one after another. Each server's figure is its
tokens/s, its share of the engine's, and the CPU seconds its threads other than torch's spent
on the burst (the web, the database, the tasks): steadier than tokens/s here, and what the
engine loses to. This machine's speed drifts by
±15 % within minutes, so only runs made in the same round compare; the medians at the end are
over rounds. Each server runs the working tree's code.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import bench.http as http
from bench.engine import concurrent
from inference import Engine, EngineConfig

STREAMS = 32


def _setting(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return name, env


def _server(port: int, env: dict[str, str]) -> http.HttpBench:
    """DISTRIBUTED=1 among the settings: daphne + a worker process, PostgreSQL, Redis.
    CHECKOUT=path: the server runs that source tree (`git worktree add /tmp/old <commit>`)."""
    distributed = env.pop("DISTRIBUTED", "") == "1"
    checkout = Path(env.pop("CHECKOUT", http.ROOT))
    return http.HttpBench(port=port, settings=env, distributed=distributed, checkout=checkout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int)
    parser.add_argument("settings", nargs="+", help="NAME:VAR=value,VAR=value (nothing after the colon: the defaults; "
                        "DISTRIBUTED=1: a worker process, PostgreSQL and Redis; CHECKOUT=path: another source tree)")
    args = parser.parse_args()
    settings = [_setting(text) for text in args.settings]
    servers = [_server(http.PORT + i, dict(env)) for i, (_, env) in enumerate(settings)]
    engine = Engine.load(EngineConfig(max_running=STREAMS))
    runs: dict[str, list[float]] = {"engine": []} | {name: [] for name, _ in settings}
    rest_cpu: dict[str, list[float]] = {name: [] for name, _ in settings}
    try:
        concurrent(engine, 2)  # warm-up
        for round_ in range(args.rounds):
            runs["engine"].append(concurrent(engine, STREAMS)["tok_s"])
            line = f"round {round_}: engine {runs['engine'][-1]:.0f} tok/s"
            for (name, _), server in zip(settings, servers, strict=True):
                result = server.run(STREAMS)
                runs[name].append(result["tok_s"])
                rest_cpu[name].append(result["rest_cpu_s"])
                line += f"  {name} {result['tok_s']:.0f} ({result['tok_s'] / runs['engine'][-1]:.0%}, {result['rest_cpu_s']:.2f} s)"
            print(line, flush=True)
        engine_median = statistics.median(runs["engine"])
        print(f"medians: engine {engine_median:.1f} tok/s", *(
            f"{name} {statistics.median(runs[name]):.1f} ({statistics.median(runs[name]) / engine_median:.0%}, "
            f"{statistics.median(rest_cpu[name]):.2f} s)"
            for name, _ in settings
        ), sep="  ")
    finally:
        engine.shutdown()
        for server in servers:
            server.close()


if __name__ == "__main__":
    main()
