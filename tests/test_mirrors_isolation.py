"""One mirror blackholed for 30 s under writes never delays the others (issue 16, spec 16).

A real ``secretmirror serve`` process (sql primary in the main database, a
``file`` backup) with four mirrors: ``files`` (file), ``vault`` (hashicorp on
OpenBao), ``team`` (aws on moto) and ``cut`` (aws on the same moto, through a
fault proxy). A steady open-loop load of creates runs through the API; the
commit-to-applied latency of every other target is measured over a window
before the blackhole and a window of the same length during it, and the
``cut`` mirror must drain and hold everything after the heal.

What the latency measures: per secret and target, from the moment the API
answered the create (the write committed) to the first poll of the
``deliveries`` table that sees the target's row applied (the worker records it
right after the store write; ``secretmirror_replication_latency_seconds``
observes the same moment). The poll runs every ``POLL_S``, so a sample is late
by at most that much, in both windows alike. Each sample is exact rather than
a bucket of the daemon's histogram (whose bounds, 50/100/250/500 ms, are too
coarse for a 20% comparison); the histogram's p99 per window is printed beside
it for the record.

The bound: a broken isolation (a down store holding the worker's slots, or
its calls waiting out the 10 s store timeout in line with the others) shows
as seconds of added latency. On a 2-core machine shared with other work the
p99 of a few hundred samples also moves with other people's load, so the test
asserts ``during <= 1.2 x before + max(100 ms, noise)``, where ``noise`` is
how far apart the p99s of the two halves of the window before are (the same
load, no fault: what the machine alone moves it by), and prints the plain
ratio. 100 ms and the measured noise are both far below a store timeout.
Runs on a quiet machine gave ratios of 0.24-1.23 (p99 46-295 ms): the
windows before were sometimes the noisier ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from secretmirror import deliveries
from secretmirror.crypto import Keyring
from secretmirror.runtime import Runtime
from secretmirror.settings import AwsStoreSettings, FileStoreSettings
from secretmirror.stores.aws import AwsStore
from secretmirror.stores.base import Entry, StoreContext
from secretmirror.stores.file import FileStore
from tests.conftest import ADMIN_TOKEN, Api
from tests.daemon_proc import DaemonProcess, store_env
from tests.faultproxy import ThreadedFaultProxy
from tests.load import open_loop, quantile
from tests.moto import MotoServer, aws_settings
from tests.openbao import OpenBao, bao_settings
from tests.prometheus import histogram_buckets, histogram_delta, histogram_quantile, http
from tests.test_replication import until, worker
from tests.test_replication_e2e import deployment_id

pytestmark = pytest.mark.acceptance

#: Creates per second through the API, open loop (sent on schedule, answered or not).
RATE = 15.0
WARMUP_S = 5.0
WINDOW_S = 30.0
POLL_S = 0.02
RATIO = 1.2
SLACK_S = 0.1
#: The targets measured (the blackholed ``cut`` is not).
MEASURED = ("backup", "files", "vault", "team")


def mirror_env(name: str, fields: dict[str, Any]) -> dict[str, str]:
    return store_env(f"mirrors__{name}", fields)


def p99(values: list[float]) -> float:
    return quantile(values, 0.99)


class Latency:
    """Commit-to-applied per (secret, target), from the API's answer to the applied row."""

    def __init__(self, dsn: str, locations: dict[str, str]) -> None:
        self.dsn = dsn
        self.target_of = {location: name for name, location in locations.items()}
        self.committed: dict[str, tuple[float, str]] = {}  # secret id -> (answered at, window)
        self.waiting: dict[str, set[str]] = {}  # secret id -> targets not yet seen applied
        self.samples: dict[str, dict[str, list[float]]] = {}  # window -> target -> seconds
        self.polls = 0
        #: window -> target -> (committed at, seconds), in the order seen.
        self.order: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def committed_now(self, secret_id: str, window: str) -> None:
        self.committed[secret_id] = (time.monotonic(), window)
        self.waiting[secret_id] = set(self.target_of)

    async def run(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not stop.is_set():
                asked = time.monotonic()
                ids = [uuid.UUID(sid) for sid in self.waiting]
                if ids:
                    rows = await conn.fetch(
                        "SELECT target, secret_id::text AS sid FROM deliveries"
                        " WHERE secret_id = ANY($1::uuid[]) AND target = ANY($2::text[])"
                        " AND applied_version >= 1",
                        ids,
                        list(self.target_of),
                    )
                    self.polls += 1
                    for row in rows:
                        left = self.waiting.get(row["sid"])
                        if left is None or row["target"] not in left:
                            continue
                        left.discard(row["target"])
                        at, window = self.committed[row["sid"]]
                        target = self.target_of[row["target"]]
                        by_target = self.samples.setdefault(window, {})
                        by_target.setdefault(target, []).append(max(asked - at, 0.0))
                        in_order = self.order.setdefault(window, {}).setdefault(target, [])
                        in_order.append((at, max(asked - at, 0.0)))
                        if not left:
                            del self.waiting[row["sid"]]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
        finally:
            await conn.close()


async def steady_creates(
    session: aiohttp.ClientSession,
    url: str,
    latency: Latency,
    window: str,
    seconds: float,
    created: dict[str, str],
) -> int:
    """``RATE`` creates per second for ``seconds``, each sent on schedule; the number sent."""
    failures: list[str] = []

    async def one(n: int) -> None:
        name = f"iso-{window}-{n}-{secrets.token_hex(3)}"
        body = {"name": name, "values": {"n": str(n), "v": secrets.token_hex(8)}}
        async with session.post(f"{url}/api/v1/secrets", json=body) as resp:
            if resp.status != 201:
                failures.append(f"{resp.status}")
                return
            secret_id = str((await resp.json())["id"])
        latency.committed_now(secret_id, window)
        created[secret_id] = name

    count = int(seconds * RATE)
    await open_loop(one, RATE, count)
    assert not failures, f"{len(failures)} creates failed: {failures[:5]}"
    return count


def scrape(url: str) -> str:
    """The daemon's /metrics exposition."""
    return http("GET", url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})[
        1
    ].decode()


def histogram_p99(before: str, after: str, target: str) -> float | None:
    """The p99 of ``target``'s commit-to-applied observations between two scrapes."""
    name, labels = "secretmirror_replication_latency_seconds", {"target": target}
    buckets = [histogram_buckets(text, name, labels) for text in (before, after)]
    return histogram_quantile(histogram_delta(*buckets), 0.99)


async def status(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session,
        session.get(f"{url}/admin/v1/status") as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


async def wait_drained(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = await status(url)
        if all(t["pending"] == 0 for t in body["replication"].values()):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"not drained in {timeout_s:g} s: {body['replication']}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def opened(store: Any) -> AsyncIterator[Any]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def listing(store: Any) -> dict[str, Entry]:
    return {entry.secret_id: entry async for entry in store.list()}


async def test_a_blackholed_mirror_never_delays_the_others(
    tmp_path: Path,
    database: str,
    encryption_key: str,
    moto: MotoServer,
    openbao: OpenBao,
) -> None:
    run = uuid.uuid4().hex[:8]
    team_prefix, cut_prefix = f"smt-iso-{run}/team/", f"smt-iso-{run}/cut/"
    with ThreadedFaultProxy("127.0.0.1", moto.port) as proxy:
        env = {
            "SECRETMIRROR_DATABASE_URL": database,
            "SECRETMIRROR_ENCRYPTION_KEYS": encryption_key,
            "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
            **store_env("backup", {"type": "file", "path": tmp_path / "backup"}),
            **mirror_env("files", {"type": "file", "path": tmp_path / "files"}),
            **mirror_env(
                "vault", {"type": "hashicorp", **bao_settings(openbao, f"smt-iso-{run}/")}
            ),
            **mirror_env("team", {"type": "aws", **aws_settings(moto.endpoint_url, team_prefix)}),
            **mirror_env("cut", {"type": "aws", **aws_settings(proxy.url, cut_prefix)}),
        }
        daemon = DaemonProcess(
            env, tmp_path / "data", tmp_path / "daemon.log", drop_env=("SECRETMIRROR_", "AWS_")
        )
        await asyncio.to_thread(daemon.start, 60.0)
        try:
            await _measure(daemon, database, encryption_key, tmp_path, proxy, cut_prefix)
        finally:
            proxy.pass_through()  # never leave the daemon's calls hanging at its shutdown
            await asyncio.to_thread(daemon.stop)


async def _measure(
    daemon: DaemonProcess,
    database: str,
    encryption_key: str,
    tmp_path: Path,
    proxy: ThreadedFaultProxy,
    cut_prefix: str,
) -> None:
    stores = (await status(daemon.url))["stores"]
    latency = Latency(database, {name: stores[name]["location"] for name in MEASURED})
    created: dict[str, str] = {}
    stop = asyncio.Event()
    poller = asyncio.create_task(latency.run(stop))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    scrapes: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            # Warm-up: first connections, moto's backend, OpenBao's mount; then settle.
            await steady_creates(session, daemon.url, latency, "warmup", WARMUP_S, created)
            await wait_drained(daemon.url, 60)
            scrapes["start"] = await asyncio.to_thread(scrape, daemon.url)
            await steady_creates(session, daemon.url, latency, "before", WINDOW_S, created)
            scrapes["before"] = await asyncio.to_thread(scrape, daemon.url)
            await asyncio.to_thread(proxy.blackhole)
            blackholed_at = time.monotonic()
            await steady_creates(session, daemon.url, latency, "during", WINDOW_S, created)
            scrapes["during"] = await asyncio.to_thread(scrape, daemon.url)
            cut_during = (await status(daemon.url))["replication"]["cut"]
            # The blackhole lasted the whole window (30 s) before the heal.
            assert time.monotonic() - blackholed_at >= WINDOW_S - 0.5
            await asyncio.to_thread(proxy.pass_through)
            drained = await wait_drained(daemon.url, 180)
    finally:
        # Every sample of the windows is in once the targets drained; stop polling.
        stop.set()
        await poller

    print(f"\ncut during the blackhole: {cut_during}; polls {latency.polls}")
    for window in ("before", "during"):
        for target in MEASURED:
            got = latency.samples.get(window, {}).get(target, [])
            expected = int(WINDOW_S * RATE)
            # Every create of the window was applied to every measured target and seen.
            assert len(got) == expected, (window, target, len(got), expected)
    windows = ("before", "during")
    for target in MEASURED:
        before = p99(latency.samples["before"][target])
        during = p99(latency.samples["during"][target])
        # The machine's own noise: how far apart the p99s of the two halves of the window
        # before are (same store, same load, no fault).
        by_commit = [seconds for _, seconds in sorted(latency.order["before"][target])]
        half = len(by_commit) // 2
        noise = abs(p99(by_commit[:half]) - p99(by_commit[half:]))
        hist = [
            histogram_p99(scrapes[a], scrapes[b], target)
            for a, b in (("start", "before"), ("before", "during"))
        ]
        print(
            f"{target:>6}: p99 before {before * 1000:7.1f} ms, during {during * 1000:7.1f} ms,"
            f" ratio {during / max(before, 1e-9):.2f}, noise {noise * 1000:.1f} ms; p50"
            f" {[round(quantile(latency.samples[w][target], 0.5) * 1000, 1) for w in windows]} ms;"
            " histogram p99"
            f" {[None if h is None else round(h * 1000, 1) for h in hist]} ms"
        )
        assert during <= RATIO * before + max(SLACK_S, noise), (target, before, during, noise)
    # The blackholed mirror really was cut off: work piled up during the window.
    assert cut_during["pending"] > 0
    # After the heal: nothing pending or dead anywhere, and the cut mirror holds everything.
    assert all(t["dead"] == 0 for t in drained["replication"].values()), drained["replication"]
    keyring = Keyring([base64.b64decode(encryption_key)])
    ctx = StoreContext(await deployment_id(database), keyring)
    cut_settings = AwsStoreSettings(**aws_settings(proxy.url, cut_prefix))
    async with (
        opened(AwsStore(cut_settings, ctx)) as cut,
        opened(FileStore(FileStoreSettings(path=tmp_path / "files"), ctx)) as files,
    ):
        in_cut, in_files = await listing(cut), await listing(files)
        assert set(in_cut) == set(created)
        assert {k: (e.version, e.hash, e.deleted) for k, e in in_cut.items()} == {
            k: (e.version, e.hash, e.deleted) for k, e in in_files.items()
        }
        for secret_id in list(created)[:: len(created) // 10]:
            got, want = await cut.get(secret_id), await files.get(secret_id)
            assert got is not None
            assert want is not None
            assert got.values == want.values


# -- a mirror whose store fails at once -----------------------------------------------------

POLL_INTERVAL_S = 0.5


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    return {
        "mirrors": {
            "files": {"type": "file", "path": str(tmp_path / "files")},
            "gone": {"type": "file", "path": str(tmp_path / "gone")},
        },
        "replication": {
            "poll_interval_s": POLL_INTERVAL_S,
            "backoff_initial_s": 0.02,
            "backoff_max_s": 0.05,
        },
    }


async def test_a_store_failing_at_once_gets_one_probe_per_poll(
    api: Api, runtime: Runtime, tmp_path: Path
) -> None:
    """A mirror whose store refuses every call at once (here its directory replaced by a
    plain file: ENOTDIR) is probed once per poll interval, not worked through its whole
    backlog back to back (a storm of failing attempts that costs the worker, the
    database and the other mirrors), and the other mirror keeps flowing."""
    gone = tmp_path / "gone"
    gone.rename(tmp_path / "gone.away")
    gone.write_text("not a directory\n")
    key = runtime.key_of("gone")
    async with worker(runtime):
        ids = [(await api.create(f"s-{n}", {"n": str(n)}))["id"] for n in range(40)]

        async def files_drained() -> bool:
            status = await deliveries.status(runtime.pool, runtime.target_keys)
            return status["files"].pending == 0

        await until(files_drained)

        # Once the worker has seen the store down, and one poll more: attempts of the first
        # pass still in flight when it did are not counted as probes.
        async def gone_down() -> bool:
            return not runtime.mirrors["gone"].up

        await until(gone_down)
        await asyncio.sleep(POLL_INTERVAL_S)
        attempts_so_far = "SELECT coalesce(sum(attempts), 0) FROM deliveries WHERE target = $1"
        before = await runtime.pool.fetchval(attempts_so_far, key)
        started = time.monotonic()
        await asyncio.sleep(4 * POLL_INTERVAL_S)
        attempts = await runtime.pool.fetchval(attempts_so_far, key) - before
        took = time.monotonic() - started
    # Once the worker has seen the store down: a probe per poll interval, never one per
    # pending delivery (40 here). Counted over a measured window only: counting from the
    # start added however long the creates took on a loaded machine, and failed CI once.
    assert runtime.mirrors["gone"].up is False
    assert before >= 1
    assert 1 <= attempts <= took / POLL_INTERVAL_S + 2, attempts
    assert len(ids) == 40
