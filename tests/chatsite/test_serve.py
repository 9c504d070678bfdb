"""chatsite.serve's watch over its web processes, and chatsite.daphne_server's quiet probes."""
import subprocess
import sys
import time

import pytest
from daphne.cli import CommandLineInterface
from daphne.server import Server

from chatsite import serve
from chatsite.daphne_server import QuietProbesCommandLine, QuietProbesServer, without_probes

# A stand-in web process: answers /livez on a Unix socket, as Daphne does on its own socket.
LIVE_SERVER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
while True:
    client, _ = server.accept()
    client.recv(1024)
    client.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 3\\r\\n\\r\\nok\\n")
    client.close()
"""


@pytest.fixture
def live_process(tmp_path):
    path = tmp_path / "web-0.live.sock"
    process = subprocess.Popen([sys.executable, "-c", LIVE_SERVER, str(path)])
    deadline = time.monotonic() + 10
    while not serve.answers_livez(path):
        assert time.monotonic() < deadline and process.poll() is None, "the stand-in never answered"
        time.sleep(0.05)
    yield process, path
    process.kill()
    process.wait()


def watch(liveness: serve.Liveness, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        liveness.check()
        time.sleep(0.05)


def test_a_process_silent_past_the_limit_is_killed(live_process, monkeypatch):
    monkeypatch.setattr(serve, "PROBE_EVERY_S", 0.1)
    monkeypatch.setattr(serve, "PROBE_TIMEOUT_S", 0.2)
    process, path = live_process
    liveness = serve.Liveness([process], [path], limit_s=1.0)
    watch(liveness, 1.5)
    assert process.poll() is None  # it answers: left alone
    process.send_signal(subprocess.signal.SIGSTOP)  # hung: accepts nothing, exits never
    watch(liveness, 3.0)
    assert process.wait(5) == -subprocess.signal.SIGKILL


def test_a_process_that_never_answered_is_starting_not_hung(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "PROBE_EVERY_S", 0.1)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        watch(serve.Liveness([process], [tmp_path / "absent.sock"], limit_s=0.5), 1.5)
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_a_limit_of_zero_watches_nothing(live_process, monkeypatch):
    monkeypatch.setattr(serve, "answers_livez", lambda path: pytest.fail("asked although turned off"))
    process, path = live_process
    serve.Liveness([process], [path], limit_s=0).check()


def test_the_access_log_leaves_out_liveness_probes_only():
    logged = []
    log = without_probes(lambda protocol, action, details: logged.append(details["path"]))
    for path in ("/livez", "/v1/models", "/livez/x"):
        log("http", "complete", {"path": path, "client": None, "method": "GET", "status": 200, "size": 3})
    assert logged == ["/v1/models", "/livez/x"]
    assert without_probes(None) is None  # no access log asked for: none made


def test_daphne_still_builds_its_server_as_this_wraps_it():
    """Daphne's command line builds `server_class(..., action_logger=...)`: if that changes,
    the probes reach the log again (or the server fails to start)."""
    import inspect

    assert issubclass(QuietProbesCommandLine, CommandLineInterface)
    assert QuietProbesCommandLine.server_class is QuietProbesServer
    assert "self.server_class(" in inspect.getsource(CommandLineInterface.run)
    assert "action_logger" in inspect.signature(Server.__init__).parameters
    logged = []
    server = QuietProbesServer(application=None, endpoints=["tcp:port=0"], action_logger=lambda *a: logged.append(a[2]["path"]))
    server.log_action("http", "complete", {"path": "/livez"})
    server.log_action("http", "complete", {"path": "/"})
    assert logged == ["/"]
