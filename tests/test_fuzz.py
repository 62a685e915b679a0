"""schemathesis against a live server: no 5xx and no response that breaks the OpenAPI document.

The server runs on the test's event loop. schemathesis is synchronous: its Python
API runs in a worker thread and its command line (which adds the coverage and
stateful phases) in a subprocess, while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import APIOperation

from secretmirror.api.jobs import JOBS
from secretmirror.daemon import make_app
from secretmirror.runtime import Runtime
from tests.conftest import ADMIN_TOKEN, Api

#: Examples per operation and generation mode (about 20 operations x 2 modes, plus the
#: runs aimed at existing objects); the whole module stays well under a minute.
MAX_EXAMPLES = 15
#: The command-line run's examples per stateful scenario, and its time budget in seconds.
CLI_MAX_EXAMPLES = 10
CLI_MAX_TIME_S = 15
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: Schema-valid requests may still meet state: a stale If-Match (412) or a purged version (410)
#: answer valid data correctly, as 404 and 409 do in schemathesis' defaults.
EXPECTED_STATUSES = ["2xx", "401", "403", "404", "409", "410", "412"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": EXPECTED_STATUSES}}}
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """schemathesis probes every route without and with a bad token on purpose: lift the
    failed-authentication limit, or its 429s would answer the valid requests too."""
    return {"auth": {"failed_burst": 1_000_000}}


@pytest.fixture
async def base_url(runtime: Runtime) -> AsyncIterator[str]:
    """The API served on 127.0.0.1 on a free port."""
    app = make_app(runtime)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await app[JOBS].shutdown()  # reconcile jobs the fuzzer started
        await server.close()


def _fuzz_operation(
    operation: APIOperation, base_url: str, mode: GenerationMode, fixed: dict[str, Any]
) -> str | None:
    """Run one operation's examples; a report of the first failure, or None."""
    session = requests.Session()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        # The same examples every run: CI judges a change, not the luck of a draw.
        # (Explore further by hand: SECRETMIRROR_FUZZ_RANDOM=1.)
        derandomize=not os.environ.get("SECRETMIRROR_FUZZ_RANDOM"),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
        # No shrinking: a failing example is reported as found. Shrinking one that fails
        # by a 10 s timeout ran past the test's time limit and hid the example.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, session=session, headers=AUTH, timeout=10)

    try:
        run()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without parameters or body.
        if mode is not GenerationMode.NEGATIVE:
            raise
    except BaseException as exc:  # schemathesis reports a BaseExceptionGroup
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return f"{operation.label} [{mode.value}]\n{traceback.format_exc(limit=3)}"
    finally:
        session.close()
    return None


def fuzz(base_url: str, known: dict[str, str]) -> list[str]:
    """Every operation in both generation modes; each failure as a report."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json", config=CONFIG)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        runs: list[tuple[GenerationMode, dict[str, Any]]] = [
            (GenerationMode.POSITIVE, {}),
            (GenerationMode.NEGATIVE, {}),
        ]
        if operation.label == "GET /api/v1/secrets":
            # A cursor is opaque: only one the server issued is valid data. Random
            # ones (400) are still sent in the negative run.
            runs[0] = (GenerationMode.POSITIVE, {"query": {"cursor": known["cursor"]}})
        if operation.label == "GET /admin/v1/audit":
            runs[0] = (GenerationMode.POSITIVE, {"query": {"cursor": known["audit_cursor"]}})
        if operation.label == "GET /api/v1/events":
            # A long poll with nothing to report lasts its wait (up to 60 s, past the
            # 10 s request timeout): keep every example quick, the negative ones too.
            # A "negative" example may break only a header the test then overrides,
            # leaving a valid long poll. test_consume_api covers wait's own validation.
            runs = [(mode, {"query": {"wait": 0}}) for mode, _ in runs]
        if "{name}" in operation.path:
            runs.append((GenerationMode.POSITIVE, {"path_parameters": {"name": "fuzz-target"}}))
        if "{id}" in operation.path:
            # Random ids are all 404; also aim at an object that exists.
            kind = next(
                k for k in ("token", "job", "secret", "user") if f"/{k}s/" in operation.path
            )
            runs.append((GenerationMode.POSITIVE, {"path_parameters": {"id": known[kind]}}))
        for mode, fixed in runs:
            failure = _fuzz_operation(operation, base_url, mode, fixed)
            if failure is not None:
                failures.append(failure)
    return failures


def _run_in_thread(function: Callable[..., list[str]], *args: Any) -> Any:
    return asyncio.to_thread(function, *args)


async def test_api_matches_its_openapi_document(api: Api, base_url: str) -> None:
    """Fuzzed requests get no 5xx and every response matches the served OpenAPI document."""
    secret = await api.create("fuzz-target", {"a": "1"})
    await api.create("fuzz-other", {"a": "1"})
    status, token, _ = await api.request("POST", "/api/v1/tokens", json={"name": "fuzz-target"})
    assert status == 201
    _, page, _ = await api.request("GET", "/api/v1/secrets", params={"limit": "1"})
    status, job, _ = await api.request("POST", "/admin/v1/reconcile", json={"mode": "verify"})
    assert status == 202
    status, user, _ = await api.request(
        "POST", "/api/v1/users", json={"name": "fuzz-user", "role": "reader"}
    )
    assert status == 201
    for _ in range(2):  # two audited requests: a page of one has a cursor
        await api.request("GET", f"/api/v1/secrets/{secret['id']}")
    _, audit_page, _ = await api.request("GET", "/admin/v1/audit", params={"limit": "1"})
    known = {
        "audit_cursor": audit_page["next_cursor"],
        "user": user["id"],
        "secret": secret["id"],
        "token": token["id"],
        "job": job["id"],
        "cursor": page["next_cursor"],
    }
    failures = await _run_in_thread(fuzz, base_url, known)
    assert failures == [], "\n\n".join(failures)


def _cli_config(path: Path, cursor: str, audit_cursor: str) -> Path:
    """A schemathesis.toml for the command-line run (TOML accepts JSON strings as values)."""
    statuses = json.dumps(EXPECTED_STATUSES)
    path.write_text(
        f"""
[checks.positive_data_acceptance]
expected-statuses = {statuses}

# A cursor is opaque: only one the server issued is valid data.
[[operations]]
include-name = "GET /api/v1/secrets"
parameters = {{ "query.cursor" = {json.dumps(cursor)} }}

[[operations]]
include-name = "GET /admin/v1/audit"
parameters = {{ "query.cursor" = {json.dumps(audit_cursor)} }}

# A long poll with nothing to report lasts its wait: keep the calls quick.
[[operations]]
include-name = "GET /api/v1/events"
parameters = {{ "query.wait" = 0 }}

# The stateful phase would revoke the very token the run uses;
# test_api_matches_its_openapi_document fuzzes this operation on its own token.
[[operations]]
include-name = "DELETE /api/v1/tokens/{{id}}"
enabled = false
"""
    )
    return path


async def test_cli_run_with_every_phase_finds_nothing(
    api: Api, base_url: str, tmp_path: Path
) -> None:
    """`st run` (examples, coverage and stateful phases; every check) reports no failure."""
    for name in ("cli-a", "cli-b"):
        await api.create(name, {"a": "1"})
    _, page, _ = await api.request("GET", "/api/v1/secrets", params={"limit": "1"})
    _, audit_page, _ = await api.request("GET", "/admin/v1/audit", params={"limit": "1"})
    config = _cli_config(
        tmp_path / "schemathesis.toml", page["next_cursor"], audit_page["next_cursor"]
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{base_url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {ADMIN_TOKEN}",
        "--checks",
        "all",
        # Fuzzing is test_api_matches_its_openapi_document's job; these phases add the rest.
        "--phases",
        "examples,coverage,stateful",
        "--max-examples",
        str(CLI_MAX_EXAMPLES),
        "--generation-database",
        "none",
        "--max-time",
        str(CLI_MAX_TIME_S),
        "--continue-on-failure",
        # The same draw every run, as the in-process fuzzing does (derandomize): CI judges a
        # change, not luck; a random seed found `"stores": null` accepted. Explore further
        # by hand with SECRETMIRROR_FUZZ_RANDOM=1.
        *([] if os.environ.get("SECRETMIRROR_FUZZ_RANDOM") else ["--seed", "20261204"]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    # schemathesis warns about an operation none of whose positive cases it saw accepted
    # in this time-boxed run. On a loaded machine one to three operations now and then end
    # up there although they work (seen: GET /api/v1/tokens, GET .../history; every 401 the
    # server logged in those runs was one of schemathesis' own no-token probes). A token
    # the server refuses would put every operation (27) in the warning: the bound leaves
    # room for a slower machine and still tells the two apart.
    warned = re.search(r"Authentication failed: (\d+) operations?", report)
    assert warned is None or int(warned.group(1)) <= 9, report


async def test_openapi_document_is_served_and_valid(base_url: str) -> None:
    """The served document loads as OpenAPI and names exactly the routes the server has."""
    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, f"{base_url}/api/v1/openapi.json"
    )
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert {
        "POST /api/v1/secrets",
        "GET /api/v1/secrets",
        "GET /api/v1/secrets/{id}",
        "PATCH /api/v1/secrets/{id}",
        "PUT /api/v1/secrets/{id}",
        "DELETE /api/v1/secrets/{id}",
        "GET /api/v1/secrets/{id}/history",
        "GET /api/v1/secrets/by-name/{name}",
        "GET /api/v1/secrets/by-name/{name}/history",
        "GET /api/v1/events",
        "POST /api/v1/users",
        "GET /api/v1/users",
        "PATCH /api/v1/users/{id}",
        "DELETE /api/v1/users/{id}",
        "POST /api/v1/tokens",
        "GET /api/v1/tokens",
        "DELETE /api/v1/tokens/{id}",
        "POST /admin/v1/reconcile",
        "GET /admin/v1/jobs",
        "GET /admin/v1/jobs/{id}",
        "POST /admin/v1/jobs/{id}/cancel",
        "GET /admin/v1/status",
        "GET /admin/v1/dead-letters",
        "POST /admin/v1/dead-letters/retry",
        "GET /admin/v1/keys",
        "POST /admin/v1/keys/rotate",
        "GET /admin/v1/audit",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    } == labels
