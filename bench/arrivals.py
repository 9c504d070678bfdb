"""`python -m bench.arrivals 4 12`: the engine alone, 32 requests of 64 tokens submitted
together against the same requests submitted GAP milliseconds apart (as they reach it through
HTTP, where the accepts take turns on SQLite's write lock), ROUNDS times alternated: what the
spread of arrivals alone costs, with no server in the process."""
from __future__ import annotations

import argparse
import statistics

from bench.engine import concurrent
from inference import Engine, EngineConfig

STREAMS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int)
    parser.add_argument("gap_ms", type=float)
    args = parser.parse_args()
    engine = Engine.load(EngineConfig(max_running=STREAMS))
    together, spread = [], []
    try:
        concurrent(engine, 2)  # warm-up
        for round_ in range(args.rounds):
            together.append(concurrent(engine, STREAMS)["tok_s"])
            spread.append(concurrent(engine, STREAMS, gap_s=args.gap_ms / 1000)["tok_s"])
            print(f"round {round_}: together {together[-1]:.0f} tok/s  {args.gap_ms:g} ms apart {spread[-1]:.0f} tok/s "
                  f"({spread[-1] / together[-1]:.0%})", flush=True)
        print(f"medians: together {statistics.median(together):.1f}  apart {statistics.median(spread):.1f} tok/s "
              f"({statistics.median(spread) / statistics.median(together):.0%})")
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
