"""(d) End to end: N concurrent streaming clients through /v1/chat/completions on a running
server, default model, driven by a minimal HTTP/1.1 client (h11 on asyncio). Either mode (docs/operations.md): embedded
(one daphne process, SQLite, the worker in a thread of it) or distributed (daphne and a
`celery worker` process, PostgreSQL, Redis)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import h11

from bench.prompts import question

ROOT = Path(__file__).resolve().parents[1]
# This interpreter, so that the same runs where packages were installed with `pip --target`
# and no console scripts are on the PATH (a lent GPU machine).
PYTHON = sys.executable
NEW_TOKENS = 64
PORT = 8765
# Twisted (under daphne) closes a keep-alive connection idle for 60 s; one kept longer than
# this is not reused (bench.compare leaves a server idle that long while the others run).
KEEP_IDLE_S = 30.0
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/7"  # a database of its own, emptied when a distributed server starts


class _Connection:
    """One keep-alive HTTP/1.1 connection to the server, spoken with h11 on asyncio's streams:
    about the least CPU a client can take per streamed chunk (0.05 CPU-seconds a 32-stream
    burst, against 0.17 for httpx's layers above the same h11), as this client shares the
    machine's 2 cores with the server it measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT)
        self.reusable = True
        self.idle_since = time.monotonic()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""):
        """Send one request; yield its status, then each piece of its body as it arrives."""
        self.writer.write(
            self.http.send(h11.Request(method=method, target=target,
                                       headers=[*headers, ("Content-Length", str(len(body)))]))
            + self.http.send(h11.Data(data=body)) + self.http.send(h11.EndOfMessage())
        )
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                yield event.status_code
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if self.http.their_state is h11.DONE:
                    self.http.start_next_cycle()
                else:  # the server closes it after this response
                    self.reusable = False
                    self.writer.close()
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection")


class HttpBench:
    """A daphne server of its own (SQLite in a temporary folder; or PostgreSQL, Redis and a
    worker process when distributed; CHAT_MAX_RUNNING=32) and a client for it. The openai
    client is not used here: its per-chunk parsing would take CPU from the server on this
    2-core machine (the tests use it)."""

    def __init__(self, port: int = PORT, settings: dict[str, str] | None = None, distributed: bool = False,
                 checkout: Path = ROOT, workers: int = 1, web_processes: int = 1) -> None:
        """`settings`: environment variables for the server, over the defaults below.
        `distributed`: a fresh PostgreSQL database, Redis, and a worker process of its own;
        `workers` > 1: that many worker processes, fed by one engine server (`manage.py engine_server`).
        `web_processes` > 1: that many Daphne processes through `python -m chatsite.serve`
        (embedded: each with its worker, and the engine server it starts).
        `checkout`: the source tree the server runs (e.g. a `git worktree` of an older commit),
        with this virtual environment."""
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
        manage = [PYTHON, "manage.py"]
        subprocess.run([*manage, "migrate", "-v0"], cwd=checkout, env=env, check=True)
        created = subprocess.run(
            [*manage, "shell", "-c",
             "from django.contrib.auth import get_user_model; from billing.api_keys import api_key_create;"
             "u = get_user_model().objects.create_user('bench'); print(api_key_create(user=u, name='bench')[1])"],
            cwd=checkout, env=env, check=True, capture_output=True, text=True,
        ).stdout
        key = re.search(r"cs-[\w-]+", created).group(0)
        self._log = open(Path(self._data.name) / "daphne.log", "w")  # noqa: SIM115 - closed in close()
        self._workers: list[subprocess.Popen] = []
        self._web_pids: list[int] = []  # the launcher's children, where there are several web processes
        if web_processes > 1:
            env["CHAT_WEB_PROCESSES"] = str(web_processes)
            self._server = subprocess.Popen(
                [PYTHON, "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(port)],
                cwd=checkout, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            )
        else:
            self._server = subprocess.Popen(
                [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
                cwd=checkout, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            )
        if distributed and workers > 1:
            env["CHAT_ENGINE_ADDRESS"] = str(Path(self._data.name) / "engine.sock")
            self._workers.append(subprocess.Popen([*manage, "engine_server"], cwd=checkout, env=env,
                                                  stdout=self._log, stderr=subprocess.STDOUT))
        for index in range(workers if distributed else 0):
            self._workers.append(subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "chatsite", "worker", "-Q", "plus,free", "--loglevel", "WARNING",
                 "-n", f"bench{index}@%h"],
                cwd=checkout, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            ))
        self._loop = asyncio.new_event_loop()
        self._port = port
        self._headers = [("Host", f"127.0.0.1:{port}"), ("Authorization", f"Bearer {key}"),
                         ("Content-Type", "application/json")]
        self._idle: list[_Connection] = []  # kept open between bursts, as a pooling client does
        self.model = self._loop.run_until_complete(self._ready())

    async def _request(self, method: str, target: str, body: bytes = b""):
        """Yield the body of one request's response as it arrives, on an idle connection or a
        new one; raises on a status other than 200."""
        while self._idle and time.monotonic() - self._idle[-1].idle_since > KEEP_IDLE_S:
            self._idle.pop().writer.close()
        connection = self._idle.pop() if self._idle else _Connection(*await asyncio.open_connection("127.0.0.1", self._port))
        pieces = connection.request(method, target, self._headers, body)
        status = await anext(pieces)
        if status != 200:
            raise RuntimeError(f"{method} {target} answered {status}")
        async for piece in pieces:
            yield piece
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)

    async def _ready(self) -> str:
        for _ in range(600):  # up, and its model loaded once a request completes
            try:
                listing = b"".join([piece async for piece in self._request("GET", "/v1/models")])
                model = json.loads(listing)["data"][0]["id"]
                await self._one(model, 0)
                return model
            except OSError:
                await asyncio.sleep(0.5)
        raise RuntimeError("the benchmark server did not start")

    async def _one(self, model: str, n: int, new_tokens: int = NEW_TOKENS) -> tuple[int, float, float]:
        """One streamed request: its completion tokens, the seconds until the first text of its
        answer arrived, and until the stream opened (the call admitted and its reply queued)."""
        body = {
            "model": model, "messages": [{"role": "user", "content": question(n)}], "max_tokens": new_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
        }
        tokens, tail, first, opened = 0, b"", None, None
        started = time.perf_counter()
        async for piece in self._request("POST", "/v1/chat/completions", json.dumps(body).encode()):
            if opened is None:
                opened = time.perf_counter() - started
            lines = (tail + piece).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if first is None and b'"content": "' in line and _has_text(line):
                    # The answer's first text; the opening chunk (role, empty content) is not.
                    first = time.perf_counter() - started
                if b'"usage"' in line:  # the last chunk (include_usage)
                    tokens = json.loads(line[len(b"data: "):])["usage"]["completion_tokens"]
        ended = time.perf_counter() - started
        return tokens, first if first is not None else ended, opened if opened is not None else ended

    def run(self, n: int, new_tokens: int = NEW_TOKENS) -> dict:
        """n concurrent streams; aggregate completion tokens per second, the times to the
        first text of an answer (median, 90th percentile, longest), the median time until a
        stream opened (`opened_p50_s`: the call admitted, its reply queued), and the CPU seconds the
        server spent meanwhile: `torch_cpu_s` in its two busiest threads (the engine's torch
        threads), `rest_cpu_s` in all the others (the web, the database, the tasks). In the
        distributed mode only the web process is counted there, and `worker_cpu_s` holds the
        CPU seconds of each worker process with its engine process (the engine server's last,
        where there is one); with several web processes, `worker_cpu_s` holds each one's and
        the engine server's (last)."""
        async def wave():
            started = time.perf_counter()
            answers = await asyncio.gather(*(self._one(self.model, i, new_tokens) for i in range(n)))
            return sum(answer[0] for answer in answers) / (time.perf_counter() - started), answers

        if "chatsite.serve" in self._server.args and not self._web_pids:
            children = [int(pid) for pid in Path(f"/proc/{self._server.pid}/task/{self._server.pid}/children").read_text().split()]
            # the Daphne processes first, the engine server last
            self._web_pids = sorted(children, key=lambda pid: b"engine_server" in Path(f"/proc/{pid}/cmdline").read_bytes())
        web_before = [tree_cpu_s(pid) for pid in self._web_pids]
        before = thread_cpu_s(self._server.pid)
        workers_before = [tree_cpu_s(worker.pid) for worker in self._workers]
        tok_s, answers = self._loop.run_until_complete(wave())
        ttfts, opened = [answer[1] for answer in answers], [answer[2] for answer in answers]
        after = thread_cpu_s(self._server.pid)
        workers_cpu = [tree_cpu_s(worker.pid) - used
                       for worker, used in zip(self._workers, workers_before, strict=True)]
        workers_cpu = workers_cpu[1:] + workers_cpu[:1] if len(workers_cpu) > 1 else workers_cpu
        if self._web_pids:  # each web process (its worker with it), then the engine server
            workers_cpu = [tree_cpu_s(pid) - used for pid, used in zip(self._web_pids, web_before, strict=True)]
        used = sorted((after[tid] - before.get(tid, 0.0) for tid in after), reverse=True)
        deciles = statistics.quantiles(ttfts, n=10) if len(ttfts) > 1 else ttfts * 9
        return {"tok_s": tok_s, "ttft_p50_s": statistics.median(ttfts), "ttft_p90_s": deciles[-1], "ttft_max_s": max(ttfts),
                "opened_p50_s": statistics.median(opened),
                "torch_cpu_s": sum(used[:2]), "rest_cpu_s": sum(used[2:]), "worker_cpu_s": workers_cpu}

    @staticmethod
    def _create_database() -> str:
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def close(self) -> None:
        for connection in self._idle:
            connection.writer.close()
        self._loop.close()
        for process in (self._server, *self._workers[::-1]):  # the engine server, where there is one, last
            process.terminate()
            process.wait(30)
        self._log.close()
        self._data.cleanup()
        if self._database:
            import psycopg

            with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')


def thread_cpu_s(pid: int) -> dict[str, float]:
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


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by process `pid` and its children, theirs too (Linux)."""
    total = sum(thread_cpu_s(pid).values())
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu_s(int(child)) for child in children)
    return total


def _has_text(line: bytes) -> bool:
    """Whether an SSE `data:` line's chunk carries some of the answer's text."""
    chunk = json.loads(line[len(b"data: "):])
    return any(choice.get("delta", {}).get("content") for choice in chunk.get("choices", ()))


def main() -> None:
    """`python -m bench.http 32 32 32`: bursts of N streams against one server, each with its
    tokens/s and where the CPU went: the engine's torch threads, the rest of the server, and
    this client."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("streams", nargs="+", type=int)
    args = parser.parse_args()
    bench = HttpBench()
    try:
        for n in args.streams:
            client_before = time.process_time()
            started = time.perf_counter()
            result = bench.run(n)
            wall = time.perf_counter() - started
            print(f"x{n:>2}: {result['tok_s']:6.1f} tok/s in {wall:5.2f} s; CPU s: torch threads {result['torch_cpu_s']:.2f}, "
                  f"rest of server {result['rest_cpu_s']:.2f}, client {time.process_time() - client_before:.2f}", flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    main()
