"""Run localstripe (a stateful fake Stripe API) on 127.0.0.1 without touching the disk.

`python -m tests.billing.localstripe_server PORT` — the tests start it as a subprocess. Its stock
command listens on every interface and pickles its state to /tmp; this one does neither.
"""
from __future__ import annotations

import sys


def main(port: int) -> None:
    from aiohttp import web
    from localstripe import resources, server

    resources.Store.dump_to_disk = lambda self: None
    resources.Store.try_load_from_disk = lambda self: None
    web.run_app(server.app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
