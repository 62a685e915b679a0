"""Reconcile jobs against the sql primary and a sql backup in another database."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from secretmirror.crypto import content_hash
from secretmirror.model import canonical
from secretmirror.remote_clock import waiting_locally
from secretmirror.runtime import Runtime
from tests.conftest import Api
from tests.pg import TestPostgres
from tests.test_replication import drained, until, worker


@pytest.fixture
async def backup_dsn(postgres: TestPostgres) -> AsyncIterator[str]:
    name = await postgres.create_database()
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def settings_overrides(backup_dsn: str) -> dict[str, Any]:
    return {
        "backup": {"type": "sql", "database_url": backup_dsn},
        "replication": {"poll_interval_s": 0.2},
        "reconcile": {"verify_interval_s": 0, "concurrency": 4},
    }


async def run_job(api: Api, mode: str, **options: bool) -> dict[str, Any]:
    status, job, _ = await api.request(
        "POST", "/admin/v1/reconcile", json={"mode": mode, **options}
    )
    assert status == 202, job
    return await wait_finished(api, job["id"])


async def wait_finished(api: Api, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll a job until it ends (generously: a loaded CI machine is slow)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status, job, _ = await api.request("GET", f"/admin/v1/jobs/{job_id}")
        assert status == 200
        if job["status"] not in ("queued", "running"):
            return dict(job)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} did not finish")
        await asyncio.sleep(0.05)


async def seeded(api: Api, runtime: Runtime, n: int) -> list[str]:
    ids = [(await api.create(f"r{i}", {"k": f"v{i}"}))["id"] for i in range(n)]
    async with worker(runtime):
        await until(lambda: drained(runtime))
    return ids


async def served_from(api: Api, ids: list[str], source: str) -> None:
    """Each secret reads its seeded values ({"k": "v<i>"}), served by ``source``."""
    for i, sid in enumerate(ids):
        status, body, headers = await api.request("GET", f"/api/v1/secrets/{sid}")
        assert (status, body["values"], headers["X-Secret-Source"]) == (200, {"k": f"v{i}"}, source)


async def test_verify_clean_after_replication(api: Api, runtime: Runtime) -> None:
    """After the drain every secret is in sync in both stores."""
    await seeded(api, runtime, 12)
    job = await run_job(api, "verify")
    assert job["status"] == "succeeded"
    for store in ("primary", "backup"):
        counts = job["counts"]["stores"][store]
        assert counts["in_sync"] == 12
        assert sum(v for k, v in counts.items() if k != "in_sync") == 0


async def test_verify_classifies_and_repair_fixes(
    api: Api, runtime: Runtime, backup_dsn: str
) -> None:
    """Injected missing, stale, mismatch and orphan entries are found, repaired, then clean."""
    ids = await seeded(api, runtime, 10)
    missing, stale, mismatch = ids[0], ids[1], ids[2]
    await api.request("PATCH", f"/api/v1/secrets/{stale}", json={"values": {"k": "new"}})
    async with worker(runtime):
        await until(lambda: drained(runtime))
    orphan = str(uuid.uuid4())
    conn = await asyncpg.connect(backup_dsn)
    try:
        await conn.execute(
            "DELETE FROM secretmirror_values WHERE secret_id = $1", uuid.UUID(missing)
        )
        await conn.execute(
            "UPDATE secretmirror_values SET version = 1 WHERE secret_id = $1", uuid.UUID(stale)
        )
        await conn.execute(
            "UPDATE secretmirror_values SET hash = 'forged' WHERE secret_id = $1",
            uuid.UUID(mismatch),
        )
        await conn.execute(
            "INSERT INTO secretmirror_values (deployment_id, secret_id, version, hash, ciphertext)"
            " SELECT deployment_id, $1, 1, 'h', ciphertext FROM secretmirror_values LIMIT 1",
            uuid.UUID(orphan),
        )
    finally:
        await conn.close()

    before = await run_job(api, "verify")
    backup = before["counts"]["stores"]["backup"]
    assert (backup["missing"], backup["stale"], backup["mismatch"], backup["orphan"]) == (
        1,
        1,
        1,
        1,
    )
    assert before["samples"]["backup"] == {
        "missing": [missing],
        "stale": [stale],
        "mismatch": [mismatch],
        "orphan": [orphan],
    }
    dry = await run_job(api, "repair", dry_run=True)
    assert dry["counts"]["copied"] == 0
    assert dry["counts"]["deleted"] == 0
    again = await run_job(api, "verify")
    assert again["counts"]["stores"]["backup"] == backup

    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    assert repaired["counts"]["deleted"] == 1
    async with worker(runtime):
        await until(lambda: drained(runtime))
    after = await run_job(api, "verify")
    for store in ("primary", "backup"):
        counts = after["counts"]["stores"][store]
        assert sum(v for k, v in counts.items() if k != "in_sync") == 0, counts
    assert runtime.backup is not None
    got = await runtime.backup.get(stale)
    assert got is not None
    assert got.values == {"k": "new"}
    # The mismatch was repaired by a new version whose event records the name and
    # visibility like every other (mirrors select by them; the feed shows them).
    reissued = await runtime.pool.fetchrow(
        "SELECT kind, actor, name, private FROM events WHERE secret_id = $1"
        " ORDER BY version DESC LIMIT 1",
        uuid.UUID(mismatch),
    )
    assert dict(reissued) == {
        "kind": "update",
        "actor": "reconcile",
        "name": (await api.request("GET", f"/api/v1/secrets/{mismatch}"))[1]["name"],
        "private": False,
    }


async def test_backup_into_empty_then_skip(api: Api, runtime: Runtime) -> None:
    """A first backup copies everything; a second skips everything."""
    ids = [(await api.create(f"b{i}", {"k": f"v{i}"}))["id"] for i in range(15)]
    first = await run_job(api, "backup")
    assert (first["status"], first["counts"]["copied"], first["counts"]["skipped"]) == (
        "succeeded",
        15,
        0,
    )
    second = await run_job(api, "backup")
    assert (second["counts"]["copied"], second["counts"]["skipped"]) == (0, 15)
    assert runtime.backup is not None
    for sid in ids:
        assert await runtime.backup.get(sid) is not None


async def test_restore_into_emptied_primary(api: Api, runtime: Runtime) -> None:
    """Restore brings back every value into an emptied primary."""
    ids = await seeded(api, runtime, 8)
    await runtime.pool.execute("DELETE FROM secretmirror_values")
    status, _, _ = await api.request("GET", f"/api/v1/secrets/{ids[0]}")
    assert status == 200  # served from the backup meanwhile
    job = await run_job(api, "restore")
    assert (job["status"], job["counts"]["copied"]) == ("succeeded", 8)
    await served_from(api, ids, "primary")


async def test_backup_delete_secrets_moves(api: Api, runtime: Runtime) -> None:
    """delete_secrets empties the primary; reads come from the backup; a repair does not copy
    them back, a restore does."""
    ids = [(await api.create(f"m{i}", {"k": f"v{i}"}))["id"] for i in range(6)]
    job = await run_job(api, "backup", delete_secrets=True)
    assert job["status"] == "succeeded", job
    assert job["counts"]["deleted"] == 6
    live = await runtime.pool.fetchval("SELECT count(*) FROM secretmirror_values WHERE NOT deleted")
    assert live == 0
    await served_from(api, ids, "backup")
    await run_job(api, "repair")
    assert (
        await runtime.pool.fetchval("SELECT count(*) FROM secretmirror_values WHERE NOT deleted")
        == 0
    )
    # A restore brings them back: a copy over the tombstone at the current version would be
    # a no-op (it was skipped as "moved", and nothing came back), so each is re-issued.
    restored = await run_job(api, "restore")
    assert (restored["status"], restored["counts"]["copied"]) == ("succeeded", 6), restored
    async with worker(runtime):
        await until(lambda: drained(runtime))
    await served_from(api, ids, "primary")


async def test_a_backup_over_a_differing_entry_replaces_it_and_keeps_the_source(
    api: Api, runtime: Runtime, backup_dsn: str
) -> None:
    """A backup entry at the current version with other content, or ahead of the database
    (restored from an older dump), fences a copy into a no-op: the job re-issues the secret
    past it instead, and with delete_secrets never empties the primary on its word (it
    counted the no-op as copied and deleted the only good copy)."""
    edited, ahead, _clean = await seeded(api, runtime, 3)
    conn = await asyncpg.connect(backup_dsn)
    try:
        await conn.execute(
            "UPDATE secretmirror_values SET hash = 'edited' WHERE secret_id = $1",
            uuid.UUID(edited),
        )
        await conn.execute(
            "UPDATE secretmirror_values SET version = 3 WHERE secret_id = $1", uuid.UUID(ahead)
        )
    finally:
        await conn.close()
    job = await run_job(api, "backup", delete_secrets=True)
    assert job["status"] == "succeeded", job
    assert (job["counts"]["copied"], job["counts"]["deleted"]) == (2, 1)
    live = await runtime.pool.fetch(
        "SELECT secret_id::text FROM secretmirror_values WHERE NOT deleted"
    )
    assert sorted(r["secret_id"] for r in live) == sorted([edited, ahead])
    async with worker(runtime):
        await until(lambda: drained(runtime))
    assert runtime.backup is not None
    for sid, past, index in ((edited, 1, 0), (ahead, 3, 1)):
        got = await runtime.backup.get(sid)
        assert got is not None
        assert (got.version > past, got.values) == (True, {"k": f"v{index}"})
    after = await run_job(api, "verify")
    counts = after["counts"]["stores"]["backup"]
    assert sum(v for k, v in counts.items() if k != "in_sync") == 0, counts


async def test_a_reissue_hashes_under_the_current_key(
    api: Api, runtime: Runtime, backup_dsn: str
) -> None:
    """After a lost hash key was replaced (``allow_unknown_keys``) the recorded hashes are
    under the old one, which a store that hashes what it holds (azure) never matches: the
    new version a repair issues records the values' hash under the current key."""
    (sid,) = await seeded(api, runtime, 1)
    conn = await asyncpg.connect(backup_dsn)
    try:
        await conn.execute(
            "UPDATE secretmirror_values SET hash = 'edited' WHERE secret_id = $1", uuid.UUID(sid)
        )
    finally:
        await conn.close()
    new_key = secrets.token_bytes(32)
    runtime.set_hash_key(new_key)
    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    expected = content_hash(new_key, sid, canonical({"k": "v0"}))
    row = await runtime.pool.fetchrow(
        "SELECT version, hash FROM secrets WHERE id = $1", uuid.UUID(sid)
    )
    assert row is not None
    assert (row["version"], row["hash"]) == (2, expected)
    async with worker(runtime):
        await until(lambda: drained(runtime))
    assert runtime.backup is not None
    got = await runtime.backup.get(sid)
    assert got is not None
    assert (got.version, got.hash) == (2, expected)


async def test_admin_routes_need_admin(api: Api) -> None:
    """Non-admins get 403 on every admin route."""
    token = await api.make_user("w1", "writer")
    writer = api.as_token(token)
    for method, path, body in [
        ("POST", "/admin/v1/reconcile", {"mode": "verify"}),
        ("GET", "/admin/v1/jobs", None),
        ("GET", "/admin/v1/status", None),
        ("POST", "/admin/v1/dead-letters/retry", None),
    ]:
        status, _, _ = await writer.request(method, path, json=body)
        assert status == 403, path


async def test_second_job_of_a_mode_conflicts_and_cancel_stops(api: Api, runtime: Runtime) -> None:
    """A running mode answers 409 to a second start; cancel ends it as cancelled."""
    for i in range(30):
        await api.create(f"slow{i}", {"k": "v"})
    assert runtime.backup is not None
    real_put = runtime.backup.store.put
    gate = asyncio.Event()

    async def slow_put(*args: Any) -> Any:
        await gate.wait()
        return await real_put(*args)

    runtime.backup.store.put = slow_put  # type: ignore[method-assign]
    status, job, _ = await api.request("POST", "/admin/v1/reconcile", json={"mode": "backup"})
    assert status == 202
    status, body, _ = await api.request("POST", "/admin/v1/reconcile", json={"mode": "backup"})
    assert (status, body["error"]["code"]) == (409, "job_running")
    status, _, _ = await api.request("POST", f"/admin/v1/jobs/{job['id']}/cancel")
    assert status == 200
    gate.set()
    current = await wait_finished(api, job["id"])
    assert current["status"] == "cancelled"
    assert current["counts"]["copied"] < 30


async def test_abandoned_job_is_marked_failed(api: Api, runtime: Runtime) -> None:
    """A running job whose daemon stopped heart-beating is failed, never left running."""
    job_id = uuid.uuid4()
    await runtime.pool.execute(
        "INSERT INTO jobs (id, mode, status, owner, heartbeat, started)"
        " VALUES ($1, 'verify', 'running', 'gone:1', now() - interval '1 minute', now())",
        job_id,
    )
    from secretmirror.api.jobs import JOBS

    stop = asyncio.Event()
    jobs = api.client.server.app[JOBS]  # type: ignore[union-attr]
    task = asyncio.create_task(jobs.run_scheduler(stop))
    try:
        job = await wait_finished(api, str(job_id), timeout_s=60)
    finally:
        stop.set()
        await task
    assert job["status"] == "failed"
    assert "interrupted" in job["error"]


def backup_refuses(runtime: Runtime, refused: str) -> None:
    """The backup store rejects every put of the secret ``refused``."""
    from secretmirror.errors import StoreRejected

    assert runtime.backup is not None
    real_put = runtime.backup.store.put

    async def picky_put(sid: str, *args: Any) -> Any:
        if sid == refused:
            raise StoreRejected("refused")
        return await real_put(sid, *args)

    runtime.backup.store.put = picky_put  # type: ignore[method-assign]


async def test_failures_are_reported(api: Api, runtime: Runtime) -> None:
    """A secret the backup rejects shows up in failures and fails the job."""
    ids = [(await api.create(f"f{i}", {"k": "v"}))["id"] for i in range(3)]
    backup_refuses(runtime, ids[1])
    job = await run_job(api, "backup")
    assert job["status"] == "failed"
    assert job["counts"]["copied"] == 2
    assert job["failures"] == [
        {"secret_id": ids[1], "store": "backup", "reason": "rejected: refused"}
    ]


async def test_a_job_asks_a_failed_write_again(api: Api, runtime: Runtime) -> None:
    """A write that fails once (a timeout, a 5xx) is asked again and the job succeeds; one
    that keeps failing fails its secret after three tries (the listings' waits between)."""
    from secretmirror.errors import StoreUnavailable

    ids = [(await api.create(f"again{i}", {"k": "v"}))["id"] for i in range(3)]
    assert runtime.backup is not None
    real_put = runtime.backup.store.put
    tries: dict[str, int] = {}

    async def flaky_put(sid: str, *args: Any) -> Any:
        tries[sid] = tries.get(sid, 0) + 1
        if sid == ids[2] or (sid == ids[1] and tries[sid] == 1):
            raise StoreUnavailable("AWS PutSecretValue failed: HTTP 503")
        return await real_put(sid, *args)

    runtime.backup.store.put = flaky_put  # type: ignore[method-assign]
    job = await run_job(api, "backup")
    assert job["counts"]["copied"] == 2
    assert (tries[ids[0]], tries[ids[1]], tries[ids[2]]) == (1, 2, 3)
    assert job["failures"] == [
        {
            "secret_id": ids[2],
            "store": "backup",
            "reason": "unavailable: AWS PutSecretValue failed: HTTP 503",
        }
    ]


async def test_a_job_never_retries_a_write_past_its_lease(api: Api, runtime: Runtime) -> None:
    """A throttled write is waited out as the store says, but only while the job's lease on
    the secret lasts (less the store's timeout): a retry after it could bury a newer version
    another process's worker wrote once the lease passed to it. That secret fails, throttled,
    at once; one whose hint fits is asked again and copied."""
    from secretmirror.errors import StoreThrottled

    ids = [(await api.create(f"hinted{i}", {"k": "v"}))["id"] for i in range(2)]
    assert runtime.backup is not None
    lease_s = runtime.settings.replication.lease_s
    real_put = runtime.backup.store.put
    tries: dict[str, int] = {}

    async def throttled_put(sid: str, *args: Any) -> Any:
        tries[sid] = tries.get(sid, 0) + 1
        if sid == ids[0]:
            raise StoreThrottled("AWS PutSecretValue failed: ThrottlingException", lease_s)
        if tries[sid] == 1:
            raise StoreThrottled("AWS PutSecretValue failed: ThrottlingException", 0.05)
        return await real_put(sid, *args)

    runtime.backup.store.put = throttled_put  # type: ignore[method-assign]
    job = await run_job(api, "backup")
    assert (tries[ids[0]], tries[ids[1]]) == (1, 2)
    assert job["counts"]["copied"] == 1
    assert [(f["secret_id"], f["reason"].split(":")[0]) for f in job["failures"]] == [
        (ids[0], "throttled")
    ]


async def test_a_job_write_never_outlives_its_lease(api: Api, runtime: Runtime) -> None:
    """A job's write must end the store's timeout before its lease does: one that would
    queue locally past that is never sent, and one cut off mid-request, which may still
    land, keeps the lease instead of giving it back (a worker writing a newer version
    meanwhile could be buried by either)."""
    queued = (await api.create("queued", {"k": "v"}))["id"]
    hanging = (await api.create("hanging", {"k": "v"}))["id"]
    assert runtime.backup is not None
    replication = runtime.settings.replication.model_copy(update={"lease_s": 3.0})
    runtime.settings = runtime.settings.model_copy(update={"replication": replication})
    runtime.backup.timeout_s = 1.0  # lease_s / 3, as the daemon sets it
    sent: list[str] = []

    async def slow_put(sid: str, *_args: Any) -> Any:
        if sid == queued:
            with waiting_locally():  # as a pacing slot far ahead waits
                await asyncio.sleep(10)
        sent.append(sid)
        await asyncio.sleep(3600)  # the request never answers

    runtime.backup.store.put = slow_put  # type: ignore[method-assign]
    job = await run_job(api, "backup")
    assert sorted(f["secret_id"] for f in job["failures"]) == sorted([queued, hanging])
    assert queued not in sent
    rows = await runtime.pool.fetch(
        "SELECT secret_id::text, leased_by FROM deliveries WHERE target = $1",
        runtime.key_of("backup"),
    )
    leased = {r["secret_id"]: r["leased_by"] for r in rows}
    assert "/job-" in (leased[hanging] or "")  # held, not given back


async def test_a_job_write_cut_off_once_keeps_its_lease_after_it_succeeds(
    api: Api, runtime: Runtime
) -> None:
    """A try that timed out may land after a later try succeeded: until it lands or dies, a
    worker writing a newer version could be buried by it, so the lease is held, not given
    back, and a secret written at the first try gives its lease back."""
    from secretmirror.errors import StoreUnavailable

    once, clean = [(await api.create(name, {"k": "v"}))["id"] for name in ("once", "clean")]
    assert runtime.backup is not None
    real_put = runtime.backup.store.put
    tries: dict[str, int] = {}

    async def timed_out_once(sid: str, *args: Any) -> Any:
        tries[sid] = tries.get(sid, 0) + 1
        if sid == once and tries[sid] == 1:
            raise StoreUnavailable("the backup store did not answer in time")
        return await real_put(sid, *args)

    runtime.backup.store.put = timed_out_once  # type: ignore[method-assign]
    job = await run_job(api, "backup")
    assert job["counts"]["copied"] == 2
    assert tries[once] == 2
    rows = await runtime.pool.fetch(
        "SELECT secret_id::text, leased_by FROM deliveries WHERE target = $1",
        runtime.key_of("backup"),
    )
    leased = {r["secret_id"]: r["leased_by"] for r in rows}
    assert "/job-" in (leased[once] or "")  # held, not given back
    assert leased.get(clean) is None


async def test_a_job_a_store_stops_says_what_stopped_it(api: Api, runtime: Runtime) -> None:
    """A listing that fails ends the job with the store's own message, not only a class name
    (an operator at 3 a.m. needs the operation and the provider's answer)."""
    from secretmirror.errors import StoreUnavailable

    await api.create("stopped", {"k": "v"})
    assert runtime.backup is not None

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreUnavailable("AWS ListSecrets failed: HTTP 500")

    runtime.backup.store.list = down  # type: ignore[method-assign]
    job = await run_job(api, "verify")
    assert job["status"] == "failed"
    assert job["error"] == (
        "StoreUnavailable: the job could not continue "
        "(unavailable: AWS ListSecrets failed: HTTP 500)"
    )


async def _delivery(runtime: Runtime, sid: str) -> tuple[int, int, str | None] | None:
    row = await runtime.pool.fetchrow(
        "SELECT version, applied_version, leased_by FROM deliveries"
        " WHERE target = $1 AND secret_id = $2",
        runtime.key_of("backup"),
        uuid.UUID(sid),
    )
    return None if row is None else (row[0], row[1], row[2])


async def test_a_job_leaves_a_secret_a_delivery_is_writing(api: Api, runtime: Runtime) -> None:
    """Jobs take the delivery lease to write: one a worker holds is left to the worker,
    and a copy the job makes is recorded as applied, so the worker does not write it again."""
    created = await api.create("leased", {"k": "v"})
    sid = created["id"]
    assert runtime.backup is not None
    await runtime.pool.execute(
        "UPDATE deliveries SET leased_by = 'another-node', leased_until = now() + interval '1 h'"
        " WHERE secret_id = $1",
        uuid.UUID(sid),
    )
    busy = await run_job(api, "backup")
    assert (busy["status"], busy["counts"]["copied"], busy["counts"]["skipped"]) == (
        "succeeded",
        0,
        1,
    )
    assert await runtime.backup.get(sid) is None
    assert await _delivery(runtime, sid) == (1, 0, "another-node")

    await runtime.pool.execute(
        "UPDATE deliveries SET leased_by = NULL, leased_until = NULL WHERE secret_id = $1",
        uuid.UUID(sid),
    )
    done = await run_job(api, "backup")
    assert (done["counts"]["copied"], done["counts"]["skipped"]) == (1, 0)
    assert await _delivery(runtime, sid) == (1, 1, None)
    status, body, _ = await api.request("GET", "/admin/v1/status")
    assert (status, body["replication"]["backup"]["pending"]) == (200, 0)


async def test_a_job_adds_the_delivery_row_of_a_secret_it_copies(
    api: Api, runtime: Runtime
) -> None:
    """A secret older than the backup has no delivery row: the copy adds one, applied; a copy
    that fails leaves none."""
    ids = [(await api.create(f"old{i}", {"k": "v"}))["id"] for i in range(2)]
    await runtime.pool.execute("DELETE FROM deliveries")
    backup_refuses(runtime, ids[1])
    job = await run_job(api, "backup")
    assert (job["counts"]["copied"], job["counts"]["failed"]) == (1, 1)
    assert await _delivery(runtime, ids[0]) == (1, 1, None)
    assert await _delivery(runtime, ids[1]) is None


async def test_listed_foreign_write_stays_a_mismatch_when_get_serves_ours(
    api: Api, runtime: Runtime
) -> None:
    """A foreign write the listing shows is reported even where get serves secretmirror's copy."""
    from dataclasses import replace

    from secretmirror.stores.base import Entry

    ids = await seeded(api, runtime, 3)
    assert runtime.backup is not None
    real_list = runtime.backup.store.list

    async def listing_with_a_foreign_write() -> AsyncIterator[Entry]:
        # As the hashicorp store lists a value written over its own (its get still
        # serves the version it recorded, which matches the expected version and hash).
        async for entry in real_list():
            yield replace(entry, foreign_write=entry.secret_id == ids[0])

    runtime.backup.store.list = listing_with_a_foreign_write  # type: ignore[method-assign]
    job = await run_job(api, "verify")
    assert job["counts"]["stores"]["backup"]["mismatch"] == 1
    assert job["samples"]["backup"] == {"mismatch": [ids[0]]}


async def test_a_second_look_that_fails_once_is_asked_again(api: Api, runtime: Runtime) -> None:
    """Verify looks again at an entry the listing shows drifting (a stale page under
    writes); that read failing once is asked again, so an entry in sync is not reported."""
    from dataclasses import replace

    from secretmirror.errors import StoreUnavailable
    from secretmirror.stores.base import Entry

    ids = await seeded(api, runtime, 3)
    assert runtime.backup is not None
    real_list, real_get = runtime.backup.store.list, runtime.backup.store.get
    reads: list[str] = []

    async def a_stale_page() -> AsyncIterator[Entry]:
        async for entry in real_list():
            yield replace(entry, version=entry.version - 1) if entry.secret_id == ids[0] else entry

    async def get_failing_once(sid: str) -> Any:
        reads.append(sid)
        if len(reads) == 1:
            raise StoreUnavailable("AWS GetSecretValue failed: HTTP 503")
        return await real_get(sid)

    runtime.backup.store.list = a_stale_page  # type: ignore[method-assign]
    runtime.backup.store.get = get_failing_once  # type: ignore[method-assign]
    job = await run_job(api, "verify")
    assert reads == [ids[0], ids[0]]
    assert job["counts"]["stores"]["backup"]["in_sync"] == 3
    assert job["status"] == "succeeded"


async def test_verify_of_an_empty_deployment_reports_zeros(api: Api) -> None:
    """With no secrets, verify still reports both stores, all in sync, and status shows it."""
    job = await run_job(api, "verify")
    assert job["counts"]["stores"]["backup"]["missing"] == 0
    assert set(job["counts"]["stores"]) == {"primary", "backup"}
    _, status, _ = await api.request("GET", "/admin/v1/status")
    assert status["last_verify"]["job_id"] == job["id"]


@pytest.mark.parametrize("settings_overrides", [{"reconcile": {"verify_interval_s": 0}}])
async def test_backup_without_a_backup_store_fails_saying_why(api: Api, runtime: Runtime) -> None:
    """The job ends failed with its reason, not a crash on the scan table it never made."""
    assert runtime.backup is None
    for mode in ("backup", "restore"):
        job = await run_job(api, mode)
        assert (job["status"], job["error"]) == ("failed", "no backup store is configured")
    async with runtime.pool.acquire() as conn:  # no pooled connection keeps the scan table
        assert await conn.fetchval("SELECT to_regclass('pg_temp.reconcile_seen')") is None
