"""Black-box helpers: a ``secretmirror serve`` subprocess on a fresh test database, and a
plain HTTP client that returns (status, JSON body) and never raises on an HTTP error."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess
from tests.pg import TestPostgres

BIN = Path(sys.executable).parent / "secretmirror"


class Http:
    """Requests to one daemon, as ``token`` (the admin by default)."""

    def __init__(self, url: str, token: str = ADMIN_TOKEN) -> None:
        self.url = url
        self.token = token

    def as_token(self, token: str) -> Http:
        return Http(self.url, token)

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        sent = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        request = urllib.request.Request(url, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw) if raw else None
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, found = self(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, found)
        return found

    def create(self, name: str, values: dict[str, str], private: bool = False) -> Any:
        return self.ok(
            "POST", "/api/v1/secrets", {"name": name, "values": values, "private": private}
        )

    def user(self, name: str, role: str) -> tuple[str, str]:
        """Create a user with a token of its own (made by the user itself); (id, token)."""
        created = self.ok("POST", "/api/v1/users", {"name": name, "role": role})
        # A token the admin makes for the user cannot read its private secrets, so the
        # user's own token is made with that first one (its own tokens are its to make).
        first = self.ok("POST", "/api/v1/tokens", {"user": name, "name": "bootstrap"})["token"]
        own = self.as_token(first).ok("POST", "/api/v1/tokens", {"name": "own"})["token"]
        return str(created["id"]), str(own)

    def make_token(self, name: str, scopes: Any = None, user: str | None = None) -> str:
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = scopes
        if user is not None:
            body["user"] = user
        return str(self.ok("POST", "/api/v1/tokens", body)["token"])


def encryption_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def serve_daemon(
    postgres: TestPostgres, template: str, data_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[DaemonProcess]:
    """A daemon on its own clone of the migrated template; stopped and dropped after."""
    name = await postgres.create_database(template)
    daemon = DaemonProcess(
        {
            "SECRETMIRROR_DATABASE_URL": postgres.dsn(name),
            "SECRETMIRROR_ENCRYPTION_KEYS": encryption_key(),
            **(env or {}),
        },
        data_dir,
        data_dir.parent / f"{data_dir.name}.log",
    )
    try:
        daemon.start(timeout=60)
        yield daemon
    finally:
        daemon.stop()
        await postgres.drop_database(name)


def cli(
    url: str, token: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``secretmirror ARGS`` as a subprocess against ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
    env.update(SECRETMIRROR_URL=url, SECRETMIRROR_TOKEN=token)
    return subprocess.run(
        [str(BIN), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def poll(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def log_lines(path: Path) -> Iterator[str]:
    yield from path.read_text(errors="replace").splitlines()
