"""`python -m chatsite.serve [-b HOST] [-p PORT] [daphne options]`: the web server, as
`CHAT_WEB_PROCESSES` Daphne processes on one port.

One Daphne process runs its event loop, Django and (embedded) the worker's task threads on one
interpreter lock, so on a machine with cores to spare its Python is the bound long before the
cores are. With CHAT_WEB_PROCESSES > 1 this process binds the port once and starts that many
Daphne processes on the same listening socket (`daphne --fd`): the kernel hands each new
connection to one of them. It watches them: SIGTERM or SIGINT is passed on to all, and if one
exits the others are stopped and this one exits with its code (a supervisor such as systemd
then restarts the whole). A process that hangs without exiting would keep its share of new
connections waiting for ever, so each also listens on a socket of its own in DATA_DIR, where
this one asks `/livez` every few seconds: one that has answered and then stays silent for
CHAT_WEB_LIVENESS_S is killed, and the rest stop as for an exit. With 1 (the default) it
simply becomes Daphne.

In the distributed mode the processes share Redis and PostgreSQL as any web processes do. In
the embedded mode each runs its own worker on its own memory broker, and this process first
starts the one engine they all feed (`manage.py engine_server`, unless CHAT_ENGINE_ADDRESS
names one); they share SQLite (writers take turns on a file lock), a cache in files, and the
frames of every reply (chatsite/peers.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

APPLICATION = "chatsite.asgi:application"
STOP_GRACE_S = 30.0  # after SIGTERM, before a Daphne that has not exited is killed
PROBE_EVERY_S = 5.0  # between two asks of every web process's /livez
PROBE_TIMEOUT_S = 2.0  # one ask's answer; a busy loop may miss a few, only CHAT_WEB_LIVENESS_S of silence counts


# Daphne through this interpreter rather than its console script, which a `pip --target`
# install (a lent GPU machine) does not put on the PATH; liveness probes left out of its log.
DAPHNE = (sys.executable, "-m", "chatsite.daphne_server")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--bind", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=8000)
    args, daphne_options = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chatsite.serve %(levelname)s: %(message)s")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    from django.conf import settings

    count = settings.CHAT_WEB_PROCESSES
    if count == 1:
        command = [*DAPHNE, "-b", args.bind, "-p", str(args.port), *daphne_options, APPLICATION]
        os.execv(command[0], command)
    environment = {**os.environ, "CHATSITE_STARTED_AT": repr(time.time())}
    if not environment.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics adds up every process's counts
        metrics = settings.DATA_DIR / "metrics"
        shutil.rmtree(metrics, ignore_errors=True)  # prometheus_client's rule: empty at start
        metrics.mkdir()
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    helpers = []
    if settings.CHATSITE_EMBEDDED_WORKER and not settings.INFERENCE_ENGINE["address"]:
        address = str(settings.DATA_DIR / "engine.sock")
        # In a session of its own: Ctrl-C reaches the web processes, which hand their replies
        # back, and the engine stops after them.
        helpers.append(subprocess.Popen([sys.executable, "manage.py", "engine_server", "--address", address],
                                        cwd=Path(__file__).resolve().parent.parent, start_new_session=True))
        environment["CHAT_ENGINE_ADDRESS"] = address
    children, own_sockets = [], []
    for index in range(count):
        listening = listening_socket(args.bind, args.port)
        own = settings.DATA_DIR / f"web-{index}.live.sock"
        own.unlink(missing_ok=True)  # left by a predecessor: Twisted will not listen over it
        own_sockets.append(own)
        children.append(subprocess.Popen(
            [*DAPHNE, "--fd", str(listening.fileno()), "-e", "unix:{}:mode=600".format(str(own).replace(":", r"\:")),
             *daphne_options, APPLICATION],
            pass_fds=[listening.fileno()], env={**environment, "CHATSITE_WEB_INDEX": str(index)},
        ))
        listening.close()  # the child holds it
    logger.info("%d web processes on %s:%d (%s)", count, args.bind, args.port, ", ".join(str(c.pid) for c in children))
    try:
        return supervise(children, helpers, Liveness(children, own_sockets, settings.CHAT_WEB_LIVENESS_S))
    finally:
        from chatsite.peers import peer_socket_path

        for index, own in enumerate(own_sockets):  # neither Twisted nor asyncio unlinks its socket
            own.unlink(missing_ok=True)
            peer_socket_path(index).unlink(missing_ok=True)


def listening_socket(host: str, port: int) -> socket.socket:
    """One process's socket on the shared port (SO_REUSEPORT): the kernel spreads new
    connections evenly over the processes' sockets. On one socket shared by all, the first
    process to wake took most of a burst (Twisted accepts up to 100 connections a wake)."""
    return socket.create_server((host, port), backlog=2048, reuse_port=True,
                                family=socket.AF_INET6 if ":" in host else socket.AF_INET)


class Liveness:
    """Asks each web process's own socket for `/livez` every PROBE_EVERY_S; kills a process
    that answered once and has not answered since for `limit_s` (before its first answer it
    is starting: Django, the worker). 0 turns it off."""

    def __init__(self, children: list[subprocess.Popen], sockets: list[Path], limit_s: float) -> None:
        self.children, self.sockets, self.limit_s = children, sockets, limit_s
        self.answered: list[float | None] = [None] * len(children)
        self.next_probe = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if self.limit_s <= 0 or now < self.next_probe:
            return
        self.next_probe = now + PROBE_EVERY_S
        with ThreadPoolExecutor(len(self.sockets)) as pool:  # at once: a hung one costs one timeout, not one each
            answers = list(pool.map(answers_livez, self.sockets))
        for index, (child, answered) in enumerate(zip(self.children, answers, strict=True)):
            if answered:
                self.answered[index] = now
            elif self.answered[index] is not None and now - self.answered[index] >= self.limit_s and child.poll() is None:
                logger.error("web process %d has not answered for %.0f s; killing it", child.pid, now - self.answered[index])
                child.kill()


def answers_livez(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(PROBE_TIMEOUT_S)
            client.connect(str(path))
            client.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return client.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:  # refused, not there yet, or timed out
        return False


def supervise(children: list[subprocess.Popen], helpers: list[subprocess.Popen], liveness: Liveness | None = None) -> int:
    """On SIGTERM or SIGINT, or when any child or helper exits (or is killed as hung), stop
    them all: the web processes first (they hand their replies back), then the helpers. The
    exit code: the first one's to exit, 0 if this process was asked to stop."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ended = []
    while not stopping and not ended:
        time.sleep(0.2)
        if liveness is not None:
            liveness.check()
        ended = [process for process in (*children, *helpers) if process.poll() is not None]
    code = 0 if stopping else (ended[0].returncode or 1)
    if not stopping:
        logger.error("process %d exited with %s; stopping the others", ended[0].pid, ended[0].returncode)
    for group in (children, helpers):
        for process in group:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in group:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
