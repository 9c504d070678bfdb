"""An Engine in a process of its own, used through the same calls as one in this process.

A worker's Python threads (one per reply being streamed, the web side in the embedded mode,
the broker's) take turns with the engine's step loop on one interpreter lock. On a CPU the
model's own kernels dominate a step and the lock hardly matters; on a GPU a step is a few
milliseconds of launches and bookkeeping, and every wake of another thread delays it. Here the
engine thread runs alone in a child process: the caller's `submit` and `cancel` go down one
pipe, and the events of every request come back up another, one message per engine step with
each request's new text joined into one event.

    parent: EngineProcess.submit ──("submit", id, prompt, params, ...)──▶ child: Engine.submit
            RemoteRequest.cancel ──("cancel", id, reason)──────────────▶        Request.cancel
            receiver thread ◀──("events", [(id, [TokenEvent…, FinishEvent])…])── relay thread
                            ◀──("stats", {...}) twice a second

If the child dies, every request still open ends as a shutdown ends it (STOPPED, "shutdown"):
the worker gives each reply back with its text so far, and `inference.worker.engine_get`
starts a new child.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from functools import partial
from multiprocessing.connection import Client, Listener
from pathlib import Path

from inference.engine import Engine, EngineConfig, EngineShuttingDown, EngineStats, prompt_check
from inference.heap import heap_freeze
from inference.loading import load_tokenizer, resolve_model_source
from inference.requests import Event, EventStream, FinishEvent, RequestStatus, TokenEvent, Usage
from inference.sampling import SamplingParams

logger = logging.getLogger(__name__)

STATS_EVERY_S = 0.5  # how often the child reports its EngineStats
IDLE_POLL_S = 0.05  # the relay's longest sleep: events sent outside a step wait at most this
SHUTDOWN_GRACE_S = 5.0  # past the engine's own shutdown timeout, before the child is killed
DEFAULT_CONFIG = EngineConfig()


def uses_process(config: EngineConfig) -> bool:
    """Whether `config` asks for an engine process: `process` on, or auto on a CUDA device."""
    if config.process == "auto":
        from inference.runner import pick_device

        return pick_device(config.device).type == "cuda"
    return config.process == "on"


class RemoteRequest(EventStream):
    """A request running in an engine process: read as a Request is; `cancel` is sent on."""

    def __init__(self, owner: EngineProcess, request_id: int, prompt_tokens: int) -> None:
        self.id = request_id
        self.status = RequestStatus.PENDING
        self.finish_reason: str | None = None
        self.usage = Usage(prompt_tokens=prompt_tokens)
        self._owner = owner
        self._events = queue.SimpleQueue()
        self._finished = threading.Event()

    def cancel(self, reason: str = "stop") -> None:
        """Ask the engine to end this request; what was generated so far is kept."""
        self._owner._send(("cancel", self.id, reason))

    def _deliver(self, event: Event) -> None:
        if isinstance(event, FinishEvent):
            self.status, self.finish_reason, self.usage = event.status, event.reason, event.usage
        elif self.status is RequestStatus.PENDING:
            self.status = RequestStatus.STREAMING
        self._events.put(event)
        if isinstance(event, FinishEvent):
            self._finished.set()


class EngineProcess:
    """Thread-safe, as Engine is. `start` returns once the child has loaded the model."""

    def __init__(self, config: EngineConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        # A fresh interpreter running this module, rather than multiprocessing's spawn, which
        # would import the parent's main script again (and fork would copy its threads' locks).
        authkey = secrets.token_bytes(32)
        listener = Listener(family="AF_UNIX", authkey=authkey)
        package_root = str(Path(__file__).resolve().parent.parent)
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "inference.engine_process", listener.address],
            env=environment, stdin=subprocess.PIPE,
        )
        try:
            self._connect(listener, authkey)
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise
        finally:
            listener.close()

    def _connect(self, listener: Listener, authkey: bytes) -> None:
        """Hand the child its key and config and wait until it has loaded the model."""
        config = self.config
        self._process.stdin.write(authkey)
        self._process.stdin.close()
        self._commands = self._accept(listener)
        self._events = self._accept(listener)
        self._commands.send(config)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._requests: dict[int, RemoteRequest] = {}
        self._ids = itertools.count(1)
        self._alive = True
        self._shutting_down = False
        self._stats = EngineStats(max_running=config.max_running, max_kv_tokens=config.max_kv_tokens)
        # The parent needs the tokenizer for prompts; it loads while the child loads the model.
        self.tokenizer = load_tokenizer(resolve_model_source(config.model), allow_download=config.allow_download)
        try:
            message = self._events.recv()
        except EOFError:
            message = ("failed", RuntimeError(f"the engine process exited with code {self._process.wait()}"))
        if message[0] == "failed":
            self._process.wait(SHUTDOWN_GRACE_S)
            raise message[1]
        self.context_length: int = message[1]
        self._receiver = threading.Thread(target=self._receive, name="engine-events", daemon=True)
        self._receiver.start()

    @classmethod
    def start(cls, config: EngineConfig = DEFAULT_CONFIG) -> EngineProcess:
        return cls(config)

    def _accept(self, listener: Listener):
        """The child's next connection; an error if the child exits before it connects."""
        accepted: list = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if self._process.poll() is not None and not accepted:
                raise RuntimeError(f"the engine process exited with code {self._process.returncode} before it connected")
        return accepted[0]

    @property
    def alive(self) -> bool:
        """False once the child has ended (shut down, or died): a new one must be started."""
        return self._alive and not self._shutting_down and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> RemoteRequest:
        """Queue a request in the engine process and return its handle (see Engine.submit)."""
        prompt_check(prompt_ids, context_length=self.context_length, max_kv_tokens=self.config.max_kv_tokens)
        arrival_time = time.time() if arrival_time is None else arrival_time
        with self._lock:
            if not self._alive or self._shutting_down:
                raise EngineShuttingDown("the engine process has stopped")
            request = RemoteRequest(self, next(self._ids), len(prompt_ids))
            self._requests[request.id] = request
        try:
            self._send(("submit", request.id, list(prompt_ids), params, priority, arrival_time))
        except OSError as error:
            with self._lock:
                self._requests.pop(request.id, None)
            raise EngineShuttingDown("the engine process has stopped") from error
        return request

    def snapshot(self) -> EngineStats:
        """The child's EngineStats as it last reported them (at most STATS_EVERY_S old)."""
        return replace(self._stats)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every request (their text so far is kept) and end the child."""
        with self._lock:
            self._shutting_down = True
        with contextlib.suppress(OSError):  # already gone
            self._send(("shutdown", timeout))
        self._receiver.join(timeout + SHUTDOWN_GRACE_S)
        try:
            self._process.wait(SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("the engine process did not stop; killing it")
            self._process.kill()
            self._process.wait()
        self._commands.close()

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._commands.send(message)

    def _receive(self) -> None:
        """Hand each event to its request until the child stops; then end what is still open."""
        while True:
            try:
                message = self._events.recv()
            except (EOFError, OSError):
                break
            if message[0] == "events":
                for request_id, text, index, finish in message[1]:
                    request = self._requests.get(request_id)
                    if request is None:
                        continue
                    if index >= 0:
                        request._deliver(TokenEvent(text=text, index=index))
                    if finish is not None:
                        request._deliver(finish)
                        self._requests.pop(request_id, None)
            elif message[0] == "stats":
                self._stats = EngineStats(**message[1])
            elif message[0] == "stopped":
                break
        with self._lock:
            self._alive = False
            left, self._requests = list(self._requests.values()), {}
        if left and not self._shutting_down:
            logger.error("the engine process ended with %d requests open (exit code %s)", len(left), self._process.poll())
        for request in left:  # as a shutdown ends them: the worker gives each reply back
            request._deliver(FinishEvent(status=RequestStatus.STOPPED, reason="shutdown", usage=request.usage))


class _Relay:
    """The child's side of the events pipe: collects what the engine's requests emit and sends
    it on after each step, one message for the step, from a thread of its own so the engine
    thread never waits on the pipe."""

    def __init__(self, engine: Engine, connection, requests: dict) -> None:
        self._engine = engine
        self._connection = connection
        self._requests = requests
        self._pending: list[tuple[int, Event]] = []
        self._wake = threading.Condition()
        self._closed = False
        self._last_stats = 0.0
        engine.after_step = self.wake
        self._thread = threading.Thread(target=self._run, name="engine-relay", daemon=True)
        self._thread.start()

    def add(self, request_id: int, event: Event) -> None:
        """The sink of request `request_id` (called by the engine's thread)."""
        with self._wake:
            self._pending.append((request_id, event))
        if isinstance(event, FinishEvent):
            self._requests.pop(request_id, None)

    def wake(self) -> None:
        with self._wake:
            if self._pending:
                self._wake.notify()

    def close(self) -> None:
        """Send what is left, then "stopped"."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._pending and not self._closed:
                    self._wake.wait(IDLE_POLL_S)
                batch, self._pending = self._pending, []
                closed = self._closed
            try:
                if batch:
                    self._connection.send(("events", coalesce(batch)))
                now = time.monotonic()
                if now - self._last_stats >= STATS_EVERY_S:
                    self._last_stats = now
                    self._connection.send(("stats", asdict(self._engine.snapshot())))
                if closed:
                    self._connection.send(("stopped",))
                    return
            except OSError:  # the parent is gone; the command loop sees it too and shuts down
                return


def coalesce(batch: list[tuple[int, Event]]) -> list[tuple[int, str, int, FinishEvent | None]]:
    """What a step's events cross the pipe as, per request in order of first appearance: the
    text of all its TokenEvents joined, the index of the first (-1: none), and its
    FinishEvent or None (a request's finish is its last event). Grouping and pickling a step
    of 256 requests' tokens this way takes 0.14 ms where TokenEvent objects took 0.52 ms (Zen
    3): the engine process's time, taken from its step loop's interpreter lock."""
    grouped: dict[int, list] = {}
    for request_id, event in batch:
        entry = grouped.get(request_id)
        if entry is None:
            entry = grouped[request_id] = [request_id, "", -1, None]
        if isinstance(event, TokenEvent):
            entry[1] += event.text
            if entry[2] < 0:
                entry[2] = event.index
        else:
            entry[3] = event
    return [tuple(entry) for entry in grouped.values()]


def _serve(address: str, authkey: bytes) -> None:
    """The child process: connect to the parent, load the engine, then obey commands until
    shutdown or the parent goes."""
    # Ctrl-C reaches the whole process group; the parent decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine-process %(levelname)s %(name)s: %(message)s")
    commands = Client(address, family="AF_UNIX", authkey=authkey)
    events = Client(address, family="AF_UNIX", authkey=authkey)
    config: EngineConfig = commands.recv()
    try:
        engine = Engine.load(config)
    except BaseException as error:  # handed to the parent, which raises it
        try:
            events.send(("failed", error))
        except Exception:  # not picklable
            events.send(("failed", RuntimeError(f"the engine process could not start: {error!r}")))
        return
    heap_freeze()
    requests: dict = {}
    relay = _Relay(engine, events, requests)
    events.send(("ready", engine.context_length))
    shutdown_timeout = 10.0
    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if message[0] == "submit":
            _, request_id, prompt_ids, params, priority, arrival_time = message
            sink = partial(relay.add, request_id)
            try:
                request = requests[request_id] = engine.submit(
                    prompt_ids, params, priority=priority, arrival_time=arrival_time, sink=sink
                )
                if request.status.finished:  # ended before it was recorded: the relay did not see it there
                    requests.pop(request_id, None)
            except EngineShuttingDown:
                sink(FinishEvent(status=RequestStatus.STOPPED, reason="shutdown", usage=Usage(len(prompt_ids))))
            except Exception as error:  # the parent checked the prompt; anything else fails this request alone
                logger.exception("submitting request %s failed", request_id)
                sink(FinishEvent(status=RequestStatus.FAILED, reason=f"error: {error}", usage=Usage(len(prompt_ids))))
        elif message[0] == "cancel":
            request = requests.get(message[1])
            if request is not None:
                request.cancel(message[2])
        elif message[0] == "shutdown":
            shutdown_timeout = message[1]
            break
    engine.shutdown(shutdown_timeout)
    relay.close()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.stdin.buffer.read())
