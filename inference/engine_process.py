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

One engine can also serve several worker processes (`EngineConfig.address`): one engine
server per GPU (`serve`, started by `manage.py engine_server`) loads the model once and
listens on a Unix socket; each worker process connects to it with `EngineProcess.connect`
and is used exactly as its own child would be. Each worker's requests are its own: a worker
that leaves or dies has its requests ended as a shutdown ends them, and the others' go on.
"""
from __future__ import annotations

import contextlib
import faulthandler
import itertools
import json
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path

from inference.engine import Engine, EngineConfig, EngineShuttingDown, EngineStats, prompt_check
from inference.heap import heap_freeze
from inference.loading import load_tokenizer, resolve_model_source
from inference.requests import Event, EventStream, FinishEvent, RequestStatus, TokenEvent, Usage
from inference.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

STATS_EVERY_S = 0.5  # how often the child reports its EngineStats
IDLE_POLL_S = 0.05  # the relay's longest sleep: events sent outside a step wait at most this
SHUTDOWN_GRACE_S = 5.0  # past the engine's own shutdown timeout, before the child is killed
CONNECT_WAIT_S = 120.0  # how long a worker waits for its engine server to listen (it loads a model first)
EXIT_HUNG = 70  # the exit code of an engine process ended by its Watchdog
DEFAULT_CONFIG = EngineConfig()


class EngineUnreachable(EngineShuttingDown):
    """No engine server answered at the address: nothing was queued; the request may be
    taken by another worker, or by this one once the server is back."""


def key_path(address: str) -> str:
    """Where the server at `address` keeps the key its workers authenticate with: readable by
    its own user alone, since what crosses the socket is pickled."""
    return address + ".key"


def _child_environment() -> dict[str, str]:
    package_root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def uses_process(config: EngineConfig) -> bool:
    """Whether `config` asks for an engine process: `process` on, or auto on a CUDA device."""
    if config.process == "auto":
        from inference.runner import pick_device

        return pick_device(config.device).type == "cuda"
    return config.process == "on"


def _tokenizer_of(config: EngineConfig):
    """The tokenizer of `config`'s model, as its engine loads it."""
    return load_tokenizer(resolve_model_source(config.model), allow_download=config.allow_download, cache=config.model_cache)


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
    """Thread-safe, as Engine is. `start` returns once the child has loaded the model;
    `connect` attaches to an engine server another process runs."""

    def __init__(self, config: EngineConfig = DEFAULT_CONFIG) -> None:
        """Start a child of this process that loads `config`'s engine and serves only this one."""
        # A fresh interpreter running this module, rather than multiprocessing's spawn, which
        # would import the parent's main script again (and fork would copy its threads' locks).
        authkey = secrets.token_bytes(32)
        listener = Listener(family="AF_UNIX", authkey=authkey)
        self.address: str | None = None
        self._process: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-m", "inference.engine_process", listener.address],
            env=_child_environment(), stdin=subprocess.PIPE,
        )
        try:
            self._process.stdin.write(authkey)
            self._process.stdin.close()
            connection = self._accept(listener)
            connection.send(config)
            # The parent needs the tokenizer for prompts; it loads while the child loads the model.
            tokenizer = _tokenizer_of(config)
            self._attach(connection, tokenizer)
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise
        finally:
            listener.close()

    @classmethod
    def start(cls, config: EngineConfig = DEFAULT_CONFIG) -> EngineProcess:
        return cls(config)

    @classmethod
    def connect(cls, address: str, wait_s: float | None = None) -> EngineProcess:
        """Attach to the engine server listening at `address` (see `serve`), waiting up to
        `wait_s` seconds (CONNECT_WAIT_S) for it to be there: a worker may start before its
        server has loaded. EngineUnreachable if it is not."""
        self = cls.__new__(cls)
        self.address = address
        self._process = None
        deadline = time.monotonic() + (CONNECT_WAIT_S if wait_s is None else wait_s)
        while True:
            try:
                connection = Client(address, family="AF_UNIX", authkey=Path(key_path(address)).read_bytes())
                self._attach(connection, None)
                return self
            # Not there yet, a socket left by a server that is gone, or a server that stopped
            # or started again (a new key) while this one connected.
            except (OSError, EOFError, AuthenticationError) as error:
                if time.monotonic() >= deadline:
                    raise EngineUnreachable(f"no engine server is listening at {address}") from error
                time.sleep(0.2)

    def _attach(self, connection, tokenizer) -> None:
        """Wait until the engine behind `connection` is ready, then start receiving its events."""
        self._connection = connection
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._requests: dict[int, RemoteRequest] = {}
        self._ids = itertools.count(1)
        self._alive = True
        self._shutting_down = False
        try:
            message = connection.recv()
        except EOFError:
            if self._process is None:
                raise  # a server that went while this one connected: `connect` tries again
            message = ("failed", RuntimeError(f"the engine process exited with code {self._process.wait()}"))
        if message[0] == "failed":
            if self._process is not None:
                self._process.wait(SHUTDOWN_GRACE_S)
            raise message[1]
        _, self.context_length, self.config, self._pid = message
        config = self.config
        self._stats = EngineStats(max_running=config.max_running, max_kv_tokens=config.max_kv_tokens)
        self.tokenizer = tokenizer or _tokenizer_of(config)
        self._receiver = threading.Thread(target=self._receive, name="engine-events", daemon=True)
        self._receiver.start()

    def _accept(self, listener: Listener):
        """The child's connection; an error if the child exits before it connects."""
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
        """False once the engine has ended or gone (shut down, died, or this one left its
        server): a new one must be started, or connected to."""
        return self._alive and not self._shutting_down and (self._process is None or self._process.poll() is None)

    @property
    def pid(self) -> int:
        """The engine's process: this one's child, or the server's."""
        return self._pid

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
        """Stop every request of this process (their text so far is kept), and end the child;
        a server's engine goes on serving its other workers."""
        with self._lock:
            self._shutting_down = True
        with contextlib.suppress(OSError):  # already gone
            self._send(("shutdown" if self._process is not None else "leave", timeout))
        self._receiver.join(timeout + SHUTDOWN_GRACE_S)
        if self._process is not None:
            try:
                self._process.wait(SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("the engine process did not stop; killing it")
                self._process.kill()
                self._process.wait()
        self._connection.close()

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._connection.send(message)

    def _receive(self) -> None:
        """Hand each event to its request until the engine stops; then end what is still open."""
        while True:
            try:
                message = self._connection.recv()
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
            code = None if self._process is None else self._process.poll()
            logger.error("the engine process ended with %d requests open (exit code %s)", len(left), code)
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


class EngineServer:
    """The engine's side of the sockets: one engine, and each connected worker served on a
    thread of its own, its requests and its relay its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._relays: set[_Relay] = set()
        self._lock = threading.Lock()
        engine.after_step = self._wake

    def _wake(self) -> None:
        for relay in tuple(self._relays):
            relay.wake()

    def serve(self, connection, *, owner: bool) -> None:
        """Obey one worker's commands until it goes or asks to. `owner`: the engine is this
        worker's alone, and ends with it; otherwise its requests end as a shutdown ends them."""
        requests: dict = {}
        # Sent before the relay starts: from then on only the relay's thread writes.
        try:
            connection.send(("ready", self.engine.context_length, self.engine.config, os.getpid()))
        except OSError:  # gone already (a second server looking whether this one is alive)
            return
        relay = _Relay(self.engine, connection, requests)
        with self._lock:
            self._relays.add(relay)
        if not owner:
            logger.info("%s connected", threading.current_thread().name)
        timeout = 10.0
        try:
            timeout = self._obey(connection, requests, relay)
        finally:
            if owner:
                self.engine.shutdown(timeout)
            else:
                logger.info("%s left; its %d open requests end as a shutdown", threading.current_thread().name, len(requests))
                _requests_end(requests, timeout)
            relay.close()
            with self._lock:
                self._relays.discard(relay)

    def _obey(self, connection, requests: dict, relay: _Relay) -> float:
        """The command loop; returns the timeout the worker gave for ending its requests."""
        engine = self.engine
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):  # the worker is gone
                return 10.0
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
                except Exception as error:  # the worker checked the prompt; anything else fails this request alone
                    logger.exception("submitting request %s failed", request_id)
                    sink(FinishEvent(status=RequestStatus.FAILED, reason=f"error: {error}", usage=Usage(len(prompt_ids))))
            elif message[0] == "cancel":
                request = requests.get(message[1])
                if request is not None:
                    request.cancel(message[2])
            elif message[0] in ("shutdown", "leave"):
                return message[1]

    def close(self, timeout: float = 10.0) -> None:
        """End every request as a shutdown does; each worker is told the engine stopped."""
        self.engine.shutdown(timeout)
        with self._lock:
            relays = tuple(self._relays)
        for relay in relays:
            relay.close()


def _requests_end(requests: dict, timeout: float) -> None:
    """End a leaving worker's requests as a shutdown would, and wait (up to `timeout`) until
    the engine has ended them, so their finishes are sent before the relay closes."""
    for request in list(requests.values()):
        request.cancel("shutdown")
    deadline = time.monotonic() + timeout
    while requests and time.monotonic() < deadline:
        time.sleep(0.01)


def serve(config: EngineConfig, address: str) -> None:
    """Load `config`'s engine and serve every worker process that connects to the Unix socket
    `address`, until SIGTERM or SIGINT; then end every request as a shutdown does (each worker
    gives its replies back) and remove the socket."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine-server %(levelname)s %(name)s: %(message)s")
    if os.path.exists(address):
        try:
            Client(address, family="AF_UNIX", authkey=Path(key_path(address)).read_bytes()).close()
        except (OSError, EOFError, AuthenticationError):
            os.unlink(address)  # left by a server that is gone
        else:
            raise RuntimeError(f"an engine server is already listening at {address}")
    engine = Engine.load(config)
    heap_freeze()
    _watch(engine)
    authkey = secrets.token_bytes(32)
    with contextlib.suppress(FileNotFoundError):  # a file of its own, made 0600, not one left by someone else
        os.unlink(key_path(address))
    descriptor = os.open(key_path(address), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(authkey)
    previous_umask = os.umask(0o077)  # the socket, too, for this user alone
    try:
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
    finally:
        os.umask(previous_umask)
    server = EngineServer(engine)

    def stop(signum, frame):
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("serving %s on %s (%s)", config.model or "the default model", address, engine.runner.device)
    clients = itertools.count(1)
    try:
        while True:
            try:
                connection = listener.accept()
            except (OSError, EOFError, AuthenticationError) as error:  # one caller's failed handshake
                logger.warning("a connection was refused: %r", error)
                continue
            threading.Thread(
                target=server.serve, args=(connection,), kwargs={"owner": False},
                name=f"worker {next(clients)}", daemon=True,
            ).start()
    except _Stop:
        logger.info("stopping: ending every request as a shutdown")
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key_path(address))
        server.close()


class Watchdog:
    """Ends this process when `engine`'s step loop has not come round for `stall_s` seconds
    (a kernel that never returns, a deadlock): a thread cannot be stopped from outside, and a
    hung engine would otherwise take requests for ever and answer none. Its workers see the
    process go, as if it had crashed: a worker's own child is started again at its next
    request, a server is restarted by what started it (chatsite.serve, systemd). `hung` is
    called instead of exiting where given (tests)."""

    def __init__(self, engine: Engine, stall_s: float, hung: Callable[[float], None] | None = None) -> None:
        self.engine, self.stall_s = engine, stall_s
        self.hung = hung or _exit_hung
        self._thread = threading.Thread(target=self._run, name="engine-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.engine.alive:
            time.sleep(min(1.0, self.stall_s / 4))
            silent = time.monotonic() - self.engine.heartbeat
            if silent > self.stall_s and self.engine.alive:
                self.hung(silent)
                return


def _exit_hung(silent: float) -> None:
    logger.critical("the engine's step loop has not come round for %.0f s: ending this process so that a "
                    "new engine takes over; where every thread was:", silent)
    faulthandler.dump_traceback(all_threads=True)
    os._exit(EXIT_HUNG)


def _watch(engine: Engine) -> None:
    if engine.config.stall_s > 0:
        Watchdog(engine, engine.config.stall_s)


class _Stop(Exception):
    """SIGTERM or SIGINT reached the engine server."""


def _serve_owned(address: str, authkey: bytes) -> None:
    """The child process: connect to the parent, load the engine, then obey commands until
    shutdown or the parent goes."""
    # Ctrl-C reaches the whole process group; the parent decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine-process %(levelname)s %(name)s: %(message)s")
    connection = Client(address, family="AF_UNIX", authkey=authkey)
    config: EngineConfig = connection.recv()
    try:
        engine = Engine.load(config)
    except BaseException as error:  # handed to the parent, which raises it
        try:
            connection.send(("failed", error))
        except Exception:  # not picklable
            connection.send(("failed", RuntimeError(f"the engine process could not start: {error!r}")))
        return
    heap_freeze()
    _watch(engine)
    EngineServer(engine).serve(connection, owner=True)


def main(argv: list[str]) -> None:
    """`ADDRESS` (the key on stdin): the child of one worker. `--serve ADDRESS CONFIG_JSON`:
    an engine server for any worker that connects (tests and scripts; the product starts one
    with `manage.py engine_server`)."""
    if argv[0] == "--serve":
        serve(EngineConfig(**json.loads(argv[2])), argv[1])
    else:
        _serve_owned(argv[0], sys.stdin.buffer.read())


if __name__ == "__main__":
    main(sys.argv[1:])
