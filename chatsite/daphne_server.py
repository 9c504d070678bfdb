"""`python -m chatsite.daphne_server [daphne options] APP`: Daphne, as `python -m daphne` runs
it, with liveness probes (`/livez`, chatsite/asgi.py) left out of its access log. The launcher
(chatsite/serve.py) asks every web process every few seconds, and a load balancer may too:
logged, they would bury the requests people make.

Daphne takes its access logger as the `action_logger` argument of its `Server`, which its
command line builds through the `server_class` attribute; tests/chatsite/test_serve.py fails
if either changes.
"""
from __future__ import annotations

from daphne.cli import CommandLineInterface
from daphne.server import Server


def without_probes(action_logger):
    if action_logger is None:
        return None
    # Daphne has loaded the application (chatsite.asgi) by the time it builds its server.
    from chatsite.asgi import LIVENESS_PATH

    def log(protocol, action, details):
        if details.get("path") != LIVENESS_PATH:
            action_logger(protocol, action, details)

    return log


class QuietProbesServer(Server):
    def __init__(self, *args, action_logger=None, **kwargs) -> None:
        super().__init__(*args, action_logger=without_probes(action_logger), **kwargs)


class QuietProbesCommandLine(CommandLineInterface):
    server_class = QuietProbesServer


if __name__ == "__main__":
    QuietProbesCommandLine.entrypoint()
