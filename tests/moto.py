"""A moto server for the test session: a subprocess on 127.0.0.1 and a free port.

Registered in ``tests/conftest.py`` (``pytest_plugins``). Tests isolate
themselves by a unique ``name_prefix`` and deployment id rather than by
resetting the server, so they can share it. moto's own server is not safe for
concurrent requests (a listing during a create answers 500); this one runs
them one at a time (``moto_one_at_a_time.py``).

The server records every request (moto's recorder, into a file of its own),
so a test can count the AWS calls an operation made: ``mark()`` before,
``operations(mark, needle)`` after. The benchmarks (bench/) start it with
``record=False`` (the recorder's writes would slow their throughput phases)
and switch the recorder on with ``recording(True)`` where they count calls.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
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

from tests.net import free_port

#: The fake credentials every test client uses (moto accepts anything).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
_START_TIMEOUT_S = 30.0
#: moto's server with a lock around each request (see that file for why).
_ONE_AT_A_TIME = Path(__file__).with_name("moto_one_at_a_time.py")


class MotoServer:
    """moto's server on 127.0.0.1, one request at a time; ``stop()`` ends it."""

    def __init__(self, *, record: bool = True) -> None:
        self._record = record
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
            MOTO_RECORDER_FILEPATH=str(self._recording),
        )
        if self._record:
            env["MOTO_ENABLE_RECORDING"] = "true"
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", str(_ONE_AT_A_TIME), "-H", "127.0.0.1", "-p", str(port)],
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

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rpartition(":")[2])

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _answers(self, path: str = "/moto-api/", method: str = "GET") -> bool:
        request = urllib.request.Request(self.endpoint_url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def recording(self, on: bool) -> None:
        """Start or stop moto's request recorder."""
        path = "/moto-api/recorder/" + ("start-recording" if on else "stop-recording")
        if not self._answers(path, "POST"):
            raise RuntimeError(f"moto did not answer {path}")

    def mark(self) -> int:
        """A position in the request recording; pass it to ``operations``."""
        try:
            return self._recording.stat().st_size
        except FileNotFoundError:
            return 0

    def records(self, since: int) -> tuple[list[tuple[str, str]], int]:
        """(X-Amz-Target, body) of every request recorded after ``since``, and the
        position after the last complete line (moto may be appending one right now)."""
        try:
            with self._recording.open("rb") as handle:
                handle.seek(since)
                data = handle.read()
        except FileNotFoundError:
            return [], since
        complete = data.rfind(b"\n") + 1
        found = []
        for line in data[:complete].splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            found.append((entry.get("headers", {}).get("X-Amz-Target", ""), body))
        return found, since + complete

    def operations(self, since: int, needle: str) -> list[str]:
        """AWS operations recorded after ``since`` whose request mentions ``needle``.

        ``needle`` is a name prefix or deployment id, so requests of other tests
        (and of other stores) are not counted.
        """
        records, _ = self.records(since)
        return [target.rpartition(".")[2] for target, body in records if needle in body and target]

    def read_calls(self, since: int, needles: tuple[str, ...]) -> tuple[list[dict[str, Any]], int]:
        """Secrets Manager calls after ``since`` whose body mentions a needle, and the
        position to read on from. Each is ``{"operation": ..., "health_probe": ...}``: the
        daemon's store probe is a ``ListSecrets`` with ``MaxResults`` 1, not part of the work."""
        records, position = self.records(since)
        found: list[dict[str, Any]] = []
        for target, body in records:
            if not target.startswith("secretsmanager.") or not any(n in body for n in needles):
                continue
            operation = target.rpartition(".")[2]
            probe = False
            if operation == "ListSecrets":
                with contextlib.suppress(ValueError):
                    probe = json.loads(body).get("MaxResults") == 1
            found.append({"operation": operation, "health_probe": probe})
        return found, position

    def server_errors(self) -> int:
        """Requests moto answered with a 500 so far (its own bugs, e.g. under concurrency)."""
        try:
            with self._log_path.open("rb") as handle:
                return sum(1 for line in handle if b'" 500 -' in line)
        except OSError:
            return 0

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


def secrets_client(endpoint_url: str, region: str = REGION, config: Any = None) -> Any:
    """A plain Secrets Manager client on moto (an async context manager): the console, a
    tool, the benchmarks' bare loops (``config``: an ``AioConfig``)."""
    from aiobotocore.session import AioSession

    return AioSession().create_client(
        "secretsmanager",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=config,
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
