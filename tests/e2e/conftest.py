import os
import shutil

import pytest

from tests.e2e.servers import Daphne, manage, server_env

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's Chromium: Playwright's own browser download cannot reach its servers here."""
    if not shutil.which(CHROMIUM):
        message = f"{CHROMIUM} is missing; `make test` installs Debian's chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


def start_embedded_server(data_dir, **env_overrides) -> Daphne:
    env = server_env(CHATSITE_DATA_DIR=str(data_dir), **env_overrides)
    manage(env, "migrate", "--noinput")
    server = Daphne(env, data_dir)
    server.database = data_dir / "db.sqlite3"
    server.env = env
    return server


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory, tiny_model_dir):
    """`make run`'s mode with the tiny model."""
    server = start_embedded_server(tmp_path_factory.mktemp("embedded"), CHAT_MODEL=tiny_model_dir, CHAT_DTYPE="fp32")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_model_server(tmp_path_factory):
    """`make run` exactly as a user gets it: embedded mode with the default SmolLM2 model."""
    server = start_embedded_server(tmp_path_factory.mktemp("real-model"))
    yield server
    server.stop()
