"""Delivery leases are exclusive across daemons (issue #11, part 1).

Two ``Runtime``s on one database stand for two daemons: A runs the
replication worker, B serves the API. The primary is a ``sql`` store in
another database (so the API writes inline), the backup is AWS on moto, which
has no conditional write: whichever ``PutSecretValue`` lands last is current.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from secretmirror import deliveries
from secretmirror.daemon import make_app, open_runtime
from secretmirror.errors import StoreUnavailable
from secretmirror.replication import Replicator
from secretmirror.runtime import Runtime
from secretmirror.stores.aws import AwsStore
from tests.conftest import Api, make_settings
from tests.moto import aws_settings
from tests.pg import TestPostgres
from tests.test_replication import drained, until, worker

T = TypeVar("T")


@pytest.fixture
async def primary_dsn(postgres: TestPostgres) -> AsyncIterator[str]:
    name = await postgres.create_database()
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def settings_overrides(primary_dsn: str, moto_server: str, aws_prefix: str) -> dict[str, Any]:
    return {
        "primary": {"type": "sql", "database_url": primary_dsn},
        "backup": {"type": "aws", **aws_settings(moto_server, aws_prefix, max_writes_per_s=5000)},
        "replication": {"poll_interval_s": 0.2, "lease_s": 60, "inline_timeout_s": 1},
        "reconcile": {"verify_interval_s": 0},
    }


@pytest.fixture
async def daemon_b(
    tmp_path: Path,
    database: str,
    encryption_key: str,
    settings_overrides: dict[str, Any],
    runtime: Runtime,
) -> AsyncIterator[Runtime]:
    """A second daemon on the same database and stores (``runtime`` is daemon A)."""
    settings = make_settings(tmp_path / "b", database, encryption_key, **settings_overrides)
    async with open_runtime(settings, database) as rt:
        rt.node = "daemon-b:1"
        yield rt


@pytest.fixture
async def api_b(daemon_b: Runtime) -> AsyncIterator[Api]:
    async with TestClient(TestServer(make_app(daemon_b))) as client:
        yield Api(client)


class PutGate:
    """Holds the first ``PutSecretValue`` a store sends until ``open()``.

    The hold sits after the store decided to write (it read the entry's state),
    where a slow network would delay the request.
    """

    def __init__(self, store: AwsStore) -> None:
        self.entered = asyncio.Event()
        self._open = asyncio.Event()
        self._used = False
        real = store._write

        async def write(operation: str, call: Callable[[], Awaitable[T]]) -> T:
            if operation == "PutSecretValue" and not self._used:
                self._used = True
                self.entered.set()
                await self._open.wait()
            return await real(operation, call)

        store._write = write  # type: ignore[method-assign]

    def open(self) -> None:
        self._open.set()


async def _row(rt: Runtime, sid: str) -> tuple[int, int, str | None]:
    row = await rt.pool.fetchrow(
        "SELECT version, applied_version, leased_by FROM deliveries"
        " WHERE target = $1 AND secret_id = $2",
        rt.key_of("backup"),
        uuid.UUID(sid),
    )
    assert row is not None
    return row["version"], row["applied_version"], row["leased_by"]


async def _deliver_once(rt: Runtime) -> int:
    """One claim-and-deliver round of ``rt``'s worker code for the backup; how many it claimed."""
    replicator = Replicator(rt)
    lease_ends = time.monotonic() + rt.settings.replication.lease_s
    claims = await deliveries.claim(
        rt.worker_pool, rt.node, 10, [rt.key_of("backup")], rt.settings.replication.lease_s
    )
    events = await deliveries.events_for(rt.worker_pool, claims)
    for claim in claims:
        event = events.get((claim.secret_id, claim.version))
        await replicator._deliver(claim, event, lease_ends)
    await replicator._flush_done()
    return len(claims)


async def test_a_slow_worker_write_never_lands_over_a_newer_version(
    runtime: Runtime, daemon_b: Runtime, api_b: Api
) -> None:
    """The interleaving of issue #11: W (daemon A) is mid-write of v2 when daemon B commits
    v3; X (B's worker code) must not claim v3 until W is done, so AWS ends at v3."""
    backup_a, backup_b = runtime.backup, daemon_b.backup
    assert backup_a is not None
    assert backup_b is not None
    assert isinstance(backup_a.store, AwsStore)
    created = await api_b.create("raced", {"k": "v1"})
    sid = created["id"]
    async with worker(runtime):
        await until(lambda: drained(runtime))
        assert (await _row(runtime, sid))[:2] == (1, 1)
        gate = PutGate(backup_a.store)

        # 1. W, daemon A's worker, claims the backup row at v2 and starts PutSecretValue.
        status, _, _ = await api_b.request(
            "PATCH", f"/api/v1/secrets/{sid}", json={"values": {"k": "v2"}}
        )
        assert status == 200
        await asyncio.wait_for(gate.entered.wait(), 30)

        # 2. Daemon B's API commits v3 (its inline write reaches the primary).
        status, body, _ = await api_b.request(
            "PATCH", f"/api/v1/secrets/{sid}", json={"values": {"k": "v3"}}
        )
        assert (status, body["version"]) == (200, 3)

        # 3. X, daemon B's worker code, finds nothing to claim: W holds the lease.
        claimed = await _deliver_once(daemon_b)

        # 4. W's slow write lands; then the worker delivers v3.
        gate.open()
        await until(lambda: drained(runtime))
    stored = await backup_b.get(sid)
    assert stored is not None
    assert (claimed, stored.version, stored.values) == (0, 3, {"k": "v3"})
    assert await _row(runtime, sid) == (3, 3, None)


async def test_an_inline_write_takes_only_free_leases(api: Api, runtime: Runtime) -> None:
    """A write's commit leases a target only when no one holds it, and says which it got."""
    created = await api.create("held", {"k": "v1"})
    sid = created["id"]
    key = runtime.key_of("backup")
    await runtime.pool.execute(
        "UPDATE deliveries SET leased_by = 'worker-w/t1', leased_until = now() + interval '1 h'"
        " WHERE target = $1 AND secret_id = $2",
        key,
        uuid.UUID(sid),
    )
    status, _, _ = await api.request(
        "PATCH", f"/api/v1/secrets/{sid}", json={"values": {"k": "v2"}}
    )
    assert status == 200
    # The holder keeps its lease; the write did not write the backup inline.
    assert await _row(runtime, sid) == (2, 0, "worker-w/t1")
    # A complete with another token records nothing; the holder's token does.
    assert await deliveries.complete(runtime.pool, [(key, sid, 2, "daemon-b:1/x")]) == set()
    assert await _row(runtime, sid) == (2, 0, "worker-w/t1")
    await deliveries.release(runtime.pool, [(key, sid, "daemon-b:1/x")])
    assert await _row(runtime, sid) == (2, 0, "worker-w/t1")
    assert await deliveries.complete(runtime.pool, [(key, sid, 2, "worker-w/t1")]) == {(key, sid)}
    assert await _row(runtime, sid) == (2, 2, None)


async def _leased_until_later(rt: Runtime, target: str, sid: str) -> bool:
    held: bool = await rt.pool.fetchval(
        "SELECT leased_until > now() + interval '5 s' FROM deliveries"
        " WHERE target = $1 AND secret_id = $2",
        rt.key_of(target),
        uuid.UUID(sid),
    )
    return held


async def test_an_inline_write_that_timed_out_keeps_its_lease(api: Api, runtime: Runtime) -> None:
    """A timed-out inline write may still land: nobody may write that entry (maybe a newer
    version) until it must have, so its lease is kept, not released."""
    created = await api.create("slow-inline", {"k": "v1"})

    async def hangs(*_args: Any) -> Any:
        await asyncio.Event().wait()

    runtime.primary.store.put = hangs  # type: ignore[method-assign]
    status, _, _ = await api.request(
        "PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"k": "v2"}}
    )
    assert status == 200
    assert await _leased_until_later(runtime, "primary", created["id"])
    claimed = await deliveries.claim(
        runtime.worker_pool, "another-worker", 10, [runtime.key_of("primary")], 60
    )
    assert claimed == []


async def test_a_worker_write_that_timed_out_keeps_its_lease(api: Api, runtime: Runtime) -> None:
    """The same for a worker's delivery that failed as unavailable (cut off mid-request)."""
    created = await api.create("slow-worker", {"k": "v1"})
    assert runtime.backup is not None

    async def cut_off(*_args: Any) -> Any:
        raise StoreUnavailable("connection reset mid-request")

    runtime.backup.store.put = cut_off  # type: ignore[method-assign]
    assert await _deliver_once(runtime) == 1
    assert await _leased_until_later(runtime, "backup", created["id"])
    assert await _deliver_once(runtime) == 0


async def test_a_worker_write_the_store_answered_gives_its_lease_back(
    api: Api, runtime: Runtime
) -> None:
    """A delivery the store answered with an error (an HTTP 503) did whatever it did before
    the answer: nothing of it can land later, so its lease is given back, not held the
    store's timeout (which delayed every such delivery after an outage)."""
    created = await api.create("answered-worker", {"k": "v1"})
    assert runtime.backup is not None

    async def answered(*_args: Any) -> Any:
        raise StoreUnavailable("Key Vault set failed (HTTP 503)", settled=True)

    runtime.backup.store.put = answered  # type: ignore[method-assign]
    assert await _deliver_once(runtime) == 1
    held = await runtime.pool.fetchval(
        "SELECT leased_by FROM deliveries WHERE target = $1 AND secret_id = $2",
        runtime.key_of("backup"),
        uuid.UUID(created["id"]),
    )
    assert held is None
