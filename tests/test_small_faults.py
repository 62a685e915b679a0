"""The smaller faults of issue #11 part 4, each shown failing before its fix.

The daemon under test runs in-process with the ``sql`` primary in the main
database and a ``sql`` backup in another one, except where a subprocess is
the only way to see the behaviour (a taken port).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest

from secretmirror import deliveries, metrics, replication
from secretmirror.auth import Accounts, authenticate
from secretmirror.daemon import open_runtime
from secretmirror.db import Gateway
from secretmirror.errors import StoreUnavailable, Unavailable
from secretmirror.model import Principal
from secretmirror.runtime import Runtime
from secretmirror.service import SecretService
from secretmirror.stores.base import PutOutcome
from tests.conftest import ADMIN_TOKEN, Api, make_settings
from tests.pg import TestPostgres
from tests.test_metrics import value
from tests.test_replication import until, worker


@pytest.fixture
async def backup_dsn(postgres: TestPostgres) -> AsyncIterator[str]:
    name = await postgres.create_database()
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def settings_overrides(backup_dsn: str) -> dict[str, Any]:
    return {
        "backup": {"type": "sql", "database_url": backup_dsn},
        "replication": {"poll_interval_s": 0.2, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "reconcile": {"verify_interval_s": 0},
    }


async def drained_via_worker_pool(rt: Runtime) -> bool:
    status = await deliveries.status(rt.worker_pool, rt.target_keys)
    return all(s.pending == 0 for s in status.values())


async def test_the_backlog_is_due_as_soon_as_the_store_is_up_again(
    api: Api, runtime: Runtime
) -> None:
    """Deliveries that collected backoff while the store was down do not wait it out."""
    backup = runtime.backup
    assert backup is not None
    real_put = backup.store.put
    down = {"on": True}

    async def put(sid: str, version: int, values: dict[str, str], h: str) -> PutOutcome:
        if down["on"]:
            raise StoreUnavailable("down for the test")
        return await real_put(sid, version, values, h)

    backup.store.put = put  # type: ignore[method-assign]
    for i in range(3):
        await api.create(f"backlog{i}", {"k": "v"})

    async def is_down() -> bool:
        return not backup.up

    async with worker(runtime):
        await until(is_down)
        # The backoff a backlog collects over many attempts while a store is down.
        await runtime.pool.execute(
            "UPDATE deliveries SET next_attempt_at = now() + interval '1 hour' WHERE target = $1",
            runtime.key_of("backup"),
        )
        down["on"] = False
        await replication.probe_once(runtime)  # what the daemon does every few seconds
        assert backup.up
        await until(lambda: drained_via_worker_pool(runtime), timeout=30)


async def test_delete_gives_up_after_bounded_retries(api: Api, runtime: Runtime) -> None:
    """A delete that keeps losing the race answers 503 instead of retrying forever."""
    created = await api.create("contended", {"k": "v"})
    service = SecretService(runtime)

    async def always_lost(*_args: Any, **_kwargs: Any) -> None:
        return None

    service._change = always_lost  # type: ignore[method-assign]
    principal = await authenticate(runtime.pool, f"Bearer {ADMIN_TOKEN}")
    with pytest.raises(Unavailable):
        await asyncio.wait_for(service.delete(principal, created["id"], None), 30)


async def test_closing_the_runtime_fits_the_shutdown_budget(
    tmp_path: Path, database: str, encryption_key: str
) -> None:
    """Pools with connections still out (a request, a job) are closed within the 10 s budget,
    not after 10 s each."""
    settings = make_settings(tmp_path, database, encryption_key)

    async def run() -> None:
        async with open_runtime(settings, database) as rt:
            await rt.pool.pool.acquire()
            await rt.worker_pool.pool.acquire()

    await asyncio.wait_for(run(), 9)


async def test_accounts_answer_503_when_the_database_is_down(runtime: Runtime) -> None:
    """Users and tokens: a database outage is 503 unavailable, not an unhandled error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nothing_there = await asyncpg.create_pool(f"postgresql://u@127.0.0.1:{port}/db", min_size=0)
    accounts = Accounts(Gateway(nothing_there))
    admin = Principal(str(uuid.uuid4()), "admin", "admin")
    calls = [
        accounts.create_user(admin, "newcomer", "reader"),
        accounts.list_users(admin),
        accounts.update_user(admin, str(uuid.uuid4()), "writer", None),
        accounts.delete_user(admin, str(uuid.uuid4())),
        accounts.create_token(admin, None, "t", None),
        accounts.create_token(admin, "someone", "t", None),
        accounts.list_tokens(admin),
        accounts.revoke_token(admin, str(uuid.uuid4())),
    ]
    try:
        for call in calls:
            with pytest.raises(Unavailable):
                await call
    finally:
        await nothing_there.close()


async def test_lag_returns_to_zero_after_a_drain_while_the_api_is_busy(
    api: Api, runtime: Runtime
) -> None:
    """With every connection of the API's pool taken by requests, the lag gauge still
    follows the drain down to 0."""
    for i in range(5):
        await api.create(f"lagging{i}", {"k": "v"})

    async def scrape_lag() -> float | None:
        async with api.client.get("/metrics") as response:
            return value(
                await response.text(), "secretmirror_replication_lag_seconds", target="backup"
            )

    lag = await scrape_lag()
    assert lag is not None
    assert lag > 0
    pool = runtime.pool.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    busy = [asyncio.create_task(api.request("GET", "/api/v1/secrets")) for _ in range(10)]
    try:
        async with worker(runtime):
            await until(lambda: drained_via_worker_pool(runtime))

        async def lag_is_zero() -> bool:
            return await scrape_lag() == 0

        await until(lag_is_zero, timeout=30)
    finally:
        for conn in held:
            await pool.release(conn)
        await asyncio.gather(*busy, return_exceptions=True)


def test_fallback_counter_series_start_at_zero() -> None:
    """Every known (operation, source) of secretmirror_fallback_total is exposed from start
    (at 0 in a fresh process; other tests in this one may have counted some)."""
    text = generate_latest(metrics.REGISTRY).decode()
    for operation, source in (("read", "backup"), ("read", "log"), ("write", "backup")):
        found = value(text, "secretmirror_fallback_total", operation=operation, source=source)
        assert found is not None


def test_a_taken_port_is_one_line_and_leaves_nothing_behind(tmp_path: Path, database: str) -> None:
    """Bind first: a port in use prints one error line, exits 1, and creates no data dir."""
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": "/usr/bin:/bin",
            "SECRETMIRROR_DATA_DIR": str(data_dir),
            "SECRETMIRROR_LISTEN": f"127.0.0.1:{port}",
            "SECRETMIRROR_DATABASE_URL": database,
        }
        done = subprocess.run(
            [sys.executable, "-m", "secretmirror", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        f"error: cannot listen on 127.0.0.1:{port}: address already in use\n",
    )
    assert not data_dir.exists()
