"""The replication worker in-process: delivery, coalescing, fencing, dead letters, retention."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from secretmirror import deliveries, retention
from secretmirror.errors import StoreRejected
from secretmirror.queries import Q
from secretmirror.remote_clock import waiting_locally
from secretmirror.replication import Replicator
from secretmirror.runtime import Runtime
from secretmirror.stores.base import PutOutcome
from tests.conftest import Api
from tests.pg import TestPostgres


@pytest.fixture
async def backup_dsn(postgres: TestPostgres) -> AsyncIterator[str]:
    name = await postgres.create_database()
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def settings_overrides(backup_dsn: str) -> dict[str, Any]:
    return {
        "backup": {"type": "sql", "database_url": backup_dsn},
        "replication": {
            "poll_interval_s": 0.2,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
            "max_attempts": 3,
        },
    }


@contextlib.asynccontextmanager
async def worker(rt: Runtime) -> AsyncIterator[Replicator]:
    stop = asyncio.Event()
    replicator = Replicator(rt)
    task = asyncio.create_task(replicator.run(stop))
    try:
        yield replicator
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def drained(rt: Runtime) -> bool:
    status = await deliveries.status(rt.pool, rt.target_keys)
    return all(s.pending == 0 for s in status.values())


async def test_writes_reach_the_backup(api: Api, runtime: Runtime) -> None:
    """Created, updated and deleted secrets reach the backup with the last version."""
    assert runtime.backup is not None
    async with worker(runtime):
        a = await api.create("alpha", {"k": "1"})
        b = await api.create("beta", {"k": "2"})
        status, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{a['id']}", json={"values": {"k": "1b"}}
        )
        assert status == 200
        status, _, _ = await api.request("DELETE", f"/api/v1/secrets/{b['id']}")
        assert status == 204
        await until(lambda: drained(runtime))
    got = await runtime.backup.get(a["id"])
    assert got is not None
    assert (got.version, got.values) == (2, {"k": "1b"})
    assert await runtime.backup.get(b["id"]) is None


async def test_convergence_under_concurrent_writes(api: Api, runtime: Runtime) -> None:
    """Random writes from 8 clients converge: the backup equals the last acknowledged state."""
    assert runtime.backup is not None
    rng = random.Random(7)
    expected: dict[str, tuple[int, dict[str, str]] | None] = {}
    ids: list[str] = []
    for i in range(40):
        created = await api.create(f"s{i}", {"v": "0"})
        ids.append(created["id"])
        expected[created["id"]] = (1, {"v": "0"})

    async def client(n: int) -> None:
        for step in range(25):
            sid = rng.choice(ids)
            if expected.get(sid) is None:
                continue
            if rng.random() < 0.1:
                status, _, _ = await api.request("DELETE", f"/api/v1/secrets/{sid}")
                if status == 204:
                    expected[sid] = None
                continue
            value = f"{n}-{step}"
            status, body, _ = await api.request(
                "PUT",
                f"/api/v1/secrets/{sid}",
                json={"name": f"n{sid[:8]}", "values": {"v": value}},
            )
            if status == 200:
                current = expected.get(sid)
                if current is None or body["version"] > current[0]:
                    expected[sid] = (body["version"], body["values"])

    async with worker(runtime):
        await asyncio.gather(*(client(n) for n in range(8)))
        await until(lambda: drained(runtime))
    for sid, state in expected.items():
        got = await runtime.backup.get(sid)
        if state is None:
            assert got is None
        else:
            assert got is not None
            assert (got.version, got.values) == state


async def test_pending_versions_coalesce(api: Api, runtime: Runtime) -> None:
    """Versions written while no worker runs are delivered as one write of the newest."""
    assert runtime.backup is not None
    created = await api.create("coalesce", {"n": "0"})
    for n in range(1, 6):
        status, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"n": str(n)}}
        )
        assert status == 200
    calls: list[int] = []
    real_put = runtime.backup.store.put

    async def counting_put(sid: str, version: int, values: dict[str, str], h: str) -> PutOutcome:
        calls.append(version)
        return await real_put(sid, version, values, h)

    runtime.backup.store.put = counting_put  # type: ignore[method-assign]
    async with worker(runtime):
        await until(lambda: drained(runtime))
    assert calls == [6]


async def test_a_write_queued_past_its_lease_is_never_sent(api: Api, runtime: Runtime) -> None:
    """A delivery's write that waits locally (a pacing slot, a throttle hold) until its lease
    is nearly gone is given up before it is sent, never sent late: by then another process
    may hold the lease and have written a newer version, which the late write would bury in
    a store without a conditional write. Held back here, it is not counted as an attempt,
    and the next attempt delivers it."""
    assert runtime.backup is not None
    created = await api.create("queued", {"k": "v"})
    lease_s, started = 3.0, asyncio.get_running_loop().time
    runtime.backup.timeout_s = 1.0  # lease_s / 3, as the daemon sets it
    real_put = runtime.backup.store.put
    tries = 0
    sent_after_s: list[float] = []

    async def queued_put(sid: str, version: int, values: dict[str, str], h: str) -> PutOutcome:
        nonlocal tries
        tries += 1
        began = started()
        if tries <= 2:
            with waiting_locally():  # as a pacing slot 4 s ahead waits
                await asyncio.sleep(2 * lease_s)
        sent_after_s.append(started() - began)
        return await real_put(sid, version, values, h)

    runtime.backup.store.put = queued_put  # type: ignore[method-assign]
    replicator = Replicator(runtime)
    replicator.cfg = replicator.cfg.model_copy(update={"lease_s": lease_s})
    stop = asyncio.Event()
    task = asyncio.create_task(replicator.run(stop))
    try:
        # Two tries given up near their leases' end, then backoff: 7 to 13 s when idle.
        await until(lambda: drained(runtime), timeout=60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert tries == 3
    assert len(sent_after_s) == 1  # the two that queued past their lease were never sent
    row = await runtime.pool.fetchrow(
        "SELECT attempts, applied_version FROM deliveries WHERE secret_id = $1",
        uuid.UUID(created["id"]),
    )
    assert row is not None
    assert (row["attempts"], row["applied_version"]) == (1, 1)


async def test_rejected_value_is_dead_lettered_and_superseded(api: Api, runtime: Runtime) -> None:
    """A permanent rejection dead-letters one secret, others flow, a newer version supersedes it."""
    assert runtime.backup is not None
    real_put = runtime.backup.store.put
    poison = "REJECT-ME"

    async def picky_put(sid: str, version: int, values: dict[str, str], h: str) -> PutOutcome:
        if poison in values.values():
            raise StoreRejected("value refused")
        return await real_put(sid, version, values, h)

    runtime.backup.store.put = picky_put  # type: ignore[method-assign]
    async with worker(runtime):
        bad = await api.create("bad", {"k": poison})
        good = await api.create("good", {"k": "fine"})

        async def bad_is_dead() -> bool:
            status = await deliveries.status(runtime.pool, runtime.target_keys)
            return status["backup"].dead == 1 and status["backup"].pending == 0

        await until(bad_is_dead)
        assert await runtime.backup.get(good["id"]) is not None
        assert await runtime.backup.get(bad["id"]) is None
        status, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{bad['id']}", json={"values": {"k": "fixed"}}
        )
        assert status == 200
        await until(lambda: drained(runtime))
    got = await runtime.backup.get(bad["id"])
    assert got is not None
    assert (got.version, got.values) == (2, {"k": "fixed"})
    final = await deliveries.status(runtime.pool, runtime.target_keys)
    assert final["backup"].dead == 0


async def test_dead_letters_retry_requeues(api: Api, runtime: Runtime) -> None:
    """POST /admin/v1/dead-letters/retry requeues dead deliveries, which then apply."""
    assert runtime.backup is not None
    real_put = runtime.backup.store.put
    failing = {"on": True}

    async def flaky_put(sid: str, version: int, values: dict[str, str], h: str) -> PutOutcome:
        if failing["on"]:
            raise StoreRejected("value refused")
        return await real_put(sid, version, values, h)

    runtime.backup.store.put = flaky_put  # type: ignore[method-assign]
    async with worker(runtime):
        created = await api.create("later", {"k": "v"})

        async def is_dead() -> bool:
            return (await deliveries.status(runtime.pool, runtime.target_keys))["backup"].dead == 1

        await until(is_dead)
        status, body, _ = await api.request("GET", "/admin/v1/status")
        assert status == 200
        assert body["replication"]["backup"]["dead"] == 1
        removed = "file:/a/store/removed/from/the/config"
        await runtime.pool.execute(
            "INSERT INTO deliveries (target, secret_id, version, dead) VALUES ($1, $2, 1, true)",
            removed,
            uuid.UUID(created["id"]),
        )
        failing["on"] = False
        status, body, _ = await api.request("POST", "/admin/v1/dead-letters/retry")
        assert (status, body) == (200, {"requeued": 1})
        await until(lambda: drained(runtime))
    assert await runtime.backup.get(created["id"]) is not None
    # A store no longer configured has nobody to deliver to it: its row stays dead.
    assert await runtime.pool.fetchval("SELECT dead FROM deliveries WHERE target = $1", removed)


async def test_status_shows_pending_then_applied(api: Api, runtime: Runtime) -> None:
    """Status reports pending work and its age before the worker runs, applied after."""
    await api.create("p1", {"k": "v"})
    await api.create("p2", {"k": "v"})
    status, body, _ = await api.request("GET", "/admin/v1/status")
    assert status == 200
    assert body["replication"]["backup"]["pending"] == 2
    assert body["replication"]["backup"]["oldest_pending_age_s"] > 0
    assert body["stores"]["backup"]["type"] == "sql"
    async with worker(runtime):
        await until(lambda: drained(runtime))
    _, body, _ = await api.request("GET", "/admin/v1/status")
    assert body["replication"]["backup"] == {
        "pending": 0,
        "dead": 0,
        "oldest_pending_age_s": 0.0,
        "applied": 2,
        "dead_reasons": {},
    }


async def test_retention_keeps_newest_snapshots(api: Api, runtime: Runtime) -> None:
    """Applied snapshots beyond keep_versions are purged; unapplied ones never are."""
    created = await api.create("hist", {"n": "0"})
    for n in range(1, 15):
        await api.request(
            "PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"n": str(n)}}
        )
    assert await retention.purge_once(runtime) == 0  # nothing applied to the backup yet
    async with worker(runtime):
        await until(lambda: drained(runtime))
    purged = await retention.purge_once(runtime)
    assert purged == 15 - runtime.settings.history.keep_versions
    status, _, _ = await api.request(
        "GET", f"/api/v1/secrets/{created['id']}", params={"version": "1"}
    )
    assert status == 410
    status, body, _ = await api.request(
        "GET", f"/api/v1/secrets/{created['id']}", params={"version": "14"}
    )
    assert (status, body["values"]) == (200, {"n": "13"})


async def test_retention_skips_while_another_process_purges(api: Api, runtime: Runtime) -> None:
    """A round that finds the purge lock taken drops nothing; the next one does the work."""
    created = await api.create("hist-locked", {"n": "0"})
    keep = runtime.settings.history.keep_versions
    for n in range(1, keep + 3):
        await api.request(
            "PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"n": str(n)}}
        )
    async with worker(runtime):
        await until(lambda: drained(runtime))
    async with runtime.pool.acquire() as other, other.transaction():
        assert await other.fetchval(Q.retention_lock)
        assert await retention.purge_once(runtime) == 0
    assert await retention.purge_once(runtime) == 3


async def test_retention_ignores_rows_of_a_store_no_longer_configured(
    api: Api, runtime: Runtime
) -> None:
    """A removed store's rows never advance again; they must not keep snapshots forever."""
    created = await api.create("hist-stranded", {"n": "0"})
    await runtime.pool.execute(
        "INSERT INTO deliveries (target, secret_id, version, applied_version)"
        " VALUES ('file:/a/store/removed/from/the/config', $1, 1, 1)",
        uuid.UUID(created["id"]),
    )
    keep = runtime.settings.history.keep_versions
    for n in range(1, keep + 2):
        await api.request(
            "PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"n": str(n)}}
        )
    async with worker(runtime):
        await until(lambda: drained(runtime))
    assert await retention.purge_once(runtime) == 2


def test_idle_retention_rounds_back_off_to_the_cap() -> None:
    waits = [30.0]
    for _ in range(8):
        waits.append(retention.next_wait(waits[-1], 30.0))
    assert waits == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0, 600.0]
    assert retention.next_wait(1.0, 30.0) == 30.0


async def test_claims_are_exclusive_across_workers(api: Api, runtime: Runtime) -> None:
    """Two claimers never lease the same (target, secret) at once."""
    for i in range(30):
        await api.create(f"c{i}", {"k": "v"})
    first, second = await asyncio.gather(
        deliveries.claim(runtime.pool, "node-a", 20, [runtime.key_of("backup")], 30),
        deliveries.claim(runtime.pool, "node-b", 20, [runtime.key_of("backup")], 30),
    )
    ids_a = {c.secret_id for c in first}
    ids_b = {c.secret_id for c in second}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 30
    assert uuid.UUID(next(iter(ids_a)))
