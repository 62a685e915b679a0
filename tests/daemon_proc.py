"""``secretmirror serve`` as a subprocess: start, wait until ready, SIGTERM or kill -9.

The benchmarks (bench/) start their daemons with this class too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_TOKEN
from tests.net import free_port


def store_env(role: str, fields: dict[str, Any]) -> dict[str, str]:
    """``SECRETMIRROR_<ROLE>__<FIELD>`` for a store's fields (role: ``backup``,
    ``mirrors__<name>``)."""
    prefix = f"SECRETMIRROR_{role.upper()}__"
    return {prefix + key.upper(): str(value) for key, value in fields.items()}


class DaemonProcess:
    """One daemon process; ``start`` again after ``kill`` or ``terminate`` to restart it."""

    def __init__(
        self,
        env: dict[str, str],
        data_dir: Path,
        log_path: Path,
        *,
        drop_env: tuple[str, ...] = (),
    ) -> None:
        """``env`` over this process's environment, less the variables starting with
        one of ``drop_env`` (a caller's own ``SECRETMIRROR_*`` or ``AWS_*``)."""
        self.port = free_port()
        inherited = {
            k: v for k, v in os.environ.items() if not drop_env or not k.startswith(drop_env)
        }
        self.env = {
            **inherited,
            "SECRETMIRROR_DATA_DIR": str(data_dir),
            "SECRETMIRROR_LISTEN": f"127.0.0.1:{self.port}",
            "SECRETMIRROR_ADMIN_TOKEN": ADMIN_TOKEN,
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        #: How long the last ``stop`` took, and the exit code it saw.
        self.shutdown_s: float | None = None
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_no_wait(self) -> None:
        """Start the process without waiting for it to be ready."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "secretmirror", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait until ``/readyz`` answers 200; the seconds that took. The wait is
        long: a restart under load on a busy 2-core machine opens every store first, and a
        daemon that exits early fails at once anyway."""
        self.start_no_wait()
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no chance to release leases or finish anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 12 s; records ``shutdown_s`` and ``exit_code``."""
        if self.proc is not None and self.proc.poll() is None:
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(12)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.shutdown_s = round(time.monotonic() - started, 3)
            self.exit_code = self.proc.returncode

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
