"""One LISTEN connection per process wakes both the replication worker and feed readers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from secretmirror import replication
from secretmirror.daemon import open_runtime
from secretmirror.model import Principal
from secretmirror.runtime import Runtime
from secretmirror.service import SecretService
from tests.conftest import Api, make_settings

#: The worker's poll interval here: a delivery long before it proves a wake-up.
POLL_S = 120.0


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    return {
        "backup": {"type": "file", "path": str(tmp_path / "backup-store")},
        "replication": {"poll_interval_s": POLL_S},
        "reconcile": {"verify_interval_s": 0},
    }


@pytest.fixture
async def worker(runtime: Runtime) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(replication.Replicator(runtime).run(stop))
    yield
    stop.set()
    await task


@pytest.fixture
async def other(runtime: Runtime, tmp_path: Path, encryption_key: str) -> AsyncIterator[Runtime]:
    """Another process's runtime on the same database, sending its NOTIFYs."""
    settings = make_settings(
        tmp_path / "other",
        runtime.dsn,
        encryption_key,
        backup={"type": "file", "path": str(tmp_path / "backup-store")},
        reconcile={"verify_interval_s": 0},
    )
    async with open_runtime(settings, runtime.dsn) as rt:
        stop = asyncio.Event()
        notifier = asyncio.create_task(replication.notify_others(rt, stop))
        yield rt
        stop.set()
        await notifier


async def listen_connections(rt: Runtime) -> int:
    count: int = await rt.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    return count


async def test_worker_and_feed_share_one_listen_connection(
    api: Api, runtime: Runtime, worker: None
) -> None:
    """With the API and the worker running, the process holds exactly one LISTEN, once
    both have used it: a delivery the worker was woken for and a change-feed wait."""
    deadline = time.monotonic() + 30
    while await listen_connections(runtime) < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    created = await api.create(f"one-listen-{uuid.uuid4().hex[:8]}", {"k": "v"})
    applied = "SELECT applied_version FROM deliveries WHERE secret_id = $1"
    while not await runtime.pool.fetchval(applied, uuid.UUID(created["id"])):
        assert time.monotonic() < deadline, "the worker did not deliver"
        await asyncio.sleep(0.05)
    _, start, _ = await api.request("GET", "/api/v1/events")
    status, waited, _ = await api.request(
        "GET", "/api/v1/events", params={"after": str(start["last_seq"]), "wait": "0.2"}
    )
    assert (status, waited["events"]) == (200, [])
    assert await listen_connections(runtime) == 1


async def test_another_process_commit_wakes_the_worker(
    api: Api, runtime: Runtime, worker: None, other: Runtime
) -> None:
    """A write committed by another process is delivered long before the worker's next poll."""
    admin_id = await runtime.pool.fetchval("SELECT id::text FROM users WHERE name = 'admin'")
    admin = Principal(admin_id, "admin", "admin")
    started = time.monotonic()
    created = await SecretService(other).create(admin, f"w-{uuid.uuid4().hex[:8]}", {"k": "v"})
    while time.monotonic() - started < POLL_S / 4:
        applied = await runtime.pool.fetchval(
            "SELECT applied_version FROM deliveries WHERE secret_id = $1",
            uuid.UUID(created.meta.id),
        )
        if applied == 1:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the worker was not woken by the other process's NOTIFY")


async def test_a_wake_up_while_the_claim_runs_is_not_lost(
    api: Api, runtime: Runtime, other: Runtime
) -> None:
    """A commit announced while an empty claim runs (too early to see it) ends the wait.

    The worker used to clear its wake-up flag after the claim, on its way into the
    wait: a notification that landed during the claim was wiped out, and the commit
    waited for the next poll (two minutes here).
    """
    admin_id = await runtime.pool.fetchval("SELECT id::text FROM users WHERE name = 'admin'")
    admin = Principal(admin_id, "admin", "admin")
    created: list[str] = []

    class Racing(replication.Replicator):
        async def _claim_and_start(self) -> int:
            claimed = await super()._claim_and_start()
            if claimed == 0 and not created:
                result = await SecretService(other).create(admin, "raced", {"k": "v"})
                created.append(result.meta.id)
                deadline = time.monotonic() + 30
                while not runtime.wake.is_set():  # the NOTIFY reached this process's worker
                    assert time.monotonic() < deadline, "no notification arrived"
                    await asyncio.sleep(0.01)
            return claimed

    stop = asyncio.Event()
    task = asyncio.create_task(Racing(runtime).run(stop))
    try:
        deadline = time.monotonic() + POLL_S / 4
        while time.monotonic() < deadline:
            if created:
                applied = await runtime.pool.fetchval(
                    "SELECT min(applied_version) FROM deliveries WHERE secret_id = $1",
                    uuid.UUID(created[0]),
                )
                if applied == 1:
                    return
            await asyncio.sleep(0.05)
        pytest.fail("the wake-up that landed during the claim was lost")
    finally:
        stop.set()
        await task
