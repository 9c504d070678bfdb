"""`python -m chatsite.serve [-b HOST] [-p PORT] [daphne options]`: the web server, as
`CHAT_WEB_PROCESSES` Daphne processes on one port.

One Daphne process runs its event loop, Django and (embedded) the worker's task threads on one
interpreter lock, so on a machine with cores to spare its Python is the bound long before the
cores are. With CHAT_WEB_PROCESSES > 1 this process binds the port once and starts that many
Daphne processes on the same listening socket (`daphne --fd`): the kernel hands each new
connection to one of them. It watches them: SIGTERM or SIGINT is passed on to all, and if one
exits the others are stopped and this one exits with its code (a supervisor such as systemd
then restarts the whole). With 1 (the default) it simply becomes Daphne.

More than one needs what the processes share to live outside them: the distributed mode's
Redis (channel layer, cache) and PostgreSQL. The embedded mode keeps its broker, channel
layer, cache and live text in the one process's memory, so it refuses.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

APPLICATION = "chatsite.asgi:application"
STOP_GRACE_S = 30.0  # after SIGTERM, before a Daphne that has not exited is killed


def daphne_path() -> str:
    return str(Path(sys.executable).with_name("daphne"))


def processes_wanted() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    from django.conf import settings

    count = settings.CHAT_WEB_PROCESSES
    if count > 1 and settings.CHATSITE_EMBEDDED_WORKER:
        raise SystemExit(
            f"CHAT_WEB_PROCESSES={count} needs the distributed mode (REDIS_URL and DATABASE_URL set): the embedded "
            "mode keeps its broker, channel layer and cache in one process's memory."
        )
    return count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--bind", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=8000)
    args, daphne_options = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chatsite.serve %(levelname)s: %(message)s")
    count = processes_wanted()
    if count == 1:
        command = [daphne_path(), "-b", args.bind, "-p", str(args.port), *daphne_options, APPLICATION]
        os.execv(command[0], command)
    listening = socket.create_server((args.bind, args.port), backlog=2048,
                                     family=socket.AF_INET6 if ":" in args.bind else socket.AF_INET)
    children = [
        subprocess.Popen([daphne_path(), "--fd", str(listening.fileno()), *daphne_options, APPLICATION],
                         pass_fds=[listening.fileno()])
        for _ in range(count)
    ]
    listening.close()  # the children hold it
    logger.info("%d web processes on %s:%d (%s)", count, args.bind, args.port, ", ".join(str(c.pid) for c in children))
    return supervise(children)


def supervise(children: list[subprocess.Popen]) -> int:
    """Pass SIGTERM and SIGINT on; when any child exits, stop the rest. The exit code: the
    first child's to exit, 0 if it was asked to stop."""
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        ended = [child for child in children if child.poll() is not None]
        if ended:
            break
        time.sleep(0.2)
    code = 0 if stopping else (ended[0].returncode or 1)
    if not stopping:
        logger.error("web process %d exited with %s; stopping the others", ended[0].pid, ended[0].returncode)
    stop(None, None)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
