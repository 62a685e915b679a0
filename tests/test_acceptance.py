"""Acceptance: ``secretmirror serve`` and the CLI as subprocesses, on the embedded default.

No database URL: the daemon starts its embedded PostgreSQL (pgserver) and the
``file`` backup store under a temporary data dir, as ``make run`` does. The CLI
finds the admin token in that data dir (SECRETMIRROR_DATA_DIR), as a person on
the same machine would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.net import free_port

pytestmark = pytest.mark.acceptance

BIN = Path(sys.executable).parent / "secretmirror"
READY_TIMEOUT_S = 120.0
STOP_BUDGET_S = 10.0


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Daemon:
    """One ``secretmirror serve`` process on a data dir; restartable on the same one."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
        self.env.update(
            SECRETMIRROR_DATA_DIR=str(data_dir), SECRETMIRROR_LISTEN=f"127.0.0.1:{port}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def stderr_path(self) -> Path:
        return self.data_dir.parent / f"daemon-{self.runs}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.data_dir.parent / f"daemon-{self.runs}.stdout"

    def start(self) -> None:
        self.runs += 1
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([str(BIN), "serve"], env=self.env, stdout=out, stderr=err)
        wait_for(self._ready, READY_TIMEOUT_S, f"{self.url}/readyz to answer 200")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the daemon exited with {self.proc.returncode}:\n{self.output()}")
        try:
            # self.url is always http://127.0.0.1:<port>, built above.
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def output(self) -> str:
        return self.stderr_path.read_text() + self.stdout_path.read_text()

    def terminate(self) -> float:
        """SIGTERM; the seconds until the process exited (fails past the budget)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_BUDGET_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {STOP_BUDGET_S}s of SIGTERM")
        return time.monotonic() - started

    @property
    def postmaster_pid(self) -> int | None:
        """The embedded PostgreSQL's pid while it runs (from its postmaster.pid)."""
        try:
            pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def kill_everything(self) -> None:
        """Whatever happened in the test: no daemon and no PostgreSQL is left running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_BUDGET_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # A daemon that was killed could not run pgserver's cleanup: stop its server here.
        pid = self.postmaster_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            deadline = time.monotonic() + STOP_BUDGET_S
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
        env.update(SECRETMIRROR_URL=self.url, SECRETMIRROR_DATA_DIR=str(self.data_dir))
        return subprocess.run(
            [str(BIN), *args], env=env, input=input, capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self.cli(*args, input=input)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir directly under the temp dir, not under pytest's ``tmp_path``.

    As root, pgserver runs PostgreSQL as another user, which must traverse every
    parent directory; a concurrent pytest session resets ``/tmp/pytest-of-<user>``
    to 0700 and would lock that user out mid-test.
    """
    with tempfile.TemporaryDirectory(prefix="sm-acceptance-", ignore_cleanup_errors=True) as tmp:
        yield Path(tmp) / "data"


@pytest.fixture
def daemon(data_dir: Path) -> Iterator[Daemon]:
    served = Daemon(data_dir, free_port())
    try:
        served.start()
        yield served
    finally:
        served.kill_everything()


def test_cli_drives_a_secret_through_its_life(daemon: Daemon) -> None:
    """create, get -o json, list, update and delete work end to end against the daemon."""
    daemon.ok("secret", "create", "demo", "password=s3cret", "user=app")
    assert daemon.json("secret", "get", "demo")["values"] == {"password": "s3cret", "user": "app"}
    assert [s["name"] for s in daemon.json("secret", "list")] == ["demo"]
    daemon.ok("secret", "update", "demo", "password=n3w", "--remove-key", "user")
    body = daemon.json("secret", "get", "demo")
    assert (body["version"], body["values"]) == (2, {"password": "n3w"})
    daemon.ok("secret", "delete", "demo", "-y")
    assert daemon.json("secret", "list") == []


def test_sigterm_stops_the_daemon_and_its_postgres_within_10s(daemon: Daemon) -> None:
    """SIGTERM: the daemon exits 0 within 10 s and its embedded PostgreSQL is stopped."""
    assert daemon.postmaster_pid is not None
    daemon.terminate()
    assert daemon.proc is not None
    assert (daemon.proc.returncode, daemon.postmaster_pid) == (0, None)


def test_secrets_survive_a_restart(daemon: Daemon) -> None:
    """After SIGTERM and a new start on the same data dir, every secret has its values."""
    expected = {f"s{i}": {"n": str(i), "multi": f"line 1\nline {i}"} for i in range(5)}
    for name, values in expected.items():
        daemon.ok("secret", "create", name, "--values-file", "-", input=json.dumps(values))
    daemon.ok("secret", "update", "s0", "n=changed")
    expected["s0"]["n"] = "changed"
    daemon.ok("secret", "create", "gone", "k=v")
    daemon.ok("secret", "delete", "gone", "-y")
    daemon.terminate()
    daemon.start()
    assert sorted(s["name"] for s in daemon.json("secret", "list")) == sorted(expected)
    got = {name: daemon.json("secret", "get", name)["values"] for name in expected}
    assert got == expected


def test_startup_message_says_where_the_token_is_but_not_the_token(daemon: Daemon) -> None:
    """serve prints the URL, the admin-token file and a first command; never the token."""
    message = daemon.stderr_path.read_text()
    token = (daemon.data_dir / "admin-token").read_text().strip()
    assert daemon.url in message
    assert f"cat {daemon.data_dir / 'admin-token'}" in message
    assert "secret create demo" in message
    assert token not in message + daemon.stdout_path.read_text()
