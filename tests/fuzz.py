"""`make fuzz`: hostile input against a live server, and a count of what went wrong.

Starts the product in its embedded mode (daphne, SQLite, the tiny model), then sends FRAMES
socket frames (over a few sockets, reopened whenever the server closes one) and BODIES
/v1/chat/completions bodies, generated from a fixed seed (tests/hostile.py). Reports: server
errors (HTTP 5xx, `internal` frames), tracebacks in the server's log, and rows written for
input that was refused (rows are counted before and after; every accepted send or call is
accounted for). Exits 1 unless all three are 0.

    .venv/bin/python -m tests.fuzz [--frames 10000] [--bodies 10000] [--seed 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

from tests.e2e.conftest import start_embedded_server
from tests.e2e.servers import create_api_key, sign_up
from tests.hostile import random_body, random_frame
from tests.tiny_model import build_tiny_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--bodies", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="chatsite-fuzz-"))
    model = str(build_tiny_model(folder / "model"))
    (folder / "data").mkdir()
    # A small answer cap keeps accepted sends cheap; a quota of 40 means most valid ones are
    # refused as rate_limited, which must write nothing either.
    server = start_embedded_server(folder / "data", CHAT_MODEL=model, CHAT_DTYPE="fp32", FREE_MAX_OUTPUT_TOKENS="4",
                                   FREE_MESSAGES_PER_WINDOW="40")
    try:
        session = sign_up(server.url, "fuzzer")
        key = create_api_key(session)
        rng = random.Random(args.seed)
        rows_before = _rows(server.database)
        started = time.monotonic()
        frames = asyncio.run(_frames(server.url, session.cookie, rng, args.frames))
        bodies = asyncio.run(_bodies(server.url, key, rng, args.bodies))
        rows_after = _rows(server.database)
        log = server.log()
    finally:
        server.stop()
    expected = frames["accepted_rows"] + bodies["accepted_rows"]
    unexplained_rows = (rows_after - rows_before) - expected
    tracebacks = log.count("Traceback (most recent call last)")
    server_errors = frames["internal"] + bodies["5xx"]
    print(f"frames sent: {frames['sent']:,} ({frames['accepted']:,} accepted, {frames['refused']:,} refused with a code, "
          f"{frames['closed']:,} sockets closed by the server)")
    print(f"bodies sent: {bodies['sent']:,} (status counts: {dict(sorted(bodies['statuses'].items()))})")
    print(f"server errors: {server_errors}  tracebacks in the log: {tracebacks}  rows written for refused input: {unexplained_rows}")
    print(f"in {time.monotonic() - started:.0f} s")
    return 0 if server_errors == tracebacks == unexplained_rows == 0 else 1


async def _frames(base_url: str, cookie: str, rng: random.Random, count: int) -> dict:
    result = {"sent": 0, "accepted": 0, "refused": 0, "internal": 0, "closed": 0, "accepted_rows": 0}
    url = base_url.replace("http://", "ws://") + "/ws/chat/"
    while result["sent"] < count:
        async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": base_url}, max_size=None) as socket_:
            try:
                while result["sent"] < count:
                    frame = random_frame(rng)
                    await socket_.send(frame)
                    result["sent"] += 1
                    if not _is_stop(frame):  # a stop with nothing running gets no answer
                        await _answer(socket_, result)
            except websockets.ConnectionClosed:
                result["closed"] += 1
    return result


def _is_stop(text: str) -> bool:
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(frame, dict) and frame.get("type") == "stop"


async def _answer(socket_, result: dict) -> None:
    """Read until the frame's answer: an error, or a reply's end (each accepted send is two rows)."""
    while True:
        frame = json.loads(await asyncio.wait_for(socket_.recv(), 60))
        if frame["type"] == "error" and "message" not in frame:
            result["internal" if frame["code"] == "internal" else "refused"] += 1
            return
        if frame["type"] == "message.created":
            result["accepted"] += 1
            result["accepted_rows"] += 2
        if frame["type"] in ("done", "error"):
            return


async def _bodies(base_url: str, key: str, rng: random.Random, count: int) -> dict:
    result = {"sent": 0, "statuses": {}, "5xx": 0, "accepted_rows": 0}
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        for _ in range(count):
            body = random_body(rng, model)
            response = await client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
            result["sent"] += 1
            result["statuses"][response.status_code] = result["statuses"].get(response.status_code, 0) + 1
            if response.status_code >= 500:
                result["5xx"] += 1
                print(f"  {response.status_code} for {body[:200]!r}: {response.text[:200]}", file=sys.stderr)
            elif response.status_code == 200:
                # The call's messages and its replies, all in a conversation of their own.
                sent = json.loads(body)
                result["accepted_rows"] += len(sent["messages"]) + len(response.json()["choices"])
    return result


def _rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM chatsite_message").fetchone()[0]


if __name__ == "__main__":
    sys.exit(main())
