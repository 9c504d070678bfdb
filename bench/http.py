"""(d) End to end: N concurrent streaming clients through /v1/chat/completions on a running
server, default model, driven by a light httpx client. Either mode of the README: embedded
(one daphne process, SQLite, the worker in a thread of it) or distributed (daphne and a
`celery worker` process, PostgreSQL, Redis)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.prompts import question

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NEW_TOKENS = 64
PORT = 8765
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/7"  # a database of its own, emptied when a distributed server starts


class HttpBench:
    """A daphne server of its own (SQLite in a temporary folder; or PostgreSQL, Redis and a
    worker process when distributed; CHAT_MAX_RUNNING=32) and a client for it. The openai
    client is not used here: its per-chunk parsing would take CPU from the server on this
    2-core machine (the tests use it)."""

    def __init__(self, port: int = PORT, settings: dict[str, str] | None = None, distributed: bool = False) -> None:
        """`settings`: environment variables for the server, over the defaults below.
        `distributed`: a fresh PostgreSQL database, Redis, and a worker process of its own."""
        self._data = tempfile.TemporaryDirectory()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        # A quota the benchmark's hundreds of requests cannot exhaust; its checks still run.
        env.update(CHATSITE_DATA_DIR=self._data.name, CHAT_MAX_RUNNING="32", LOG_LEVEL="WARNING",
                   FREE_MESSAGES_PER_WINDOW="1000000")
        self._database = None
        if distributed:
            self._database = self._create_database()
            env.update(DATABASE_URL=f"{POSTGRES}/{self._database}", REDIS_URL=REDIS, DJANGO_SECRET_KEY="bench-" + uuid.uuid4().hex)
            import redis

            redis.Redis.from_url(REDIS).flushdb()
        env.update(settings or {})
        manage = [str(BIN / "python"), "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        created = subprocess.run(
            [*manage, "shell", "-c",
             "from django.contrib.auth import get_user_model; from billing.api_keys import api_key_create;"
             "u = get_user_model().objects.create_user('bench'); print(api_key_create(user=u, name='bench')[1])"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout
        key = re.search(r"cs-[\w-]+", created).group(0)
        self._log = open(Path(self._data.name) / "daphne.log", "w")
        self._server = subprocess.Popen(
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._worker = None
        if distributed:
            self._worker = subprocess.Popen(
                [str(BIN / "celery"), "-A", "chatsite", "worker", "-Q", "plus,free", "--loglevel", "WARNING"],
                cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            )
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=600,
            limits=httpx.Limits(max_connections=64),
        )
        self.model = self._loop.run_until_complete(self._ready())

    async def _ready(self) -> str:
        for _ in range(600):  # up, and its model loaded once a request completes
            try:
                model = (await self._client.get("/models")).json()["data"][0]["id"]
                await self._one(model, 0)
                return model
            except httpx.TransportError:
                await asyncio.sleep(0.5)
        raise RuntimeError("the benchmark server did not start")

    async def _one(self, model: str, n: int) -> int:
        body = {
            "model": model, "messages": [{"role": "user", "content": question(n)}], "max_tokens": NEW_TOKENS,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
        }
        tokens = 0
        async with self._client.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if '"usage"' in line:
                    tokens = json.loads(line[len("data: "):])["usage"]["completion_tokens"]
        return tokens

    def run(self, n: int) -> dict:
        """n concurrent streams; aggregate completion tokens per second."""
        async def wave():
            started = time.perf_counter()
            tokens = sum(await asyncio.gather(*(self._one(self.model, i) for i in range(n))))
            return tokens / (time.perf_counter() - started)

        return {"tok_s": self._loop.run_until_complete(wave())}

    @staticmethod
    def _create_database() -> str:
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()
        for process in (self._server, self._worker):
            if process:
                process.terminate()
                process.wait(30)
        self._log.close()
        self._data.cleanup()
        if self._database:
            import psycopg

            with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')


def _server_thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds used so far by each thread of process `pid` (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        used[tid] = (int(fields[11]) + int(fields[12])) / tick
    return used


def main() -> None:
    """`python -m bench.http 32 32 32`: bursts of N streams against one server, each with its
    tokens/s and where the CPU went: the server's two busiest threads (the engine's torch
    threads), the rest of the server, and this client."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("streams", nargs="+", type=int)
    args = parser.parse_args()
    bench = HttpBench()
    try:
        for n in args.streams:
            before, client_before = _server_thread_cpu_s(bench._server.pid), time.process_time()
            started = time.perf_counter()
            tok_s = bench.run(n)["tok_s"]
            wall = time.perf_counter() - started
            after = _server_thread_cpu_s(bench._server.pid)
            used = sorted((after[tid] - before.get(tid, 0.0) for tid in after), reverse=True)
            print(f"x{n:>2}: {tok_s:6.1f} tok/s in {wall:5.2f} s; CPU s: torch threads {used[0]:.2f} + {used[1]:.2f}, "
                  f"rest of server {sum(used[2:]):.2f}, client {time.process_time() - client_before:.2f}", flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    main()
