"""One engine server shared by several worker processes: each worker gets its own answers as
from an engine of its own; a worker that leaves or dies has its requests ended and leaves the
others' running; a server that stops ends every request as a shutdown does."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from inference import Engine, FinishEvent, RequestStatus, SamplingParams, TokenEvent
from inference.engine_process import EXIT_HUNG, EngineProcess, EngineUnreachable, key_path
from inference.worker import engine_get, engine_set, engine_shutdown
from tests.inference.test_engine import collect, prompt, run

ROOT = Path(__file__).resolve().parents[2]
LONG = SamplingParams(temperature=0, max_new_tokens=900, ignore_eos=True)


def server_start(config, address: str, command: tuple[str, ...] = ("-m", "inference.engine_process")) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, *command, "--serve", address, json.dumps(asdict(config))],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(address):
        assert server.poll() is None, server.stderr.read()
        assert time.monotonic() < deadline, "the engine server did not listen within 120 s"
        time.sleep(0.1)
    return server


def server_stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


@pytest.fixture
def address():
    # Unix socket paths are short (108 bytes): not under pytest's deep tmp_path.
    with tempfile.TemporaryDirectory(prefix="engine-") as folder:
        yield os.path.join(folder, "engine.sock")


@pytest.fixture
def server(tiny_engine_config, address):
    server = server_start(tiny_engine_config, address)
    yield server
    server_stop(server)


def running(worker: EngineProcess, count: int, timeout: float = 10) -> bool:
    """Whether the server's running batch reaches `count` within `timeout` (stats come every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.snapshot().running == count:
            return True
        time.sleep(0.1)
    return False


def test_two_workers_share_one_engine_and_each_gets_its_own_answers(server, address, tiny_engine_config):
    local = Engine.load(tiny_engine_config)
    texts = ["Hello", "What is the capital of France?", "Write a poem", "Tell me a joke"]
    params = SamplingParams(temperature=0, max_new_tokens=24)
    try:
        expected = [run(local.submit(prompt(local, text), params))[0] for text in texts]
    finally:
        local.shutdown()
    first, second = EngineProcess.connect(address), EngineProcess.connect(address)
    try:
        assert first.pid == second.pid == server.pid
        assert first.context_length == second.context_length == local.context_length
        # Both workers' requests at once, with the same request ids on each side.
        requests = [(worker, worker.submit(prompt(worker, text), params)) for text in texts for worker in (first, second)]
        answers = [run(request)[0] for _, request in requests]
        assert answers == [text for text in expected for _ in (first, second)]
        assert all(text for text in answers)
    finally:
        first.shutdown()
        second.shutdown()
    assert server.poll() is None  # the workers left; the engine serves on


def test_a_worker_that_leaves_ends_its_requests_and_the_others_go_on(server, address):
    leaving, staying = EngineProcess.connect(address), EngineProcess.connect(address)
    try:
        gone = leaving.submit(prompt(leaving), LONG)
        kept = staying.submit(prompt(staying), LONG)
        assert isinstance(gone.next_event(timeout=30), TokenEvent)
        assert isinstance(kept.next_event(timeout=30), TokenEvent)
        leaving.shutdown()
        finish = run(gone)[2]
        assert (finish.status, finish.reason) == (RequestStatus.STOPPED, "shutdown")
        assert finish.usage.completion_tokens > 0 and not leaving.alive
        assert running(staying, 1)
        kept.cancel("stop")
        finish = run(kept)[2]
        assert (finish.status, finish.reason) == (RequestStatus.STOPPED, "stop")
        assert finish.usage.completion_tokens > gone.usage.completion_tokens  # it kept generating
        assert staying.alive
    finally:
        staying.shutdown()


def test_a_worker_killed_mid_answer_has_its_requests_ended(server, address):
    script = (
        "import sys, time\n"
        "from inference import SamplingParams\n"
        "from inference.engine_process import EngineProcess\n"
        "worker = EngineProcess.connect(sys.argv[1])\n"
        "request = worker.submit(worker.tokenizer.encode('Hello'), SamplingParams(temperature=0, max_new_tokens=900, ignore_eos=True))\n"
        "request.next_event(timeout=30)\n"
        "print('streaming', flush=True)\n"
        "time.sleep(600)\n"
    )
    doomed = subprocess.Popen([sys.executable, "-c", script, address], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    observer = EngineProcess.connect(address)
    try:
        assert doomed.stdout.readline().strip() == "streaming"
        assert running(observer, 1)
        doomed.kill()
        doomed.wait()
        assert running(observer, 0)
        answer = run(observer.submit(prompt(observer), SamplingParams(temperature=0, max_new_tokens=4)))
        assert answer[2].status is RequestStatus.DONE
    finally:
        observer.shutdown()
        if doomed.poll() is None:
            doomed.kill()


def test_a_server_that_stops_ends_open_requests_and_workers_connect_to_the_next(tiny_engine_config, address):
    server = server_start(tiny_engine_config, address)
    worker = EngineProcess.connect(address)
    try:
        request = worker.submit(prompt(worker), LONG)
        assert isinstance(request.next_event(timeout=30), TokenEvent)
        server_stop(server)
        assert server.returncode == 0
        events = collect(request)
        assert isinstance(events[-1], FinishEvent)
        assert (events[-1].status, events[-1].reason) == (RequestStatus.STOPPED, "shutdown")
        assert not worker.alive
        assert not os.path.exists(address) and not os.path.exists(key_path(address))
        # The worker's next task connects to whatever serves the address now. A key file found
        # there is replaced by one of the server's own, for its user alone.
        Path(key_path(address)).write_bytes(b"left by someone")
        os.chmod(key_path(address), 0o644)
        server = server_start(tiny_engine_config, address)
        assert oct(os.stat(key_path(address)).st_mode & 0o777) == "0o600"
        engine_set(worker)
        fresh = engine_get(replace(tiny_engine_config, address=address))
        assert fresh is not worker and fresh.alive and fresh.pid == server.pid
        assert run(fresh.submit(prompt(fresh), SamplingParams(temperature=0, max_new_tokens=4)))[2].status is RequestStatus.DONE
    finally:
        engine_shutdown()
        server_stop(server)


def test_only_a_caller_with_the_key_is_served_and_a_second_server_is_refused(server, address, tiny_engine_config):
    assert oct(os.stat(key_path(address)).st_mode & 0o777) == "0o600"
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(address, family="AF_UNIX", authkey=b"not the key")
    second = subprocess.run([sys.executable, "-m", "inference.engine_process", "--serve", address, json.dumps(asdict(tiny_engine_config))],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "already listening" in second.stderr
    worker = EngineProcess.connect(address)  # the first server still serves
    try:
        assert run(worker.submit(prompt(worker), SamplingParams(temperature=0, max_new_tokens=4)))[2].status is RequestStatus.DONE
    finally:
        worker.shutdown()


def test_connecting_where_no_server_listens_fails_clearly(address):
    started = time.monotonic()
    with pytest.raises(EngineUnreachable, match="no engine server is listening"):
        EngineProcess.connect(address, wait_s=0.5)
    assert time.monotonic() - started < 5


def test_a_server_whose_engine_hangs_exits_and_its_workers_requests_end(tiny_engine_config, address):
    # The engine's third step never returns, as a kernel on a hung device would not.
    script = (
        "import sys, threading\n"
        "from inference.engine import Engine\n"
        "from inference.engine_process import main\n"
        "step = Engine.step\n"
        "def hanging_step(self):\n"
        "    if self.stats.steps >= 3:\n"
        "        threading.Event().wait()\n"
        "    step(self)\n"
        "Engine.step = hanging_step\n"
        "main(sys.argv[1:])\n"
    )
    server = server_start(replace(tiny_engine_config, stall_s=1.0), address, ("-c", script))
    worker = EngineProcess.connect(address)
    try:
        _, tokens, finish = run(worker.submit(prompt(worker), LONG))
        assert tokens  # it answered until it hung
        assert (finish.status, finish.reason) == (RequestStatus.STOPPED, "shutdown")
        assert server.wait(30) == EXIT_HUNG
        log = server.stderr.read()
        assert "has not come round for" in log and "in hanging_step" in log  # where it hung
        assert not worker.alive
    finally:
        worker.shutdown()
        server_stop(server)
