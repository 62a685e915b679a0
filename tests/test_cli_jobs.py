"""`secretmirror backup | restore | reconcile` against a live server with a sql backup."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from secretmirror.errors import StoreRejected
from secretmirror.runtime import Runtime
from tests.pg import TestPostgres
from tests.test_cli import Cli, run, server_logs, server_url  # noqa: F401 (fixtures)


@pytest.fixture
async def backup_dsn(postgres: TestPostgres) -> AsyncIterator[str]:
    name = await postgres.create_database()
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def settings_overrides(backup_dsn: str) -> dict[str, Any]:
    return {
        "backup": {"type": "sql", "database_url": backup_dsn},
        "reconcile": {"verify_interval_s": 0},
    }


async def test_backup_waits_and_prints_a_summary(run: Cli) -> None:  # noqa: F811
    """`backup` waits for the job and shows the counts."""
    for i in range(5):
        await run.ok("secret", "create", f"s{i}", "k=v")
    out = await run.ok("backup")
    assert "(backup): succeeded" in out
    assert "COPIED" in out


async def test_backup_json_then_reconcile_clean(run: Cli) -> None:  # noqa: F811
    """`backup -o json` reports copies; `reconcile -o json` then finds both stores in sync."""
    for i in range(4):
        await run.ok("secret", "create", f"s{i}", "k=v")
    job = json.loads(await run.ok("backup", "-o", "json"))
    assert (job["status"], job["counts"]["copied"]) == ("succeeded", 4)
    verify = json.loads(await run.ok("reconcile", "-o", "json"))
    assert verify["mode"] == "verify"
    assert verify["counts"]["stores"]["backup"]["in_sync"] == 4
    assert verify["counts"]["stores"]["backup"]["missing"] == 0


async def test_no_wait_returns_the_queued_job(run: Cli) -> None:  # noqa: F811
    """`--no-wait` prints the job as started without following it."""
    job = json.loads(await run.ok("reconcile", "--no-wait", "-o", "json"))
    assert job["status"] in ("queued", "running", "succeeded")
    assert job["mode"] == "verify"


async def test_failures_exit_3(run: Cli, runtime: Runtime) -> None:  # noqa: F811
    """A secret the backup rejects makes `backup` exit with code 3 and list the failure."""
    await run.ok("secret", "create", "refused", "k=v")
    assert runtime.backup is not None

    async def refuse(*_args: Any) -> Any:
        raise StoreRejected("refused by the store")

    runtime.backup.store.put = refuse  # type: ignore[method-assign]
    result = await run("backup")
    assert result.exit_code == 3
    assert "refused by the store" in result.stdout


async def test_dry_run_needs_repair(run: Cli) -> None:  # noqa: F811
    """`reconcile --dry-run` without --repair is a usage error."""
    result = await run("reconcile", "--dry-run")
    assert result.exit_code == 2
