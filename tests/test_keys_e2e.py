"""Key rotation end to end: daemon subprocesses, real PostgreSQL, the CLI, a file backup.

The runbook of the README, run as an operator would: data under key A; restart
with ``B,A``; ``secretmirror keys rotate`` while clients keep writing; ``keys
status`` shows A at 0; restart with ``B`` alone; everything reads back and
verify is clean. Also: ``kill -9`` in the middle of the rekey job, and a start
with a key that does not match the data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from secretmirror import crypto
from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess
from tests.load import Load
from tests.moto import ACCESS_KEY, REGION, SECRET_KEY
from tests.test_kms import kms_client, new_cmk, transit  # noqa: F401 - transit is a fixture

pytestmark = pytest.mark.acceptance

FAST = {
    "SECRETMIRROR_REPLICATION__POLL_INTERVAL_S": "0.2",
    "SECRETMIRROR_REPLICATION__LEASE_S": "5",
    "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
}
_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def kid(key: str) -> str:
    return crypto.key_id(base64.b64decode(key)).hex()


class Deployment:
    """One database, one file backup directory, and a daemon restarted with other keys."""

    def __init__(self, tmp_path: Path, database: str) -> None:
        self.tmp_path = tmp_path
        self.database = database
        self.files = tmp_path / "files"
        self.daemon: DaemonProcess | None = None
        self.runs = 0

    def env(self, keys: str | dict[str, str], **extra: str) -> dict[str, str]:
        """``keys``: encryption_keys, or the SECRETMIRROR_ENCRYPTION__KMS__* variables."""
        source = keys if isinstance(keys, dict) else {"SECRETMIRROR_ENCRYPTION_KEYS": keys}
        return {
            "SECRETMIRROR_DATABASE_URL": self.database,
            **source,
            "SECRETMIRROR_BACKUP__TYPE": "file",
            "SECRETMIRROR_BACKUP__PATH": str(self.files),
            **FAST,
            **extra,
        }

    def start(self, keys: str | dict[str, str], **extra: str) -> DaemonProcess:
        self.stop()
        self.runs += 1
        self.daemon = DaemonProcess(
            self.env(keys, **extra),
            self.tmp_path / "data",
            self.tmp_path / f"daemon{self.runs}.log",
        )
        self.daemon.start(timeout=120)
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        assert self.daemon is not None
        env = {
            **os.environ,
            "SECRETMIRROR_URL": self.daemon.url,
            "SECRETMIRROR_TOKEN": ADMIN_TOKEN,
        }
        return subprocess.run(
            [sys.executable, "-m", "secretmirror", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "-o", "json")
        assert done.returncode == 0, (done.stdout, done.stderr)
        return json.loads(done.stdout)


@pytest.fixture
def deployment(tmp_path: Path, database: str) -> Iterator[Deployment]:
    found = Deployment(tmp_path, database)
    yield found
    found.stop()


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def drained(daemon: DaemonProcess) -> bool:
    status = daemon.get("/admin/v1/status")
    return all(t["pending"] == 0 and t["dead"] == 0 for t in status["replication"].values())


async def seed(url: str, n: int) -> dict[str, list[dict[str, str]]]:
    """n secrets of three versions each; every version's values by secret id."""
    versions: dict[str, list[dict[str, str]]] = {}
    async with aiohttp.ClientSession(headers=_HEADERS) as session:

        async def one(i: int) -> None:
            values = {"v": f"one-{i}", "pad": secrets.token_hex(8)}
            async with session.post(
                f"{url}/api/v1/secrets", json={"name": f"s{i:04d}", "values": values}
            ) as resp:
                assert resp.status == 201
                sid = (await resp.json())["id"]
            history = [values]
            for step in ("two", "three"):
                values = {"v": f"{step}-{i}", "pad": secrets.token_hex(8)}
                async with session.put(
                    f"{url}/api/v1/secrets/{sid}", json={"name": f"s{i:04d}", "values": values}
                ) as resp:
                    assert resp.status == 200
                history.append(values)
            versions[sid] = history

        sem = asyncio.Semaphore(8)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i)

        await asyncio.gather(*(bounded(i) for i in range(n)))
    return versions


async def check_reads(url: str, versions: dict[str, list[dict[str, str]]], load: Load) -> None:
    """Every live secret reads its last acknowledged values; every kept version reads back."""
    async with aiohttp.ClientSession(headers=_HEADERS) as session:
        for sid, history in versions.items():
            async with session.get(f"{url}/api/v1/secrets/{sid}") as resp:
                acked = load.acked.get(sid)
                if acked is not None and acked.values is None:
                    assert resp.status == 404
                    continue
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            if acked is not None:
                assert body["values"] == acked.values
            current = body["version"]
            for version in range(1, current + 1):
                async with session.get(
                    f"{url}/api/v1/secrets/{sid}", params={"version": str(version)}
                ) as resp:
                    # history.keep_versions (10): older snapshots may be purged (410)
                    assert resp.status == 200 or (resp.status == 410 and version <= current - 10), (
                        sid,
                        version,
                        resp.status,
                    )
                    if resp.status == 200 and version <= len(history):
                        assert (await resp.json())["values"] == history[version - 1]


def file_entries_read(deployment: Deployment, keys: str, ids: list[str]) -> int:
    """How many of ``ids`` the file backup serves when opened with ``keys`` alone."""

    async def count() -> int:
        conn = await asyncpg.connect(deployment.database)
        try:
            deployment_id = str(await conn.fetchval("SELECT id FROM deployment"))
        finally:
            await conn.close()
        keyring = crypto.Keyring(crypto.parse_keys(keys))
        store = FileStore(
            FileStoreSettings(path=deployment.files), StoreContext(deployment_id, keyring)
        )
        served = 0
        for sid in ids:
            if await store.get(sid) is not None:
                served += 1
        return served

    return asyncio.run(count())


def assert_verify_clean(deployment: Deployment) -> None:
    job = deployment.cli_json("reconcile")
    assert job["status"] == "succeeded", job
    for store, classes in job["counts"]["stores"].items():
        for cls in ("missing", "stale", "mismatch", "orphan", "unreadable"):
            assert classes.get(cls, 0) == 0, (store, classes)


async def test_rotation_end_to_end_under_writes(deployment: Deployment) -> None:
    """A then B,A + keys rotate under 4 writers, then B alone: nothing lost, verify clean."""
    key_a, key_b = new_key(), new_key()
    daemon = deployment.start(key_a)
    versions = await seed(daemon.url, 200)
    await asyncio.to_thread(wait_for, lambda: drained(daemon), 120, "the backup to catch up")

    daemon = deployment.start(f"{key_b},{key_a}")
    status = deployment.cli_json("keys", "status")
    assert [k["id"] for k in status["keys"]] == [kid(key_b), kid(key_a)]
    assert status["keys"][1]["ciphertexts"] >= 200 * 3 + 200 + 200
    ids = list(versions)
    async with Load([daemon.url], seed=13) as load:
        rotate = asyncio.create_task(asyncio.to_thread(deployment.cli, "keys", "rotate"))
        while not rotate.done():
            await load.run(ids, 40, clients=4)
        done = await rotate
        await load.run(ids, 40, clients=4)  # and after it ended
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert load.failed_requests == 0, load.failures[:5]
    assert load.ops_done > 0
    status = deployment.cli_json("keys", "status")
    assert status["keys"][1] == {
        "id": kid(key_a),
        "position": 1,
        "ciphertexts": 0,
        "stored_in": {},
    }
    assert status["unknown"] == []
    await asyncio.to_thread(wait_for, lambda: drained(daemon), 120, "the backup to catch up")

    daemon = deployment.start(key_b)
    await check_reads(daemon.url, versions, load)
    live = [s for s in ids if not (load.acked.get(s) and load.acked[s].values is None)]
    assert await asyncio.to_thread(file_entries_read, deployment, key_b, live) == len(live)
    assert deployment.cli_json("keys", "status")["unknown"] == []
    assert_verify_clean(deployment)


def kms_env(fields: dict[str, str]) -> dict[str, str]:
    return {f"SECRETMIRROR_ENCRYPTION__KMS__{k.upper()}": v for k, v in fields.items()}


@pytest.mark.parametrize("kms", ["aws", "hashicorp"])
async def test_kms_rotation_end_to_end_under_writes(
    deployment: Deployment, kms: str, request: pytest.FixtureRequest
) -> None:
    """Rotate the KMS key, keys rotate under 4 writers, retire the old KMS key: all reads."""
    if kms == "aws":
        endpoint = request.getfixturevalue("moto_server")
        first, second = await new_cmk(endpoint), await new_cmk(endpoint)
        base = {
            "type": "aws",
            "region": REGION,
            "endpoint_url": endpoint,
            "auth_method": "secret-key",
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
        }
        before, after = kms_env({**base, "key_id": first}), kms_env({**base, "key_id": second})

        async def retire_old() -> None:
            async with kms_client(endpoint) as client:
                await client.disable_key(KeyId=first)

    else:
        bao, mount = request.getfixturevalue("transit")
        before = after = kms_env(
            {
                "type": "hashicorp",
                "url": bao.url,
                "mount": mount,
                "key_name": "k",
                "token": bao.root_token,
            }
        )

        async def retire_old() -> None:
            bao.ok("POST", f"{mount}/keys/k/config", {"min_decryption_version": 2})

    daemon = deployment.start(before)
    versions = await seed(daemon.url, 100)
    await asyncio.to_thread(wait_for, lambda: drained(daemon), 120, "the backup to catch up")
    [old] = deployment.cli_json("keys", "status")["keys"]
    if kms == "hashicorp":
        bao.ok("POST", f"{mount}/keys/k/rotate", {})

    daemon = deployment.start(after)
    ids = list(versions)
    async with Load([daemon.url], seed=14) as load:
        rotate = asyncio.create_task(asyncio.to_thread(deployment.cli, "keys", "rotate"))
        while not rotate.done():
            await load.run(ids, 40, clients=4)
        done = await rotate
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert load.failed_requests == 0, load.failures[:5]
    status = deployment.cli_json("keys", "status")
    assert [k["id"] for k in status["keys"]] != [old["id"]]
    assert len(status["keys"]) == 1  # the old data key sealed nothing and was deleted
    assert status["unknown"] == []
    await asyncio.to_thread(wait_for, lambda: drained(daemon), 120, "the backup to catch up")

    await retire_old()
    daemon = deployment.start(after)
    await check_reads(daemon.url, versions, load)
    assert_verify_clean(deployment)


async def test_kill_9_during_rekey_resumes(deployment: Deployment) -> None:
    """kill -9 in the middle of the rekey job: after a restart the same job finishes."""
    key_a, key_b = new_key(), new_key()
    daemon = deployment.start(key_a)
    versions = await seed(daemon.url, 150)
    await asyncio.to_thread(wait_for, lambda: drained(daemon), 120, "the backup to catch up")
    # Small batches make the job slow enough to be caught in the middle.
    slow = {"SECRETMIRROR_ENCRYPTION__REKEY_BATCH_SIZE": "1"}
    daemon = deployment.start(f"{key_b},{key_a}", **slow)
    job = daemon.post("/admin/v1/keys/rotate", {})
    assert job["mode"] == "rekey"
    path = f"/admin/v1/jobs/{job['id']}"

    seen: list[dict[str, Any]] = []

    def midway() -> bool:
        seen.append(daemon.get(path))
        assert seen[-1]["status"] in ("queued", "running"), seen[-1]
        return bool(seen[-1]["counts"].get("scanned", 0) >= 1)

    await asyncio.to_thread(wait_for, midway, 120, "the rekey job to get going")
    daemon.kill()
    assert seen[-1]["counts"]["scanned"] < seen[-1]["counts"]["total"]

    daemon = deployment.start(f"{key_b},{key_a}")

    def finished() -> bool:
        return bool(daemon.get(path)["status"] not in ("queued", "running"))

    await asyncio.to_thread(wait_for, finished, 180, "the resumed rekey job to finish")
    job = daemon.get(path)
    assert job["status"] == "succeeded", job
    assert job["counts"]["failed"] == 0
    assert "job.resumed" in Path(daemon.log_path).read_text()
    status = daemon.get("/admin/v1/keys")
    assert status["keys"][1]["ciphertexts"] == 0
    assert status["unknown"] == []

    daemon = deployment.start(key_b)
    async with Load([daemon.url]) as load:
        await check_reads(daemon.url, versions, load)
    assert await asyncio.to_thread(file_entries_read, deployment, key_b, list(versions)) == len(
        versions
    )
    assert_verify_clean(deployment)


async def _table_digest(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        digest = {}
        for row in tables:
            name = row["tablename"]
            digest[name] = await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM \"{name}\" t"  # noqa: E501
            )
        return digest
    finally:
        await conn.close()


def _files_digest(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


async def test_start_with_a_wrong_key_refuses_and_writes_nothing(
    deployment: Deployment,
) -> None:
    """Only key C while data is under A: one line naming A and its count, exit 1, no write."""
    key_a, key_c = new_key(), new_key()
    daemon = deployment.start(key_a)
    await seed(daemon.url, 5)
    await asyncio.to_thread(wait_for, lambda: drained(daemon), 120, "the backup to catch up")
    deployment.stop()
    tables, files = await _table_digest(deployment.database), _files_digest(deployment.files)

    env = {
        **os.environ,
        "SECRETMIRROR_DATA_DIR": str(deployment.tmp_path / "data"),
        "SECRETMIRROR_LISTEN": "127.0.0.1:1",
        "SECRETMIRROR_ADMIN_TOKEN": ADMIN_TOKEN,
        **deployment.env(key_c),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "secretmirror", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # 5 secrets x 3 versions in the log, 5 sql values, 5 file entries, the hash key.
    assert lines == [
        f"error: stored ciphertexts use keys that are not configured: {kid(key_a)} "
        "(26 ciphertexts); add the key back to encryption_keys, then run "
        "`secretmirror keys rotate`"
    ]
    assert await _table_digest(deployment.database) == tables
    assert _files_digest(deployment.files) == files


async def test_kms_down_at_start_daemon_not_ready_then_recovers(
    deployment: Deployment, moto_server: str
) -> None:
    """A daemon started while its KMS is unreachable serves /readyz 503 naming the KMS,
    reads are 503, and it becomes ready by itself once the KMS answers."""
    from tests.faultproxy import ThreadedFaultProxy

    key_id = await new_cmk(moto_server)
    endpoint = urlsplit(moto_server)
    with ThreadedFaultProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        env = kms_env(
            {
                "type": "aws",
                "key_id": key_id,
                "region": REGION,
                "endpoint_url": proxy.url,
                "auth_method": "secret-key",
                "aws_access_key_id": ACCESS_KEY,
                "aws_secret_access_key": SECRET_KEY,
            }
        )
        daemon = deployment.start(env)
        versions = await seed(daemon.url, 3)
        deployment.stop()
        proxy.down()
        daemon = DaemonProcess(
            deployment.env(env), deployment.tmp_path / "data", deployment.tmp_path / "down.log"
        )
        deployment.daemon = daemon
        assert daemon.proc is None
        daemon.start_no_wait()

        def readyz() -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(daemon.url + "/readyz", timeout=2) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())
            except OSError:
                return 0, None

        await asyncio.to_thread(wait_for, lambda: readyz()[0] == 503, 120, "a 503 readyz")
        _, body = readyz()
        assert any("the KMS is unavailable" in r for r in body["reasons"]), body
        sid = next(iter(versions))
        request = urllib.request.Request(f"{daemon.url}/api/v1/secrets/{sid}", headers=_HEADERS)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 503
        proxy.pass_through()
        await asyncio.to_thread(wait_for, lambda: readyz()[0] == 200, 120, "readiness back")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["values"] == versions[sid][-1]
