"""`make soak`: many socket users chatting for minutes against the distributed set-up, or
with `--embedded` against the `make run` one.

Starts daphne and a `celery worker` process (as `make worker` runs it) on a fresh PostgreSQL
database and Redis (database 14), or `--embedded` the server alone (its worker in-process,
SQLite), with the tiny model (`--real-model` for SmolLM2); creates USERS accounts with
sessions, and has each chat over its own WebSocket for DURATION seconds, one turn after
another with a pause of 0.5-2 s (TURNS: send and read to the end; send and stop; regenerate;
send and reload mid-answer, resuming on a new socket; edit the last question; continue an
answer cut at its length; send with a second tab open on the conversation, which follows
the reply too and sometimes stops it). Reports the turns, how their answers ended, and the
time to first token. A turn is lost when its socket got no end within TIMEOUT (or its row is
not finished a while after the run); failed when the server answered with an error
(`errors` counts them by code and text: nothing these users do should be refused); garbled
when the text assembled from its token frames, by their offsets as the page does, is not the
end's `content`, or the two tabs saw different ends (`errors` says which turn and why).
`stray` counts frames of a reply other than the one a turn follows, which the page ignores;
`healed`, turns whose socket missed a frame and asked for the text again, and whose end,
which the page shows, came first with the whole text. `--api`: API clients instead, one in
ten on Plus, each call drawn from API_TURNS (streamed, left at the first chunk, whole, `n`,
`best_of`, a parameter out of range, one seeded call sent twice at once: `seed_differs`
counts the pairs whose texts differ, which seeds allow in a shared batch) with its sampling
drawn from SAMPLINGS; the report adds each plan's time to first text. Exits 1 if any turn is
lost, failed or garbled, or a server process logged a traceback.

    .venv/bin/python -m tests.soak [--users 200] [--duration 180] [--embedded] [--api] [--real-model] [--set VAR=value]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import redis
import websockets

from tests.e2e.servers import Daphne, celery_worker, manage, server_env
from tests.postgres import fresh_database
from tests.tiny_model import build_tiny_model

REDIS_URL = "redis://127.0.0.1:6379/14"
TIMEOUT_S = 120.0  # a reply with no end by then is lost
SETTLE_S = 60.0  # after the run, how long unfinished rows may take to end

# Creates the users and a logged-in session for each, printing their session keys.
CREATE_SESSIONS = """
import json
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.backends.db import SessionStore
User = get_user_model()
password = make_password(None)
users = User.objects.bulk_create([User(username=f"soak{n}", password=password) for n in range({users})])
keys = []
for user in User.objects.filter(username__startswith="soak").order_by("id"):
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys.append(session.session_key)
print(json.dumps(keys))
"""

# Creates the users and an API key for each (`--api`), one in ten on Plus, printing the keys.
CREATE_API_KEYS = """
import json
from django.contrib.auth import get_user_model
from billing.api_keys import api_key_create
from billing.models import PlanGrant
User = get_user_model()
User.objects.bulk_create([User(username=f"soak{n}") for n in range({users})])
users = list(User.objects.filter(username__startswith="soak").order_by("id"))
PlanGrant.objects.bulk_create([PlanGrant(user=user, reason="soak") for user in users[::10]])
print(json.dumps([{"key": api_key_create(user=user, name="soak")[1], "plus": n % 10 == 0} for n, user in enumerate(users)]))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--real-model", action="store_true", help="SmolLM2 instead of the tiny random model")
    parser.add_argument("--embedded", action="store_true",
                        help="the `make run` set-up instead: one server process with its worker, SQLite")
    parser.add_argument("--api", action="store_true",
                        help="API clients instead: streamed /v1/chat/completions, a third leaving at the first chunk")
    parser.add_argument("--trace", metavar="FILE",
                        help="write each garbled or refused turn's last frames there, a JSON object a line")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=value",
                        help="a server setting, e.g. CHAT_RUNNER=gpu (repeatable)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="chatsite-soak-"))
    env = server_env(
        CHATSITE_DATA_DIR=str(folder), FREE_MESSAGES_PER_WINDOW="100000", FREE_MAX_OUTPUT_TOKENS="64",
        PLUS_MESSAGES_PER_WINDOW="100000", PLUS_MAX_OUTPUT_TOKENS="64", CHAT_MAX_RUNNING="64", LOG_LEVEL="WARNING",
    )
    if not args.real_model:
        env.update(CHAT_MODEL=str(build_tiny_model(folder / "model")), CHAT_DTYPE="fp32")
    env.update(item.split("=", 1) for item in args.set)
    if args.embedded:
        report = _soak(env, folder, args, connect=lambda: sqlite3.connect(folder / "db.sqlite3"), worker=False)
    else:
        redis.Redis.from_url(REDIS_URL).flushdb()
        with fresh_database("chatsite_soak") as database_url:
            env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, DJANGO_SECRET_KEY="soak-" + uuid.uuid4().hex)
            report = _soak(env, folder, args, connect=lambda: psycopg.connect(database_url), worker=True)
        redis.Redis.from_url(REDIS_URL).flushdb()
    traces = report.pop("traces")
    if args.trace:
        Path(args.trace).write_text("".join(json.dumps(trace) + "\n" for trace in traces))
    print(json.dumps(report, indent=2))
    ok = (report["lost"] == 0 and report["failed"] == 0 and report["garbled"] == 0
          and report["tracebacks_in_the_logs"] == 0 and report["processes_alive"])
    return 0 if ok else 1


def _soak(env: dict, folder: Path, args, *, connect, worker: bool) -> dict:
    """Run the users against a fresh server (and a `celery worker` where `worker`); the report.
    `connect()` opens a connection to the server's database."""
    manage(env, "migrate", "--noinput")
    keys = json.loads(_shell(env, (CREATE_API_KEYS if args.api else CREATE_SESSIONS).replace("{users}", str(args.users))))
    processes = [celery_worker(env, folder, concurrency=None)] if worker else []  # as `make worker` runs it
    server = Daphne(env, folder)
    processes.append(server)
    try:
        print(f"{args.users} {'API clients' if args.api else 'users'} chatting for {args.duration:.0f} s against "
              f"{server.url} ({'distributed' if worker else 'embedded'}) ...", flush=True)
        results = asyncio.run(_run(server.url, keys, args.duration, _api_client if args.api else _user))
        unfinished = _settle(connect)
        alive = all(process.popen.poll() is None for process in processes)
    finally:
        for process in reversed(processes):
            process.stop()
    tracebacks = sum(process.log().count("Traceback (most recent call last)") for process in processes)
    ttfts = sorted(t for user in results for t in user["ttft"])
    total = {name: sum(user[name] for user in results) for name in ("completed", "failed", "lost", "garbled", "rewatched", "stray", "healed", "seed_differs")}
    counted = {name: sum((user[name] for user in results), collections.Counter()) for name in ("turns", "ends", "errors")}
    return {
        "users": args.users, "duration_s": args.duration, "mode": "distributed" if worker else "embedded",
        "turns": dict(counted["turns"].most_common()), "ends": dict(sorted(counted["ends"].items())),
        **total, "lost": total["lost"] + unfinished, "errors": dict(counted["errors"].most_common()),
        "unfinished_rows_after_the_run": unfinished, "tracebacks_in_the_logs": tracebacks, "processes_alive": alive,
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p95_s": round(ttfts[int(0.95 * (len(ttfts) - 1))], 3) if ttfts else None,
        **({"plus_ttft_p50_s": _median([t for user in results if user.get("plus") for t in user["ttft"]]),
            "free_ttft_p50_s": _median([t for user in results if not user.get("plus") for t in user["ttft"]])}
           if args.api else {}),
        "traces": [trace for user in results for trace in user["traces"]],
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def _run(base_url: str, keys: list[str], duration: float, user) -> list[dict]:
    deadline = time.monotonic() + duration
    return await asyncio.gather(*(user(base_url, key, deadline, random.Random(n)) for n, key in enumerate(keys)))


def _result() -> dict:
    return {"completed": 0, "failed": 0, "lost": 0, "garbled": 0, "rewatched": 0, "stray": 0, "healed": 0, "seed_differs": 0,
            "ttft": [], "traces": [], "seen": [],
            "errors": collections.Counter(), "turns": collections.Counter(), "ends": collections.Counter()}


# What a user does each turn, and how often: send and read the answer to its end; send and
# stop the answer at its first text; ask for another answer to the last question; send and
# reload at the first text (the page, then a new socket that resumes the reply from what the
# page has); edit the last question; continue an answer cut at its length limit; send with a
# second tab open on the conversation, which follows the reply too (and stops it at its first
# text a quarter of the time: any tab may); show another answer of the last question (‹ ›)
# and send below it; delete the conversation and start a new one.
TURNS = {"send": 5, "stop": 1.5, "regenerate": 1, "reload": 1.5, "edit": 0.75, "continue": 0.75, "tab": 1,
         "branch": 2, "delete": 0.3}


async def _user(base_url: str, session_key: str, deadline: float, rng: random.Random) -> dict:
    result = _result()
    await asyncio.sleep(rng.uniform(0, 5))  # users arrive over a few seconds
    chat = _new_chat()
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, cookies={"sessionid": session_key}) as http:
        while time.monotonic() < deadline:
            socket_ = None
            try:
                if "csrftoken" not in http.cookies:  # the page sets it; its requests send it back
                    (await http.get("/chat/")).raise_for_status()
                socket_ = await _connect(http)
                while time.monotonic() < deadline:
                    kinds = [kind for kind in TURNS if _possible(kind, chat)]
                    kind = rng.choices(kinds, [TURNS[kind] for kind in kinds])[0]
                    result["turns"][kind] += 1
                    socket_ = await _turn(socket_, kind, chat, result, rng, http)
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
            except (TimeoutError, websockets.ConnectionClosed, OSError, httpx.HTTPError):
                result["lost"] += 1
            finally:
                if socket_ is not None:
                    await socket_.close()
    return result


def _new_chat() -> dict:
    """What the page knows of the conversation it shows: its last reply, that reply's question,
    its alternatives, how it ended and its length."""
    return {"conversation": None, "reply": None, "question": None, "parent": None, "siblings": [], "finish": None,
            "length": 0}


def _possible(kind: str, chat: dict) -> bool:
    if kind in ("regenerate", "edit", "tab", "delete"):
        return chat["reply"] is not None
    if kind == "continue":
        return chat["finish"] == "length"
    if kind == "branch":
        return len(chat["siblings"]) > 1
    return True


async def _connect(http: httpx.AsyncClient):
    """A socket of the page `http` browses as (its session cookie)."""
    base_url = str(http.base_url).rstrip("/")
    return await websockets.connect(base_url.replace("http://", "ws://") + "/ws/chat/", open_timeout=60, additional_headers={
        "Cookie": f"sessionid={http.cookies['sessionid']}", "Origin": base_url})


async def _post(http: httpx.AsyncClient, url: str, body: dict, result: dict, kind: str) -> dict | None:
    """A JSON request of the page's; its answer, or None (counted as failed) when refused."""
    response = await http.post(url, json=body, headers={"X-CSRFToken": http.cookies["csrftoken"]})
    if response.status_code != 200:
        result["failed"] += 1
        result["errors"][f"{kind}: {response.status_code} {response.text[:200]}"] += 1
        return None
    return response.json()


async def _turn(socket_, kind: str, chat: dict, result: dict, rng: random.Random, http: httpx.AsyncClient):
    """One turn of `kind`, to the reply's end; returns the socket to go on with (a reload opens
    a new one). The text assembled from the token frames, by their offsets as the page does,
    must equal the end's `content`, in a second tab too: else the turn is `garbled`."""
    shown = None  # after a branch switch, the answer a send must continue
    if kind == "branch":
        other = rng.choice([sibling for sibling in chat["siblings"] if sibling != chat["reply"]])
        answer = await _post(http, f"/chat/{chat['conversation']}/branch/", {"message": other}, result, kind)
        if answer is None:
            return socket_
        shown = answer["branch"][-1]
        chat.update(reply=shown["id"], question=answer["branch"][-2]["id"], siblings=shown["siblings"],
                    finish=shown["finish_reason"], length=len(shown["content"]))
    elif kind == "delete":
        if await _post(http, f"/chat/{chat['conversation']}/delete/", {}, result, kind) is None:
            return socket_
        listed = (await http.get("/chat/conversations/")).json()["conversations"]
        if any(conversation["id"] == chat["conversation"] for conversation in listed):
            _garbled(result, kind, "a deleted conversation is still listed")
        chat.update(_new_chat())
    tab = None
    if kind == "tab":  # a second tab showing the conversation: resuming its last reply (ended) answers at once
        tab = await _connect(http)
        await tab.send(json.dumps({"type": "watch", "conversation": chat["conversation"], "message": chat["reply"],
                                   "offset": chat["length"]}))
        while json.loads(await asyncio.wait_for(tab.recv(), TIMEOUT_S))["type"] not in ("done", "error"):
            pass
    sent = time.monotonic()
    content = f"Tell me something, {rng.randrange(10**6)}"
    await socket_.send(json.dumps(
        {"type": "regenerate", "message": chat["reply"]} if kind == "regenerate"
        else {"type": "edit", "message": chat["question"], "content": content} if kind == "edit"
        else {"type": "continue", "message": chat["reply"]} if kind == "continue"
        else {"type": "send", "conversation": chat["conversation"], "content": content}
    ))
    if tab is None:
        socket_, end = await _read(socket_, kind, chat, result, sent, http)
    else:
        second = asyncio.ensure_future(_read(tab, "tab (second)" if rng.random() < 0.75 else "tab (second, stops)",
                                             chat, result, sent, http))
        try:
            socket_, end = await _read(socket_, kind, chat, result, sent, http)
            if end is not None:  # else refused: nothing for the second tab to follow
                _, tab_end = await second
                if (end["type"], end.get("content")) != (tab_end and (tab_end["type"], tab_end.get("content"))):
                    _garbled(result, kind, "the two tabs saw different ends")
        finally:
            second.cancel()
            await tab.close()
    if shown is not None and end is not None and chat["parent"] != shown["id"]:
        _garbled(result, kind, "a send after showing another answer did not continue it")
    if end and end["type"] == "done":
        chat["finish"], chat["length"] = end["finish_reason"], len(end["content"])
    return socket_


async def _read(socket_, kind: str, chat: dict, result: dict, sent: float, http: httpx.AsyncClient):
    """Read one reply on `socket_` to its end; (the socket to go on with, the end frame or None
    on a refusal)."""
    second_tab = kind.startswith("tab (")  # it follows what the first tab does and counts only where they differ
    reply, text, first_token, rewatching = None, "", None, False
    while True:
        frame = json.loads(await asyncio.wait_for(socket_.recv(), TIMEOUT_S))
        result["seen"] = [*result["seen"][-11:], {key: len(value) if key in ("text", "content", "branch") else value
                                                   for key, value in frame.items()}]
        if frame["type"] in ("token", "done", "error") and frame.get("message", reply) != reply:
            # Of a reply the page no longer follows (the answer to a watch sent for a gap just
            # before the reply ended): the page ignores it too. One that comes before its
            # reply's message.created leaves the turn without an end, and the turn is lost.
            result["stray"] += 1
            continue
        if frame["type"] == "message.created":
            reply, text = frame["message"]["id"], frame["message"]["content"]  # a continuation goes on from its text
            if not second_tab:
                siblings = next((m["siblings"] for m in frame["branch"] if m["id"] == reply), [])
                chat.update(conversation=frame["conversation"]["id"], reply=reply, question=frame["user_message"]["id"],
                            parent=frame["user_message"]["parent"], siblings=siblings)
        elif frame["type"] == "token":
            offset = frame["offset"]
            if offset <= len(text) and text[offset:offset + len(frame["text"])] != frame["text"][:len(text) - offset]:
                _garbled(result, kind, "a token frame's text disagrees with what came before")
            if offset > len(text):  # a frame was missed (dropped while the layer was slow): resume, as the page does
                result["rewatched"] += 1
                rewatching = True
                await socket_.send(json.dumps({"type": "watch", "conversation": chat["conversation"], "message": reply,
                                               "offset": len(text)}))
                continue
            text = max(text, text[:offset] + frame["text"], key=len)
            if first_token is None:
                first_token = time.monotonic() - sent
                if not second_tab:
                    result["ttft"].append(first_token)
                if kind in ("stop", "tab (second, stops)"):
                    await socket_.send(json.dumps({"type": "stop", "message": reply}))
                elif kind == "reload":  # the page again, then its socket
                    await socket_.close()
                    page = await http.get(f"/chat/{chat['conversation']}/")
                    if page.status_code != 200:
                        result["errors"][f"reload: the page answered {page.status_code}"] += 1
                        result["failed"] += 1
                    socket_ = await _connect(http)
                    await socket_.send(json.dumps({"type": "watch", "conversation": chat["conversation"],
                                                   "message": reply, "offset": len(text)}))
        elif frame["type"] == "done":
            if not second_tab:
                result["completed"] += 1
            result["ends"][f"{kind}: {frame['status']}"] += 1
            if frame["content"] != text:
                if rewatching and frame["content"].startswith(text):
                    result["healed"] += 1  # it ended before the watch's answer: the page shows the end's text
                else:
                    _garbled(result, kind, "the assembled text is not the end's content")
            return socket_, frame
        elif frame["type"] == "error":
            if not second_tab:
                result["failed"] += 1
            result["errors"][f"{frame.get('code')}: {frame.get('error')}"] += 1
            result["traces"].append({"turn": kind, "why": frame.get("code"), "chat": dict(chat), "frames": result["seen"]})
            return socket_, frame if frame.get("code") == "generation_failed" else None


# What an API client does each call: read a streamed answer to its end, or leave at its first
# chunk (which stops the reply: nobody can read it); ask for a whole answer at once; ask for
# several answers (`n`) or the best of several candidates (Plus only); send a call with a
# parameter out of range (a 400 that must change nothing for anyone else); send the same
# seeded call twice at once (their texts compared: `seed_differs`). Each call draws its
# sampling from SAMPLINGS, so every batch mixes greedy rows with sampled, penalised and
# stopping ones.
API_TURNS = {"stream": 4, "leave": 2, "whole": 1.5, "n": 1, "best_of": 0.5, "bad": 0.5, "seeded": 0.5}
SAMPLINGS = (
    {},
    {"temperature": 0},
    {"temperature": 0.8, "top_p": 0.9},
    {"temperature": 1.2, "top_k": 40},
    {"temperature": 0.7, "repetition_penalty": 1.3},
    {"temperature": 1.0, "seed": 7},
    {"stop": ["e"]},
    {"temperature": 0.9, "stop": ["a", "o"], "max_tokens": 24},
    {"min_tokens": 20, "max_tokens": 32},
)
BAD_CALLS = (  # each must be a 400 with OpenAI's error object
    {"temperature": 5},
    {"top_p": 0},
    {"top_k": -5},
    {"repetition_penalty": 0},
    {"max_tokens": 10**6},
    {"stop": ["x" * 300]},
    {"seed": -1},
    {"n": 0},
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
)


async def _api_user(base_url: str, key: str, deadline: float, rng: random.Random, *, plus: bool = False) -> dict:
    """Calls of /v1/chat/completions, one after another; each call's answer is checked (a choice
    per `n`, each with its finish_reason, no stop string in a text, `[DONE]` after a stream),
    else the call is `garbled`."""
    result = {**_result(), "plus": plus}
    await asyncio.sleep(rng.uniform(0, 5))
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, headers={"Authorization": f"Bearer {key}"}) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]  # the tiny model's or SmolLM2's name
        while time.monotonic() < deadline:
            kinds = [kind for kind in API_TURNS if plus or kind not in ("n", "best_of")]
            kind = rng.choices(kinds, [API_TURNS[kind] for kind in kinds])[0]
            result["turns"][kind] += 1
            body = {"model": model, "messages": [{"role": "user", "content": f"Hi, {rng.randrange(10**6)}"}],
                    **rng.choice(SAMPLINGS), "stream": kind in ("stream", "leave") or rng.random() < 0.5}
            if kind == "n":
                body["n"] = rng.randint(2, 4)
            elif kind == "best_of":
                body["best_of"] = rng.randint(2, 4)
            try:
                if kind == "bad":
                    await _api_bad(http, body, rng.choice(BAD_CALLS), result)
                elif kind == "seeded":
                    body.update(temperature=1.0, seed=rng.randrange(2**32), stream=False)
                    first, second = await asyncio.gather(_api_call(http, body, kind, result),
                                                         _api_call(http, body, kind, result))
                    if first is not None and second is not None:
                        # Seeds are best effort in a shared batch (docs/engine.md#sampling): counted, not a fault.
                        result["seed_differs"] += first != second
                else:
                    await _api_call(http, body, kind, result)
            except (httpx.HTTPError, OSError) as error:
                result["lost"] += 1
                result["errors"][f"lost ({kind}, {'Plus' if plus else 'Free'}): {error!r}"[:200]] += 1
            await asyncio.sleep(rng.uniform(0.1, 0.5))
    return result


async def _api_bad(http: httpx.AsyncClient, body: dict, bad: dict, result: dict) -> None:
    response = await http.post("/v1/chat/completions", json={**body, **bad})
    error = response.json().get("error") if response.headers.get("content-type", "").startswith("application/json") else None
    if response.status_code == 400 and isinstance(error, dict) and error.get("message"):
        result["ends"]["bad: 400"] += 1
    else:
        result["failed"] += 1
        result["errors"][f"bad {sorted(bad)}: {response.status_code} {response.text[:150]}"] += 1


async def _api_call(http: httpx.AsyncClient, body: dict, kind: str, result: dict) -> list[str] | None:
    """One call; its choices' texts when it was read to its end and every check held, else None."""
    sent = time.monotonic()
    if not body["stream"]:
        response = await http.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            result["failed"] += 1
            result["errors"][f"{response.status_code}: {response.text[:200]}"] += 1
            return None
        result["ttft"].append(time.monotonic() - sent)
        choices = response.json()["choices"]
        texts = {choice["index"]: choice["message"]["content"] for choice in choices}
        finishes = {choice["index"]: choice["finish_reason"] for choice in choices}
        return _api_checked(body, kind, texts, finishes, result)
    texts, finishes, done, first_text = collections.defaultdict(str), {}, False, True
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            result["failed"] += 1
            result["errors"][f"{response.status_code}: {(await response.aread()).decode()[:200]}"] += 1
            return None
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
                break
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                result["failed"] += 1
                result["errors"][f"stream: {chunk['error'].get('message')}"] += 1
                return None
            for choice in chunk.get("choices") or []:
                texts[choice["index"]] += choice.get("delta", {}).get("content") or ""
                if choice.get("finish_reason"):
                    finishes[choice["index"]] = choice["finish_reason"]
            if first_text and any(texts.values()):
                first_text = False
                result["ttft"].append(time.monotonic() - sent)
                if kind == "leave":
                    result["ends"]["leave: left"] += 1
                    return None
    if not done:
        _garbled(result, kind, "the stream ended without [DONE]")
        return None
    return _api_checked(body, kind, dict(texts), finishes, result)


def _api_checked(body: dict, kind: str, texts: dict, finishes: dict, result: dict) -> list[str] | None:
    expected = list(range(body.get("n", 1)))
    if sorted(finishes) != expected:
        _garbled(result, kind, f"finish_reason for choices {sorted(finishes)}, expected {expected}")
        return None
    stops = body.get("stop") or []
    if any(stop in text for stop in stops for text in texts.values()):
        _garbled(result, kind, "a stop string in the text")
        return None
    result["completed"] += 1
    for finish in finishes.values():
        result["ends"][f"{kind}: {finish}"] += 1
    return [texts.get(index, "") for index in expected]


async def _api_client(base_url: str, entry: dict, deadline: float, rng: random.Random) -> dict:
    return await _api_user(base_url, entry["key"], deadline, rng, plus=entry["plus"])


def _garbled(result: dict, kind: str, why: str) -> None:
    result["garbled"] += 1
    result["errors"][f"garbled ({kind}): {why}"] += 1
    result["traces"].append({"turn": kind, "why": why, "frames": result["seen"]})


def _settle(connect) -> int:
    """Replies still unfinished once the workers have had SETTLE_S to end them."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        connection = connect()
        try:
            unfinished = connection.execute(
                "SELECT count(*) FROM chatsite_message WHERE role = 'assistant' AND status IN ('pending', 'streaming')"
            ).fetchone()[0]
        finally:
            connection.close()
        if unfinished == 0 or time.monotonic() > deadline:
            return unfinished
        time.sleep(1)


def _shell(env: dict, code: str) -> str:
    import subprocess

    from tests.e2e.servers import BIN, ROOT

    return subprocess.run([str(BIN / "python"), "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())
