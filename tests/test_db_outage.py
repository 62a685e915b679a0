"""PostgreSQL going away and coming back under a running daemon (a subprocess)."""

from __future__ import annotations

import base64
import json
import secrets
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess

pytestmark = pytest.mark.acceptance


class OwnPostgres:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""

    def __init__(self) -> None:
        import pgserver

        self._tmp = tempfile.TemporaryDirectory(prefix="sm-test-outage-")
        self.pgdata = Path(self._tmp.name) / "pg"
        self.server: Any = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        self.dsn = str(self.server.get_uri())

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-m", "immediate", "stop"], pgdata=self.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()
        self._tmp.cleanup()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    yield server
    server.close()


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def poll(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_postgres_outage_gives_503_and_recovers(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    """With PostgreSQL stopped the API and /readyz answer 503; it serves again on its own."""
    daemon = DaemonProcess(
        {
            "SECRETMIRROR_DATABASE_URL": own_postgres.dsn,
            "SECRETMIRROR_ENCRYPTION_KEYS": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
        tmp_path / "data",
        tmp_path / "daemon.log",
    )
    daemon.start()
    try:
        status, created = call(
            daemon.url + "/api/v1/secrets", "POST", {"name": "before", "values": {"k": "v"}}
        )
        assert status == 201
        own_postgres.stop()

        def unavailable() -> bool:
            return call(daemon.url + f"/api/v1/secrets/{created['id']}")[0] == 503

        poll(unavailable, 30, "reads to answer 503")
        status, body = call(
            daemon.url + "/api/v1/secrets", "POST", {"name": "during", "values": {"k": "v"}}
        )
        assert (status, body["error"]["code"]) == (503, "unavailable")
        assert call(daemon.url + "/readyz")[0] == 503
        assert call(daemon.url + "/healthz")[0] == 200
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        assert "Traceback" not in json.dumps(body)

        own_postgres.start()
        poll(lambda: call(daemon.url + "/readyz")[0] == 200, 30, "/readyz to recover")
        poll(
            lambda: call(daemon.url + f"/api/v1/secrets/{created['id']}")[0] == 200,
            30,
            "reads to recover",
        )
        status, _ = call(
            daemon.url + "/api/v1/secrets", "POST", {"name": "after", "values": {"k": "v"}}
        )
        assert status == 201
    finally:
        daemon.stop()
