"""Real processes for end-to-end tests: daphne, a Celery worker, and a client that signs up
over HTTP and chats over a real WebSocket."""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.cookiejar
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "a-long-Passw0rd!"
# Variables of the test process that must not leak into a server under test.
_PRIVATE = ("DJANGO_ALLOW_ASYNC_UNSAFE", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CHATSITE_DATA_DIR")


def require_service(host: str, port: int, name: str) -> None:
    """Skip when a service is missing; under CI=true a missing service is a failure."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        message = f"{name} is not reachable on {host}:{port} ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run the distributed tests")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _PRIVATE}
    # Every test user signs up from 127.0.0.1; the throttle itself is tested on its own.
    env["SIGNUPS_PER_IP"] = "100000"
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([str(BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True)


class Process:
    """A child process whose output goes to a log file that a failing test can show."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log()):
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{self.log_path.name} never showed {pattern!r}:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        stop_together(self)


def stop_together(*processes: Process) -> None:
    """SIGTERM to every process at once, then wait for each (a worker's warm shutdown takes
    seconds; one after another, they add up); SIGKILL to one still running after 15 s."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.terminate()
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
        process._log.close()


class Launcher(Process):
    """`python -m chatsite.serve` with CHAT_WEB_PROCESSES=`count` on a free port, once it has
    started them: `web` and `engine` hold its children's process ids."""

    def __init__(self, env: dict[str, str], log_dir: Path, count: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("serve", [str(BIN / "python"), "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(self.port)],
                         {**env, "CHAT_WEB_PROCESSES": str(count)}, log_dir)
        try:
            self.wait_for_log(rf"{count} web processes on 127\.0\.0\.1")
            pid = self.popen.pid
            children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            commands = {child: Path(f"/proc/{child}/cmdline").read_text() for child in children}
            self.web = [child for child in children if "daphne" in commands[child]]
            self.engine = [child for child in children if "engine_server" in commands[child]]
            assert len(self.web) == count, commands
        except BaseException:
            self.stop()
            raise


class Daphne(Process):
    """The server as `make run` starts it: `python -m chatsite.serve`, which becomes Daphne
    (one web process unless the settings ask for more)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            "daphne",
            [str(BIN / "python"), "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(self.port)],
            env,
            log_dir,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers; 503 only says a worker or the broker is missing so far
            except OSError:
                if self.popen.poll() is not None:
                    break
                time.sleep(0.2)
        raise AssertionError(f"daphne did not start:\n{self.log()[-4000:]}")


WORKER_READY = r"celery@\S+ ready"


def celery_worker(env: dict[str, str], log_dir: Path, name: str = "celery", *, wait: bool = True,
                  concurrency: int | None = 4) -> Process:
    """A `celery worker` process; with `wait`, once it is ready (else the caller waits for
    WORKER_READY in its log, having started other processes meanwhile: each is seconds of imports).
    `concurrency`: its task threads; None: as `make worker` runs it (the settings' default,
    twice CHAT_MAX_RUNNING)."""
    threads = ["--concurrency", str(concurrency)] if concurrency is not None else []
    worker = Process(
        name,
        [str(BIN / "celery"), "-A", "chatsite", "worker", "-Q", "plus,free", *threads, "--loglevel", "INFO"],
        env,
        log_dir,
    )
    if wait:
        worker.wait_for_log(WORKER_READY)
    return worker


class Browserless:
    """A logged-in HTTP session over urllib: cookies kept, forms posted with their CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    @property
    def cookie(self) -> str:
        return "; ".join(f"{cookie.name}={cookie.value}" for cookie in self.jar)

    def get(self, path: str) -> str:
        return self.opener.open(self.base_url + path).read().decode()

    def submit(self, path: str, fields: dict[str, str], action: str | None = None):
        """Fill in the form on `path` (its CSRF token included) and post it to `action`."""
        page = self.get(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        request = urllib.request.Request(
            self.base_url + (action or path),
            data=urllib.parse.urlencode({"csrfmiddlewaretoken": token, **fields}).encode(),
            headers={"Referer": self.base_url + path},
        )
        return self.opener.open(request)


def sign_up(base_url: str, username: str) -> Browserless:
    """Sign up through the real form; return the logged-in session."""
    session = Browserless(base_url)
    final = session.submit("/accounts/signup/", {"username": username, "password1": PASSWORD, "password2": PASSWORD})
    assert final.url.endswith("/chat/"), f"sign-up did not reach the chat page but {final.url}"
    return session


def create_api_key(session: Browserless, name: str = "tests") -> str:
    page = session.submit("/account/api-keys/", {"name": name}).read().decode()
    return re.search(r'<code id="new-key">([^<]+)</code>', page).group(1)


def get_page(base_url: str, path: str, cookie: str) -> str:
    request = urllib.request.Request(base_url + path, headers={"Cookie": cookie})
    return urllib.request.urlopen(request).read().decode()


# Frames about the page rather than the reply in hand: whether the model has loaded, and
# titles the model writes for conversations.
PAGE_FRAMES = ("model", "conversation.updated")


async def receive_frame(socket_, timeout: float) -> dict:
    """The next frame about replies, skipping the page's own frames."""
    while True:
        frame = json.loads(await asyncio.wait_for(socket_.recv(), timeout))
        if frame["type"] not in PAGE_FRAMES:
            return frame


def chat(base_url: str, cookie: str, content: str, *, stop_after_first_token: bool = False, timeout: float = 60):
    """Send one message over /ws/chat/; return every frame up to `done` or `error`."""
    import websockets

    async def run():
        frames = []
        async with websockets.connect(
            base_url.replace("http://", "ws://") + "/ws/chat/",
            additional_headers={"Cookie": cookie, "Origin": base_url},
        ) as socket_:
            await socket_.send(json.dumps({"type": "send", "conversation": None, "content": content}))
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(await receive_frame(socket_, timeout))
                if stop_after_first_token and frames[-1]["type"] == "token" and len(frames) == 2:
                    await socket_.send(json.dumps({"type": "stop"}))
        return frames

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, run()).result()
