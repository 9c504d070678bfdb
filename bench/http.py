"""(d) End to end: N concurrent streaming clients through /v1/chat/completions on a running
server (the embedded mode, default model), measured with a light httpx client."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.prompts import question

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NEW_TOKENS = 64


def _server(data_dir: str) -> tuple[subprocess.Popen, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(CHATSITE_DATA_DIR=data_dir, CHAT_MAX_RUNNING="32", LOG_LEVEL="WARNING")
    subprocess.run([str(BIN / "python"), "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    key = subprocess.run(
        [str(BIN / "python"), "manage.py", "shell", "-c",
         "from django.contrib.auth import get_user_model; from billing.api_keys import api_key_create;"
         "u = get_user_model().objects.create_user('bench'); print(api_key_create(user=u, name='bench')[1])"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    key = re.search(r"cs-[\w-]+", key).group(0)
    port = "8765"
    log = open(Path(data_dir) / "daphne.log", "w")
    server = subprocess.Popen([str(BIN / "daphne"), "-b", "127.0.0.1", "-p", port, "chatsite.asgi:application"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}/v1", key


async def _one(client, model: str, n: int) -> int:
    """One streaming request; returns the completion tokens the final usage chunk reports.
    A plain httpx stream, not the openai client: its per-chunk parsing would take CPU from the
    server on this 2-core machine (the tests use the openai client)."""
    body = {
        "model": model, "messages": [{"role": "user", "content": question(n)}], "max_tokens": NEW_TOKENS,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
    }
    tokens = 0
    async with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if '"usage"' in line:
                tokens = json.loads(line[len("data: "):])["usage"]["completion_tokens"]
    return tokens


async def _run(base_url: str, key: str, engine_rows: dict) -> dict:
    import httpx

    client = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                               limits=httpx.Limits(max_connections=64))
    for _ in range(600):  # the server is up and its model loaded once a request completes
        try:
            model = (await client.get("/models")).json()["data"][0]["id"]
            await _one(client, model, 0)
            break
        except httpx.TransportError:
            await asyncio.sleep(0.5)
    results = {}
    for n in (1, 8, 32):
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(_one(client, model, i) for i in range(n))))
        tok_s = tokens / (time.perf_counter() - started)
        results[str(n)] = {"tok_s": tok_s, "ratio_to_engine": tok_s / engine_rows[str(n)]["tok_s"]}
        print(f"(d) http x{n:>2}: {tok_s:7.1f} tok/s  {results[str(n)]['ratio_to_engine'] * 100:.0f} % of the engine alone")
    await client.aclose()
    return results


def http_bench(engine_rows: dict) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        server, base_url, key = _server(data_dir)
        try:
            return asyncio.run(_run(base_url, key, engine_rows))
        finally:
            server.terminate()
            server.wait(30)
