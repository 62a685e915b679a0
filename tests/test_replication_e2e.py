"""Replication end to end: daemon subprocesses, a real PostgreSQL, moto as AWS, a fault proxy.

Each test drives a write load through the HTTP API and checks what the stores
hold afterwards against what was acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from secretmirror.crypto import Keyring
from secretmirror.settings import AwsStoreSettings, FileStoreSettings
from secretmirror.stores.aws import AwsStore
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess, store_env
from tests.faultproxy import ThreadedFaultProxy
from tests.load import Load
from tests.moto import aws_settings, secrets_client

pytestmark = pytest.mark.acceptance

FAST_REPLICATION = {
    "SECRETMIRROR_REPLICATION__POLL_INTERVAL_S": "0.2",
    "SECRETMIRROR_REPLICATION__BACKOFF_INITIAL_S": "0.1",
    "SECRETMIRROR_REPLICATION__BACKOFF_MAX_S": "1",
    # A store call gets lease_s / 3 and a cut-off write holds its lease that long again:
    # moto serves one request at a time, and on a loaded machine a put can queue there
    # for seconds (one took over 1.7 s in CI). A crashed daemon's leases lapse after 10 s.
    "SECRETMIRROR_REPLICATION__LEASE_S": "10",
    "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
}


def aws_env(role: str, endpoint: str, prefix: str) -> dict[str, str]:
    fields = aws_settings(endpoint, prefix, max_writes_per_s=5000)
    return store_env(role, {"type": "aws", **fields})


@pytest.fixture
def key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Every daemon a test starts; all stopped at the end."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def new_daemon(
    daemons: list[DaemonProcess], tmp_path: Path, database: str, key: str, env: dict[str, str]
) -> DaemonProcess:
    n = len(daemons)
    daemon = DaemonProcess(
        {
            "SECRETMIRROR_DATABASE_URL": database,
            "SECRETMIRROR_ENCRYPTION_KEYS": key,
            **FAST_REPLICATION,
            **env,
        },
        tmp_path / f"data{n}",
        tmp_path / f"daemon{n}.log",
    )
    daemons.append(daemon)
    return daemon


async def deployment_id(database: str) -> str:
    conn = await asyncpg.connect(database)
    try:
        return str(await conn.fetchval("SELECT id::text FROM deployment"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def aws_view(database: str, endpoint: str, prefix: str) -> AsyncIterator[AwsStore]:
    """An ``aws`` store of the daemon's deployment, to look at what AWS holds."""
    ctx = StoreContext(await deployment_id(database), Keyring([secrets.token_bytes(32)]))
    store = AwsStore(AwsStoreSettings(**aws_settings(endpoint, prefix)), ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def status(daemon: DaemonProcess) -> dict[str, Any]:
    return await asyncio.to_thread(daemon.get, "/admin/v1/status")


async def drained(daemon: DaemonProcess) -> bool:
    body = await status(daemon)
    return all(t["pending"] == 0 for t in body["replication"].values())


class VersionProbe:
    """Polls a store's listing during the run: no entry's version may ever go backwards.

    On the way out it lists until ``min_polls`` listings have succeeded (at most 60 s),
    so ``polls`` says whether the listing works, not how fast the machine was: a run that
    ended before a slow listing came round a fourth time failed a CI run once."""

    def __init__(
        self, list_versions: Callable[[], Awaitable[dict[str, int]]], min_polls: int = 4
    ) -> None:
        self._list = list_versions
        self.min_polls = min_polls
        self.seen: dict[str, int] = {}
        self.backwards: list[tuple[str, int, int]] = []
        self.polls = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for sid, version in (await self._list()).items():
                    if version < self.seen.get(sid, 0):
                        self.backwards.append((sid, self.seen[sid], version))
                    self.seen[sid] = max(version, self.seen.get(sid, 0))
                self.polls += 1
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> VersionProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        deadline = asyncio.get_running_loop().time() + 60
        while self.polls < self.min_polls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._stop.set()
        await self._task


async def aws_versions(store: AwsStore) -> dict[str, int]:
    return {e.secret_id: e.version async for e in store.list()}


async def check_converged(load: Load, ids: list[str], store: Any) -> None:
    """Every secret's store entry equals the API's truth; every acknowledged write is there."""
    for sid in ids:
        truth = await load.truth(sid)
        acked = load.acked.get(sid)
        got = await store.get(sid)
        if truth is None:
            assert got is None, sid
            assert acked is None or acked.values is None, sid
            continue
        assert got is not None, sid
        assert (got.version, got.values) == truth, sid
        if acked is not None:
            assert acked.values is not None, sid  # an acknowledged delete stays deleted
            assert truth[0] >= acked.version, sid


async def aws_version_ids(endpoint: str, name: str) -> list[str]:
    async with secrets_client(endpoint) as client:
        ids: list[str] = []
        kwargs: dict[str, Any] = {"SecretId": name, "IncludeDeprecated": True}
        while True:
            page = await client.list_secret_version_ids(**kwargs)
            ids += [v["VersionId"] for v in page["Versions"]]
            if not page.get("NextToken"):
                return ids
            kwargs["NextToken"] = page["NextToken"]


async def seed(load: Load, count: int, clients: int = 8) -> list[str]:
    names = iter(range(count))
    ids: list[str] = []

    async def client() -> None:
        for n in names:
            sid = await load.create(f"load-{n}")
            if sid is not None:
                ids.append(sid)

    await asyncio.gather(*(client() for _ in range(clients)))
    return ids


async def test_convergence_under_load(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """2,000 random writes over 500 secrets from 8 clients converge in AWS, never backwards."""
    daemon = new_daemon(
        daemons, tmp_path, database, key, aws_env("backup", moto_server, aws_prefix)
    )
    await asyncio.to_thread(daemon.start)
    async with aws_view(database, moto_server, aws_prefix) as view, Load([daemon.url]) as load:
        async with VersionProbe(lambda: aws_versions(view)) as probe:
            ids = await seed(load, 500)
            await load.run(ids, 1500, clients=8)
            await until(lambda: drained(daemon), 120, "the backup to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.unknown_outcomes == 0
        assert probe.polls > 3
        assert probe.backwards == []
        await check_converged(load, ids, view)


async def test_kill_9_during_load_loses_nothing(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """kill -9 thrice under load: every acknowledged write reaches AWS; no duplicate versions."""
    daemon = new_daemon(
        daemons, tmp_path, database, key, aws_env("backup", moto_server, aws_prefix)
    )
    await asyncio.to_thread(daemon.start)
    async with aws_view(database, moto_server, aws_prefix) as view, Load([daemon.url]) as load:
        async with VersionProbe(lambda: aws_versions(view)) as probe:
            ids = await seed(load, 300)

            async def killer() -> None:
                for _ in range(3):
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(daemon.kill)
                    await asyncio.to_thread(daemon.start)

            await asyncio.gather(load.run(ids, 1500, clients=8), killer())
            await until(lambda: drained(daemon), 120, "the backup to drain after the crashes")
        assert load.failed_requests == 0, load.failures[:5]
        assert (await status(daemon))["replication"]["backup"]["dead"] == 0
        assert probe.backwards == []
        await check_converged(load, ids, view)
        # A secret deleted before its create was delivered never reached AWS (the worker
        # delivers the latest state): look at entries AWS holds (moto answers a 500, not a
        # ResourceNotFoundException, for a version listing of a name it never had).
        present = await aws_versions(view)
        held = [sid for sid in ids if sid in present][:60]
        assert len(held) == 60, len(held)
        for sid in held:
            version_ids = await aws_version_ids(moto_server, f"{aws_prefix}{sid}")
            versions = [v.split("-")[1] for v in version_ids]
            assert len(versions) == len(set(versions)), (sid, version_ids)


async def test_backup_outage_delays_but_never_fails_writes(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """With AWS unreachable for 20 s no write fails, lag grows, and it drains after."""
    moto = urlsplit(moto_server)
    with ThreadedFaultProxy(moto.hostname or "127.0.0.1", moto.port or 0) as proxy:
        env = aws_env("backup", proxy.url, aws_prefix)
        daemon = new_daemon(daemons, tmp_path, database, key, env)
        await asyncio.to_thread(daemon.start)
        async with aws_view(database, moto_server, aws_prefix) as view, Load([daemon.url]) as load:
            ids = await seed(load, 50)
            await until(lambda: drained(daemon), 60, "the first drain")
            await asyncio.to_thread(proxy.down)
            started = time.monotonic()
            lags: list[float] = []
            while time.monotonic() - started < 20:
                await load.run(ids, 20, clients=4)
                body = await status(daemon)
                lags.append(body["replication"]["backup"]["oldest_pending_age_s"])
                await asyncio.sleep(0.5)
            body = await status(daemon)
            assert body["replication"]["backup"]["pending"] > 0
            assert body["stores"]["backup"]["up"] is False
            assert lags[-1] > 15
            assert lags[-1] > lags[len(lags) // 2] > lags[0]
            await asyncio.to_thread(proxy.pass_through)
            await until(lambda: drained(daemon), 60, "the drain after the outage")
            assert load.failed_requests == 0, load.failures[:5]
            assert load.unknown_outcomes == 0
            body = await status(daemon)
            assert body["replication"]["backup"]["oldest_pending_age_s"] == 0
            assert body["replication"]["backup"]["dead"] == 0
            await check_converged(load, ids, view)


async def test_primary_outage_serves_from_backup(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """An aws primary down: reads come from the file backup, writes succeed, AWS catches up."""
    moto = urlsplit(moto_server)
    backup_dir = tmp_path / "file-backup"
    with ThreadedFaultProxy(moto.hostname or "127.0.0.1", moto.port or 0) as proxy:
        env = {
            **aws_env("primary", proxy.url, aws_prefix),
            **store_env("backup", {"type": "file", "path": backup_dir}),
            "SECRETMIRROR_REPLICATION__INLINE_TIMEOUT_S": "1",
        }
        daemon = new_daemon(daemons, tmp_path, database, key, env)
        await asyncio.to_thread(daemon.start)
        async with aws_view(database, moto_server, aws_prefix) as view, Load([daemon.url]) as load:
            ids = await seed(load, 40, clients=4)
            await until(lambda: drained(daemon), 60, "the first drain")
            await asyncio.to_thread(proxy.down)
            await load.run(ids, 300, clients=4)
            assert load.failed_requests == 0, load.failures[:5]
            assert load.unknown_outcomes == 0
            assert load.stale_reads == []
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            live = [sid for sid in ids if (a := load.acked.get(sid)) and a.values is not None]
            async with aiohttp.ClientSession(headers=headers) as http:
                url, sources = f"{daemon.url}/api/v1/secrets/{live[0]}", []

                async def served_from(source: str) -> bool:
                    # A read that times out on a loaded machine falls back one step (to the
                    # backup, or the log while the backup's copy is still queued): look again.
                    async with http.get(url) as resp:
                        assert resp.status == 200
                        assert (await resp.json())["version"] == load.acked[live[0]].version
                        sources.append(resp.headers["X-Secret-Source"])
                        return sources[-1] == source

                await until(lambda: served_from("backup"), 20, f"a read from the backup {sources}")
                await asyncio.to_thread(proxy.pass_through)
                await until(lambda: drained(daemon), 60, "the primary to catch up")
                await until(lambda: served_from("primary"), 20, f"the primary {sources}")
            await check_converged(load, ids, view)
            ctx = StoreContext(await deployment_id(database), Keyring([base64.b64decode(key)]))
            await check_converged(load, ids, FileStore(FileStoreSettings(path=backup_dir), ctx))


async def test_two_daemons_share_the_work_in_order(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """Two serve processes on one database both apply deliveries, never out of order."""
    env = aws_env("backup", moto_server, aws_prefix)
    first = new_daemon(daemons, tmp_path, database, key, env)
    second = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(first.start)
    await asyncio.to_thread(second.start)
    async with (
        aws_view(database, moto_server, aws_prefix) as view,
        Load([first.url, second.url]) as load,
    ):
        async with VersionProbe(lambda: aws_versions(view)) as probe:
            ids = await seed(load, 200)
            await load.run(ids, 800, clients=8)
            await until(lambda: drained(first), 120, "the drain")
        assert probe.backwards == []
        assert load.failed_requests == 0, load.failures[:5]
        await check_converged(load, ids, view)
    applied = [await applied_total(d) for d in (first, second)]
    assert all(n > 0 for n in applied), applied


async def applied_total(daemon: DaemonProcess) -> float:
    def scrape() -> float:
        import urllib.request

        with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("secretmirror_replication_applied_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    return await asyncio.to_thread(scrape)


async def test_sigterm_under_load_exits_fast_and_loses_nothing(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """SIGTERM during writes exits within 10 s; after a restart every acknowledged write lands."""
    moto = urlsplit(moto_server)
    with ThreadedFaultProxy(moto.hostname or "127.0.0.1", moto.port or 0) as proxy:
        daemon = new_daemon(
            daemons, tmp_path, database, key, aws_env("backup", proxy.url, aws_prefix)
        )
        await asyncio.to_thread(daemon.start)
        async with aws_view(database, moto_server, aws_prefix) as view, Load([daemon.url]) as load:
            ids = await seed(load, 100)
            await asyncio.to_thread(proxy.latency, 0.3)  # keep deliveries in flight
            writes = asyncio.create_task(load.run(ids, 400, clients=8))
            await asyncio.sleep(1.5)
            took = await asyncio.to_thread(daemon.terminate)
            assert took < 10
            await asyncio.to_thread(proxy.pass_through)
            await asyncio.to_thread(daemon.start)
            await writes
            await until(lambda: drained(daemon), 60, "the drain after the restart")
            assert load.failed_requests == 0, load.failures[:5]
            await check_converged(load, ids, view)


async def test_unmanaged_entry_is_never_touched_and_dead_letter_is_superseded(
    tmp_path: Path,
    database: str,
    key: str,
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],
) -> None:
    """A foreign AWS secret in our way is left alone: its delivery dead-letters, others flow."""
    env = aws_env("backup", moto_server, aws_prefix)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        secrets_client(moto_server) as client,
        Load([daemon.url]) as load,
        aws_view(database, moto_server, aws_prefix) as view,
    ):
        similar = f"{aws_prefix}{uuid.uuid4()}"
        await client.create_secret(Name=similar, SecretString="theirs")
        await client.create_secret(Name=f"{aws_prefix}not-a-uuid", SecretString="theirs too")
        ids = await seed(load, 5, clients=1)
        await until(lambda: drained(daemon), 60, "the first drain")
        await asyncio.to_thread(daemon.stop)
        # While no worker runs, someone creates an unmanaged secret under the name ours needs.
        victim = ids[0]
        await client.delete_secret(
            SecretId=f"{aws_prefix}{victim}", ForceDeleteWithoutRecovery=True
        )
        await client.create_secret(Name=f"{aws_prefix}{victim}", SecretString="someone else's")
        await asyncio.to_thread(daemon.start)
        await load._call("PATCH", f"/api/v1/secrets/{victim}", {"values": {"v": "x"}})

        async def victim_dead() -> bool:
            return (await status(daemon))["replication"]["backup"]["dead"] == 1

        await until(victim_dead, 60, "the delivery into the foreign entry to dead-letter")
        await load._call("PATCH", f"/api/v1/secrets/{ids[1]}", {"values": {"v": "other"}})

        async def others_flow() -> bool:
            got = await view.get(ids[1])
            return got is not None and got.values["v"] == "other"

        await until(others_flow, 60, "other secrets to keep replicating")
        for name, value in (
            (similar, "theirs"),
            (f"{aws_prefix}not-a-uuid", "theirs too"),
            (f"{aws_prefix}{victim}", "someone else's"),
        ):
            got = await client.get_secret_value(SecretId=name)
            assert got["SecretString"] == value
        # The owner removes their entry; the next version supersedes the dead letter.
        await client.delete_secret(
            SecretId=f"{aws_prefix}{victim}", ForceDeleteWithoutRecovery=True
        )
        await load._call("PATCH", f"/api/v1/secrets/{victim}", {"values": {"v": "ours again"}})
        await until(lambda: drained(daemon), 60, "the superseding version to apply")
        body = await status(daemon)
        assert body["replication"]["backup"]["dead"] == 0
        got = await view.get(victim)
        assert got is not None
        assert got.values["v"] == "ours again"
