"""Logs: JSON lines with stable event names, and never a secret value or a token."""

from __future__ import annotations

import io
import json
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import structlog

from secretmirror import logging as sm_logging
from secretmirror.runtime import Runtime
from tests.conftest import ADMIN_TOKEN, Api

SECRETS = "/api/v1/secrets"
CANARY = "canary-" + secrets.token_hex(16)


def _forget_cached_loggers() -> None:
    """Drop the loggers structlog cached on first use under an earlier configuration.

    ``configure`` sets ``cache_logger_on_first_use``: a module-level logger used by
    an earlier test would keep writing to that test's stdout, and this test would
    see nothing (and pass for the wrong reason).
    """
    for name, module in list(sys.modules.items()):
        if not name.startswith("secretmirror"):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, structlog._config.BoundLoggerLazyProxy):
                vars(value).pop("bind", None)


class JsonLogs:
    """The daemon's JSON-lines logging, printing to pytest's captured stdout."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._captured: list[str] = []

    def start(self) -> None:
        """Configure logging; call it in the test body, where ``sys.stdout`` is the capture."""
        sm_logging.configure(level="DEBUG", json_lines=True)
        _forget_cached_loggers()

    def read(self) -> str:
        out = self._capsys.readouterr()
        self._captured.append(out.out + out.err)
        return "".join(self._captured)


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[JsonLogs]:
    root_handlers = list(logging.getLogger().handlers)
    before = structlog.get_config()
    logs = JsonLogs(capsys)
    yield logs
    structlog.configure(**before)
    _forget_cached_loggers()
    for handler in logging.getLogger().handlers:
        if handler not in root_handlers:
            logging.getLogger().removeHandler(handler)


def events_in(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def _create(api: Api, runtime: Runtime) -> None:
    await api.create("created", {"password": CANARY})


async def _read(api: Api, runtime: Runtime) -> None:
    created = await api.create("read", {"password": CANARY})
    await api.request("GET", f"{SECRETS}/{created['id']}")
    await api.request("GET", f"{SECRETS}/{created['id']}", params={"version": "1"})


async def _patch_and_put(api: Api, runtime: Runtime) -> None:
    created = await api.create("changed", {"a": "1"})
    path = f"{SECRETS}/{created['id']}"
    await api.request("PATCH", path, json={"values": {"b": CANARY}})
    await api.request("PUT", path, json={"name": "changed", "values": {"c": CANARY}})
    await api.request("PATCH", path, json={"name": "renamed"})
    await api.request("DELETE", path)


async def _bad_key(api: Api, runtime: Runtime) -> None:
    status, _, _ = await api.request(
        "POST", SECRETS, json={"name": "bad", "values": {f"bad key {CANARY}": CANARY}}
    )
    assert status == 422


async def _bad_name(api: Api, runtime: Runtime) -> None:
    status, _, _ = await api.request(
        "POST", SECRETS, json={"name": f"bad name {CANARY}", "values": {"a": CANARY}}
    )
    assert status == 422


async def _bad_value_type(api: Api, runtime: Runtime) -> None:
    status, _, _ = await api.request(
        "POST", SECRETS, json={"name": "typed", "values": {"a": [CANARY], "b": CANARY}}
    )
    assert status == 422


async def _too_large(api: Api, runtime: Runtime) -> None:
    status, _, _ = await api.request(
        "POST", SECRETS, json={"name": "large", "values": {"a": CANARY * 10_000}}
    )
    assert status == 413


async def _malformed_json(api: Api, runtime: Runtime) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    body = io.BytesIO(f'{{"name": "x", "values": {{"a": "{CANARY}"'.encode())
    async with api.client.post(SECRETS, data=body, headers=headers) as response:
        assert response.status == 400


async def _stale_if_match(api: Api, runtime: Runtime) -> None:
    created = await api.create("guarded", {"a": "1"})
    status, _, _ = await api.request(
        "PATCH",
        f"{SECRETS}/{created['id']}",
        json={"values": {"a": CANARY}},
        headers={"If-Match": '"5"'},
    )
    assert status == 412


async def _name_taken(api: Api, runtime: Runtime) -> None:
    await api.create("taken", {"a": "1"})
    status, _, _ = await api.request(
        "POST", SECRETS, json={"name": "taken", "values": {"a": CANARY}}
    )
    assert status == 409


async def _decryption_failure(api: Api, runtime: Runtime) -> None:
    created = await api.create("tampered", {"a": CANARY})
    other = await api.create("other", {"a": CANARY})
    await runtime.pool.execute(
        """UPDATE secretmirror_values SET ciphertext =
               (SELECT ciphertext FROM secretmirror_values WHERE secret_id = $1)
           WHERE secret_id = $2""",
        other["id"],
        created["id"],
    )
    await runtime.pool.execute(
        "UPDATE events SET snapshot = NULL WHERE secret_id = $1", created["id"]
    )
    status, _, _ = await api.request("GET", f"{SECRETS}/{created['id']}")
    assert status >= 500


async def _canary_as_token(api: Api, runtime: Runtime) -> None:
    status, _, _ = await api.as_token(CANARY).request("GET", SECRETS)
    assert status == 401


SCENARIOS: dict[str, Callable[[Api, Runtime], Awaitable[None]]] = {
    "create": _create,
    "read": _read,
    "patch-put-rename-delete": _patch_and_put,
    "bad-key": _bad_key,
    "bad-name": _bad_name,
    "bad-value-type": _bad_value_type,
    "too-large": _too_large,
    "malformed-json": _malformed_json,
    "stale-if-match": _stale_if_match,
    "name-taken": _name_taken,
    "decryption-failure": _decryption_failure,
    "canary-as-token": _canary_as_token,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_canary_value_never_reaches_the_logs(
    api: Api,
    runtime: Runtime,
    json_logs: JsonLogs,
    caplog: pytest.LogCaptureFixture,
    scenario: str,
) -> None:
    """Whatever happens to a request carrying a secret value, the value is not logged."""
    json_logs.start()
    caplog.set_level(logging.DEBUG)
    await SCENARIOS[scenario](api, runtime)
    output = json_logs.read() + caplog.text
    assert CANARY not in output
    assert CANARY.encode().hex() not in output


async def test_writes_are_logged_as_json_lines_with_event_names(
    api: Api, json_logs: JsonLogs
) -> None:
    """A create and an update each log one JSON line with a stable event name and the id."""
    json_logs.start()
    created = await api.create("logged", {"a": "1"})
    await api.request("PATCH", f"{SECRETS}/{created['id']}", json={"values": {"a": "2"}})
    events = events_in(json_logs.read())
    named = [(e["event"], e.get("secret_id"), e.get("version")) for e in events]
    assert ("secret.created", created["id"], 1) in named
    assert ("secret.updated", created["id"], 2) in named
    assert all("request_id" in e for e in events if e["event"].startswith("secret."))


async def test_server_errors_are_logged_without_values(
    api: Api, runtime: Runtime, json_logs: JsonLogs
) -> None:
    """A 5xx is logged (so the capture is live) and the line holds no value."""
    json_logs.start()
    await _decryption_failure(api, runtime)
    output = json_logs.read()
    assert any(e["event"].startswith("http.") for e in events_in(output))
    assert CANARY not in output


async def test_tokens_never_reach_the_logs(api: Api, json_logs: JsonLogs) -> None:
    """Neither the admin token nor a newly minted token is logged."""
    json_logs.start()
    status, created, _ = await api.request("POST", "/api/v1/tokens", json={"name": "minted"})
    assert status == 201
    await api.as_token(created["token"]).request("GET", SECRETS)
    await api.request("DELETE", f"/api/v1/tokens/{created['id']}")
    await api.as_token(created["token"]).request("GET", SECRETS)
    output = json_logs.read()
    assert created["token"] not in output
    assert ADMIN_TOKEN not in output


def test_redact_replaces_fields_named_like_secrets() -> None:
    """The last-guard processor blanks fields whose names say they are secret."""
    event = {"event": "x", "values": {"a": CANARY}, "token": CANARY, "secret_id": "id"}
    redacted = sm_logging.redact(None, "info", event)
    assert CANARY not in json.dumps(dict(redacted))
    assert redacted["secret_id"] == "id"
