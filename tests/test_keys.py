"""Key inventory, the start-up check and the rekey job, in process on real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from secretmirror import crypto
from secretmirror.daemon import make_app, open_runtime
from secretmirror.keys import KeysMissing
from secretmirror.runtime import Runtime
from tests.conftest import Api, make_settings
from tests.pg import TestPostgres
from tests.test_reconcile import wait_finished
from tests.test_replication import drained, until, worker


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def kid(key: str) -> str:
    return crypto.key_id(base64.b64decode(key)).hex()


@asynccontextmanager
async def serving(tmp_path: Path, dsn: str, keys: str) -> AsyncIterator[tuple[Runtime, Api]]:
    """A runtime with a file backup under tmp_path and the given encryption_keys."""
    settings = make_settings(
        tmp_path,
        dsn,
        keys,
        backup={"type": "file", "path": str(tmp_path / "files")},
        replication={"poll_interval_s": 0.2},
        reconcile={"verify_interval_s": 0},
    )
    async with open_runtime(settings, dsn) as rt, TestClient(TestServer(make_app(rt))) as client:
        yield rt, Api(client)


async def seed(rt: Runtime, api: Api, n: int) -> list[str]:
    """n secrets with two versions each, delivered to the file backup."""
    ids = []
    for i in range(n):
        created = await api.create(f"k{i}", {"v": f"one-{i}"})
        status, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"v": f"two-{i}"}}
        )
        assert status == 200
        ids.append(created["id"])
    async with worker(rt):
        await until(lambda: drained(rt))
    return ids


async def inventory(api: Api) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/admin/v1/keys")
    assert status == 200, body
    return dict(body)


async def test_inventory_counts_every_holder(tmp_path: Path, database: str) -> None:
    """5 secrets x 2 versions: 10 snapshots, 5 sql values, 5 file entries, 1 internal key."""
    key_a = new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 5)
        body = await inventory(api)
    assert body["unknown"] == []
    [only] = body["keys"]
    assert only["id"] == kid(key_a)
    assert only["position"] == 0
    assert only["stored_in"] == {"event_log": 10, "sql": 5, "file (backup)": 5, "internal": 1}
    assert only["ciphertexts"] == 21


async def test_inventory_shows_old_and_unknown_keys(tmp_path: Path, database: str) -> None:
    """With B,A configured the old data sits under A at position 1."""
    key_a, key_b = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 3)
    async with serving(tmp_path, database, f"{key_b},{key_a}") as (rt, api):
        body = await inventory(api)
    by_id = {k["id"]: k for k in body["keys"]}
    assert [k["id"] for k in body["keys"]] == [kid(key_b), kid(key_a)]
    # The content-hash key moves to B at start-up; the rest waits for `keys rotate`.
    assert by_id[kid(key_b)]["ciphertexts"] == 1
    assert by_id[kid(key_a)]["ciphertexts"] == 6 + 3 + 3


async def test_startup_refuses_unknown_keys_and_writes_nothing(
    tmp_path: Path, database: str
) -> None:
    """Only key C while data is under A: KeysMissing names A's id and count (4 + 2 + 2 + 1)."""
    key_a, key_c = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 2)
        async with rt.pool.acquire() as conn:
            before = await conn.fetchval("SELECT md5(string_agg(t::text, ',')) FROM tokens t")
            hash_key = await conn.fetchval("SELECT hash_key FROM deployment")
    with pytest.raises(KeysMissing) as raised:
        async with serving(tmp_path, database, key_c):
            pass
    message = raised.value.message
    assert "\n" not in message
    assert f"{kid(key_a)} (9 ciphertexts)" in message
    assert "add the key back to encryption_keys, then run `secretmirror keys rotate`" in message
    async with serving(tmp_path, database, key_a) as (rt, _), rt.pool.acquire() as conn:
        assert before == await conn.fetchval("SELECT md5(string_agg(t::text, ',')) FROM tokens t")
        assert hash_key == await conn.fetchval("SELECT hash_key FROM deployment")


async def test_rotate_moves_everything_to_the_first_key(tmp_path: Path, database: str) -> None:
    """keys rotate under B,A leaves A at 0; then B alone reads every secret and version."""
    key_a, key_b = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        ids = await seed(rt, api, 30)
    async with serving(tmp_path, database, f"{key_b},{key_a}") as (rt, api):
        status, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        assert status == 202, job
        assert job["mode"] == "rekey"
        job = await wait_finished(api, job["id"])
        assert job["status"] == "succeeded", job
        assert job["counts"]["rekeyed"] == 60 + 30 + 30
        assert job["counts"]["failed"] == 0
        status, listed, _ = await api.request("GET", "/admin/v1/jobs")
        assert job["id"] in [j["id"] for j in listed["items"]]
        body = await inventory(api)
        assert body["keys"][1]["ciphertexts"] == 0
        assert body["keys"][0]["ciphertexts"] == 60 + 30 + 30 + 1
    async with serving(tmp_path, database, key_b) as (rt, api):
        for i, secret_id in enumerate(ids):
            status, got, _ = await api.request("GET", f"/api/v1/secrets/{secret_id}")
            assert status == 200
            assert got["values"] == {"v": f"two-{i}"}
            status, old, _ = await api.request(
                "GET", f"/api/v1/secrets/{secret_id}", params={"version": "1"}
            )
            assert status == 200
            assert old["values"] == {"v": f"one-{i}"}
        backup = rt.backup
        assert backup is not None
        for i, secret_id in enumerate(ids):
            stored = await backup.get(secret_id)
            assert stored is not None
            assert stored.values == {"v": f"two-{i}"}


async def test_rotate_again_is_a_no_op(tmp_path: Path, database: str) -> None:
    """A second rotate finds nothing under an old key and rewrites nothing."""
    key_a = new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 3)
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        job = await wait_finished(api, job["id"])
        assert job["status"] == "succeeded"
        assert job["counts"]["rekeyed"] == 0
        assert job["counts"]["total"] == 0


async def test_rotate_keeps_writes_that_race_it(tmp_path: Path, database: str) -> None:
    """Writes during the job are never undone by its compare-and-set."""
    key_a, key_b = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        ids = await seed(rt, api, 40)
    async with serving(tmp_path, database, f"{key_b},{key_a}") as (rt, api):
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        for round_ in range(3):
            for secret_id in ids:
                status, _, _ = await api.request(
                    "PATCH", f"/api/v1/secrets/{secret_id}", json={"values": {"r": str(round_)}}
                )
                assert status == 200
        job = await wait_finished(api, job["id"])
        assert job["status"] == "succeeded", job
        for secret_id in ids:
            status, got, _ = await api.request("GET", f"/api/v1/secrets/{secret_id}")
            assert status == 200
            assert got["values"]["r"] == "2"
        body = await inventory(api)
        assert body["keys"][1]["ciphertexts"] == 0


async def test_rotate_is_one_at_a_time(tmp_path: Path, database: str) -> None:
    """A second rotate while one runs is 409 job_running."""
    key_a, key_b = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 20)
    async with serving(tmp_path, database, f"{key_b},{key_a}") as (rt, api):
        _, first, _ = await api.request("POST", "/admin/v1/keys/rotate")
        status, second, _ = await api.request("POST", "/admin/v1/keys/rotate")
        if status == 202:  # the first one already finished on a fast machine
            await wait_finished(api, second["id"])
        else:
            assert status == 409
            assert second["error"]["code"] == "job_running"
        await wait_finished(api, first["id"])


async def test_keys_routes_are_admin_only(api: Api) -> None:
    token = await api.make_user("w", "writer")
    for method, path in (("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys/rotate")):
        status, body, _ = await api.as_token(token).request(method, path)
        assert status == 403, body


async def test_rekey_job_fails_naming_unknown_keys(tmp_path: Path, database: str) -> None:
    """A snapshot under a key nobody configured is reported, not looped over."""
    key_a, key_x = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        ids = await seed(rt, api, 2)
        foreign = crypto.Keyring([base64.b64decode(key_x)])
        sealed = foreign.encrypt(b'{"v":"x"}', crypto.secret_aad(ids[0], 1))
        await rt.pool.execute(
            "UPDATE events SET snapshot = $1 WHERE secret_id = $2 AND version = 1",
            sealed,
            ids[0],
        )
        body = await inventory(api)
        assert body["unknown"] == [
            {"id": kid(key_x), "ciphertexts": 1, "stored_in": {"event_log": 1}}
        ]
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        job = await asyncio.wait_for(wait_finished(api, job["id"]), 120)
        assert job["status"] == "failed"
        assert kid(key_x) in job["error"]
        assert job["counts"]["unknown"] == 1


async def test_allow_unknown_keys_starts_anyway(tmp_path: Path, database: str) -> None:
    """encryption.allow_unknown_keys: a key lost for good does not keep the daemon down."""
    key_a, key_c = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 1)
    settings = make_settings(tmp_path, database, key_c, encryption={"allow_unknown_keys": True})
    async with open_runtime(settings, database) as rt, TestClient(TestServer(make_app(rt))) as c:
        body = await inventory(Api(c))
    assert [u["id"] for u in body["unknown"]] == [kid(key_a)]


async def test_rotate_covers_a_sql_store_in_its_own_database(
    tmp_path: Path, database: str, postgres: TestPostgres
) -> None:
    """A sql backup in another database is counted and rekeyed like the main one."""
    other = await postgres.create_database()
    try:
        key_a, key_b = new_key(), new_key()
        backup = {"type": "sql", "database_url": postgres.dsn(other)}
        settings = make_settings(
            tmp_path, database, key_a, backup=backup, reconcile={"verify_interval_s": 0}
        )
        async with (
            open_runtime(settings, database) as rt,
            TestClient(TestServer(make_app(rt))) as client,
        ):
            await seed(rt, Api(client), 5)
        settings = make_settings(
            tmp_path,
            database,
            f"{key_b},{key_a}",
            backup=backup,
            reconcile={"verify_interval_s": 0},
        )
        async with (
            open_runtime(settings, database) as rt,
            TestClient(TestServer(make_app(rt))) as client,
        ):
            api = Api(client)
            before = await inventory(api)
            assert before["keys"][1]["stored_in"]["sql (backup)"] == 5
            _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
            job = await wait_finished(api, job["id"])
            assert job["status"] == "succeeded", job
            after = await inventory(api)
            assert after["keys"][1]["ciphertexts"] == 0
            assert after["keys"][0]["stored_in"]["sql (backup)"] == 5
        # Back to A alone: B now seals everything, the backup's database included.
        with pytest.raises(KeysMissing, match=r"\(" + str(10 + 5 + 5 + 1) + r" ciphertexts\)"):
            async with open_runtime(
                make_settings(tmp_path, database, key_a, backup=backup), database
            ):
                pass
    finally:
        await postgres.drop_database(other)


async def test_a_cancelled_rotate_is_finished_by_the_next(tmp_path: Path, database: str) -> None:
    """Cancel a rekey job midway; the next keys rotate does only what is left."""
    key_a, key_b = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        await seed(rt, api, 40)
    settings = make_settings(
        tmp_path,
        database,
        f"{key_b},{key_a}",
        backup={"type": "file", "path": str(tmp_path / "files")},
        reconcile={"verify_interval_s": 0},
        encryption={"rekey_batch_size": 1},
    )
    async with (
        open_runtime(settings, database) as rt,
        TestClient(TestServer(make_app(rt))) as client,
    ):
        api = Api(client)
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        deadline = asyncio.get_running_loop().time() + 60
        while (await inventory(api))["keys"][1]["ciphertexts"] == 40 * 2 + 40 + 40:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        status, _, _ = await api.request("POST", f"/admin/v1/jobs/{job['id']}/cancel")
        assert status == 200
        first = await wait_finished(api, job["id"])
        assert first["status"] == "cancelled", first
        left = (await inventory(api))["keys"][1]["ciphertexts"]
        assert 0 < left < 160
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        second = await wait_finished(api, job["id"])
        assert second["status"] == "succeeded", second
        assert second["counts"]["rekeyed"] == left
        assert (await inventory(api))["keys"][1]["ciphertexts"] == 0


class _WriteAfterRead:
    """The holder's database, with another write landing right after the batch's SELECT."""

    def __init__(self, pool: Any, write: Any) -> None:
        self._pool = pool
        self._write = write

    async def fetch(self, query: str, *args: Any) -> Any:
        rows = await self._pool.fetch(query, *args)
        await self._write()
        return rows

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._pool.fetchval(query, *args)


async def test_rekey_batch_never_overwrites_a_write_made_meanwhile(
    tmp_path: Path, database: str
) -> None:
    """Compare-and-set: a value written between the batch's read and its UPDATE survives."""
    from secretmirror.keys import SqlValues

    key_a, key_b = new_key(), new_key()
    async with serving(tmp_path, database, key_a) as (rt, api):
        ids = await seed(rt, api, 3)
    async with serving(tmp_path, database, f"{key_b},{key_a}") as (rt, api):
        racing = ids[1]
        newer = rt.keyring.encrypt(b'{"v":"new"}', crypto.secret_aad(racing, 3))

        async def write() -> None:  # what the API does for version 3, in short
            await rt.pool.execute(
                "UPDATE secretmirror_values SET version = 3, ciphertext = $1 WHERE secret_id = $2",
                newer,
                racing,
            )

        holder = SqlValues(_WriteAfterRead(rt.pool, write), rt.deployment_id)
        old_kid = crypto.key_id(base64.b64decode(key_a))
        batch = await holder.rekey(rt.keyring, old_kid, None, 10)
        assert batch.seen == 3
        assert batch.rekeyed == 2
        stored = await rt.pool.fetchrow(
            "SELECT version, ciphertext FROM secretmirror_values WHERE secret_id = $1", racing
        )
        assert stored["version"] == 3
        assert stored["ciphertext"] == newer
