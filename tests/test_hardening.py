"""The defects of the attack run (issue 12, part 3), each with its regression test.

Black-box against a daemon subprocess where the defect is about what a client or an
operator sees (logs, raw HTTP, start-up, restarts); in-process where a deadline or a
budget would otherwise make the test slow.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestServer

from secretmirror import crypto
from secretmirror.api import routes
from secretmirror.auth import FailureLimiter
from secretmirror.daemon import make_app, warn_if_exposed
from secretmirror.errors import ConfigError, DecryptionError, StoreRejected
from secretmirror.runtime import Runtime, ensure_data_dir
from secretmirror.settings import FileStoreSettings, Settings, load_settings
from secretmirror.stores.base import PutOutcome, StoreContext
from secretmirror.stores.file import FileStore, file_name
from tests.blackbox import Http, encryption_key, poll, serve_daemon
from tests.conftest import ADMIN_TOKEN, Api
from tests.daemon_proc import DaemonProcess
from tests.pg import TestPostgres

SECRETS = "/api/v1/secrets"


@pytest.fixture(scope="module")
async def daemon(
    postgres: TestPostgres, template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("hardening")
    async for found in serve_daemon(postgres, template, base / "data"):
        yield found


def raw(port: int, request: bytes, timeout_s: float = 15.0) -> bytes:
    """Send ``request`` as is; everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_and_json(answer: bytes) -> tuple[int, str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    ctype = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("content-type:")), ""
    )
    return status, ctype, json.loads(body) if ctype.startswith("application/json") else body


# -- 1 and 8: tokens in logs; parser-level errors as JSON --------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer TOKEN\r\r\n",  # a token file with CRLF
        b"Authorization: Bearer TOKEN\x00\r\n",
        b"Authorization: Bearer TOKEN\r\nBad Header: x\r\n",
        b"Authorization Bearer TOKEN\r\n",
    ],
)
def test_malformed_request_gets_json_400_and_the_token_stays_out_of_the_log(
    daemon: DaemonProcess, header: bytes
) -> None:
    """A request the HTTP parser refuses is answered with the JSON error shape; the token
    on its header line appears nowhere in the daemon's output (aiohttp.server included)."""
    token = crypto.new_token()
    request = (
        b"GET /api/v1/secrets HTTP/1.1\r\nHost: x\r\n"
        + header.replace(b"TOKEN", token.encode())
        + b"\r\n"
    )
    status, ctype, body = status_and_json(raw(daemon.port, request))
    assert status == 400
    assert ctype.startswith("application/json")
    assert body["error"]["code"] == "bad_request"
    assert token not in json.dumps(body)
    # The daemon logged the event (so the log was written) without the token.
    poll(lambda: "http.protocol_error" in daemon.log_path.read_text(), 30, "the log line")
    assert token not in daemon.log_path.read_text()
    assert token[4:] not in daemon.log_path.read_text()


def test_library_logger_filter_redacts_tokens(caplog: pytest.LogCaptureFixture) -> None:
    """The guard on aiohttp's loggers masks a token and drops the traceback that quotes it."""
    import logging

    from secretmirror.logging import REDACT_LIBRARY

    token = crypto.new_token()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "bad line %s", (f"Bearer {token}",),
        (ValueError, ValueError(f"Authorization: Bearer {token}"), None),
    )  # fmt: skip
    assert REDACT_LIBRARY.filter(record)
    assert token not in record.getMessage()
    assert record.exc_info is None
    assert "ValueError" in record.getMessage()


# -- 2: non-UTF-8 Authorization, lone-surrogate cursor ----------------------------------


def test_non_utf8_authorization_is_401_not_500(daemon: DaemonProcess) -> None:
    """Bytes that are not UTF-8 in the token: 401 in the JSON shape."""
    request = (
        b"GET /api/v1/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3(\r\n\r\n"
    )
    status, _, body = status_and_json(raw(daemon.port, request))
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


def test_cursor_with_a_lone_surrogate_is_400_not_500(daemon: DaemonProcess) -> None:
    """A cursor decoding to a lone surrogate is a malformed cursor."""
    text = json.dumps(["\ud800", str(uuid.uuid4())], ensure_ascii=True).encode()
    cursor = base64.urlsafe_b64encode(text).decode().rstrip("=")
    status, body = Http(daemon.url)("GET", SECRETS, params={"cursor": cursor})
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "http.internal_error" not in daemon.log_path.read_text()


# -- 3: a revoked bootstrap token stays revoked ------------------------------------------


async def test_revoked_bootstrap_token_stays_revoked_across_a_restart(
    postgres: TestPostgres, template: str, tmp_path: Path
) -> None:
    """Revoke the configured admin token, restart with it still configured: still 401,
    and start-up says so in one warning line."""
    async for daemon in serve_daemon(postgres, template, tmp_path / "data"):
        admin = Http(daemon.url)
        other = admin.as_token(admin.make_token("second-admin"))
        bootstrap = next(
            t for t in other.ok("GET", "/api/v1/tokens")["items"] if t["name"] == "bootstrap"
        )
        other.ok("DELETE", f"/api/v1/tokens/{bootstrap['id']}")
        assert admin("GET", SECRETS)[0] == 401
        daemon.stop()
        daemon.start(timeout=60)
        assert admin("GET", SECRETS)[0] == 401
        assert other("GET", SECRETS)[0] == 200
        warnings = [
            ln
            for ln in daemon.log_path.read_text().splitlines()
            if "auth.bootstrap_token_revoked" in ln
        ]
        assert len(warnings) == 1
        assert ADMIN_TOKEN not in daemon.log_path.read_text()


# -- 4: short admin token, failed-auth rate limit ----------------------------------------


def test_short_admin_token_stops_start_up_without_echoing_it(tmp_path: Path) -> None:
    """admin_token under 32 characters: exit 1, one line naming the field, not the value."""
    short = "tooshort-" + uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
    env.update(
        SECRETMIRROR_ADMIN_TOKEN=short,
        SECRETMIRROR_DATA_DIR=str(tmp_path / "d"),
        SECRETMIRROR_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x",
        SECRETMIRROR_ENCRYPTION_KEYS=encryption_key(),
        SECRETMIRROR_LISTEN="127.0.0.1:0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "secretmirror", "serve"], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "admin_token" in done.stderr
    assert "32" in done.stderr
    assert short not in done.stderr + done.stdout


async def test_failed_authentications_are_rate_limited_per_address(
    runtime: Runtime, api: Api
) -> None:
    """Beyond the budget an address gets 429 with Retry-After, a valid token too."""
    runtime.auth_failures = FailureLimiter(burst=5, per_s=0.01)
    bad = api.as_token("smt_" + "q" * 43)
    for _ in range(5):
        assert (await bad.request("GET", SECRETS))[0] == 401
    status, body, headers = await bad.request("GET", SECRETS)
    assert (status, body["error"]["code"]) == (429, "too_many_requests")
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    assert (await api.request("GET", SECRETS))[0] == 429


def test_failure_limiter_drains() -> None:
    """The allowance comes back at per_s."""
    now = [0.0]
    limiter = FailureLimiter(burst=2, per_s=1.0, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(1.0)
    assert limiter.retry_after("b") == 0
    now[0] = 1.5
    assert limiter.retry_after("a") == 0


# -- 5: header and body read deadlines ---------------------------------------------------


def test_a_connection_holding_half_sent_headers_is_closed(daemon: DaemonProcess) -> None:
    """Headers not complete within 10 s: the server closes the connection."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as sock:
        sock.sendall(b"GET /api/v1/secrets HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, no answer
        assert time.monotonic() - started < 55  # well before the old 75-125 s


async def test_a_body_not_sent_in_time_is_408_and_closes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that does not arrive within the body deadline: 408 and the connection closes."""
    monkeypatch.setattr(routes, "BODY_TIMEOUT_S", 0.5)
    server = TestServer(make_app(runtime), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        request = (
            b"POST /api/v1/secrets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        import asyncio

        answer = await asyncio.to_thread(raw, server.port or 0, request)
        status, _, body = status_and_json(answer)
        assert (status, body["error"]["code"]) == (408, "request_timeout")
        assert b"connection: close" in answer.lower()
    finally:
        await server.close()


# -- 6: TLS half-configured; no TLS beyond loopback --------------------------------------


def test_tls_half_configured_stops_start_up(tmp_path: Path) -> None:
    """Only one of tls_cert_file / tls_key_file: a configuration error naming both."""
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        load_settings(tls_cert_file=tmp_path / "cert.pem", data_dir=tmp_path)


def test_listening_beyond_loopback_without_tls_warns(tmp_path: Path) -> None:
    """0.0.0.0 without TLS: one warning; 127.0.0.1 or TLS: none."""
    with structlog.testing.capture_logs() as logs:
        warn_if_exposed(Settings(listen="0.0.0.0:8750", data_dir=tmp_path))
        warn_if_exposed(Settings(listen="127.0.0.1:8750", data_dir=tmp_path))
        warn_if_exposed(Settings(listen="[::1]:8750", data_dir=tmp_path))
    events: list[MutableMapping[str, Any]] = logs
    assert [e["event"] for e in events] == ["daemon.listening_without_tls"]


# -- 7: data dir 0700, the file store's directory, symlinks and forged headers ----------


def test_daemon_data_dir_is_0700(daemon: DaemonProcess) -> None:
    data_dir = Path(daemon.env["SECRETMIRROR_DATA_DIR"])
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_existing_loose_data_dir_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_data_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def _file_store(path: Path) -> FileStore:
    keyring = crypto.Keyring([base64.b64decode(encryption_key())])
    ctx = StoreContext("dep-1", keyring, None, str(path.parent))  # type: ignore[arg-type]
    return FileStore(FileStoreSettings(path=path), ctx)


async def test_file_store_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store_dir.chmod(0o777)
    with pytest.raises(ConfigError, match="written by other users"):
        await _file_store(store_dir).open()


async def test_file_store_refuses_a_planted_locks_symlink(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store_dir / ".locks").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a plain directory"):
        await _file_store(store_dir).open()


async def test_file_store_does_not_follow_an_entry_symlink(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = _file_store(store_dir)
    await store.open()
    target = tmp_path / "outside.secret"
    target.write_text("not ours\n")
    secret_id = str(uuid.uuid4())
    (store_dir / file_name(secret_id)).symlink_to(target)
    with pytest.raises(StoreRejected, match="symlink"):
        await store.get(secret_id)


async def test_forged_tombstone_neither_fences_writes_nor_passes_as_real(tmp_path: Path) -> None:
    """A tombstone planted at version 2**31-1 reads as not authentic, lists as unreadable,
    and the next write replaces it (it used to block every later write)."""
    store_dir = tmp_path / "store"
    store = _file_store(store_dir)
    await store.open()
    secret_id = str(uuid.uuid4())
    assert await store.put(secret_id, 1, {"k": "v1"}, "h1") == PutOutcome.WRITTEN
    forged = {"d": True, "dep": "dep-1", "fmt": 1, "h": None, "id": secret_id, "v": 2**31 - 1}
    (store_dir / file_name(secret_id)).write_bytes(json.dumps(forged).encode() + b"\n")
    with pytest.raises(DecryptionError):
        await store.get(secret_id)
    listed = [e async for e in store.list()]
    assert [(e.secret_id, e.unreadable) for e in listed] == [(secret_id, True)]
    assert await store.put(secret_id, 2, {"k": "v2"}, "h2") == PutOutcome.WRITTEN
    got = await store.get(secret_id)
    assert got is not None
    assert (got.version, got.values) == (2, {"k": "v2"})
    # A real tombstone still fences older writes.
    await store.delete(secret_id, 3)
    assert await store.get(secret_id) is None
    assert await store.put(secret_id, 2, {"k": "old"}, "h2") == PutOutcome.UNCHANGED
    assert [e.unreadable for e in [e async for e in store.list()]] == [False]
