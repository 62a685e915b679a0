"""A moto server for the test session: a subprocess on 127.0.0.1 and a free port.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Tests isolate
themselves by a unique ``name_prefix`` and deployment id rather than by
resetting the server, so they can share it. moto's server is not safe for
concurrent creates of one account/region: keep fixture set-up sequential.

The server records every request (moto's recorder, into a file of its own),
so a test can count the AWS calls an operation made: ``mark()`` before,
``operations(mark, needle)`` after.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The fake credentials every test client uses (moto accepts anything).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
_START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1; ``stop()`` ends it."""

    def __init__(self) -> None:
        self._log_dir = tempfile.TemporaryDirectory(prefix="sm-test-moto-")
        self._log_path = Path(self._log_dir.name) / "moto.log"
        self._recording = Path(self._log_dir.name) / "requests.jsonl"
        self._proc: subprocess.Popen[bytes] | None = None
        self.endpoint_url = ""
        for _ in range(3):  # another process may grab the port between probe and bind
            if self._start(free_port()):
                return
        self.stop()
        raise RuntimeError(f"moto server did not start; log:\n{self._log_tail()}")

    def _start(self, port: int) -> bool:
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            MOTO_ENABLE_RECORDING="true",
            MOTO_RECORDER_FILEPATH=str(self._recording),
        )
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.endpoint_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._answers():
                return True
            time.sleep(0.05)  # polling interval of the readiness probe
        self._terminate()
        return False

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def mark(self) -> int:
        """A position in the request recording; pass it to ``operations``."""
        try:
            return self._recording.stat().st_size
        except FileNotFoundError:
            return 0

    def operations(self, since: int, needle: str) -> list[str]:
        """AWS operations recorded after ``since`` whose request mentions ``needle``.

        ``needle`` is a name prefix or deployment id, so requests of other tests
        (and of other stores) are not counted.
        """
        found = []
        with contextlib.suppress(FileNotFoundError), self._recording.open("rb") as handle:
            handle.seek(since)
            for line in handle:
                entry = json.loads(line)
                body = entry.get("body") or ""
                if entry.get("body_encoded"):
                    body = base64.b64decode(body).decode(errors="replace")
                target = entry.get("headers", {}).get("X-Amz-Target", "")
                if needle in body and target:
                    found.append(target.rpartition(".")[2])
        return found

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log_path.read_text(errors="replace")[-2000:]
        return ""

    def _terminate(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        self._terminate()
        self._log_dir.cleanup()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """A moto server that lives for the whole session."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(moto: MotoServer) -> str:
    """The endpoint URL of the session's moto server."""
    return moto.endpoint_url


@pytest.fixture
def aws_prefix() -> str:
    """A name prefix no other test uses, so tests sharing the server do not see each other."""
    return f"smt-{uuid.uuid4().hex[:12]}/"


def secrets_client(endpoint_url: str) -> Any:
    """A plain Secrets Manager client on moto (an async context manager): the console, a tool."""
    from aiobotocore.session import AioSession

    return AioSession().create_client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def aws_settings(endpoint_url: str, name_prefix: str, **overrides: Any) -> dict[str, Any]:
    """Fields of an ``AwsStoreSettings`` pointing at moto with the fake credentials."""
    fields: dict[str, Any] = {
        "region": REGION,
        "endpoint_url": endpoint_url,
        "auth_method": "secret-key",
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "name_prefix": name_prefix,
    }
    fields.update(overrides)
    return fields
