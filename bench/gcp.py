"""The GCP benchmark: a real daemon replicating to the Secret Manager fake, beside the SDK.

Everything runs on 127.0.0.1: PostgreSQL (``pgserver``, or fresh databases on
``SECRETMIRROR_BENCH_DATABASE_URL``), the Secret Manager fake
(``tests/gcpfake.py``) in a process of its own (response checking off; request
checking, routing by the discovery document and token checks on, as in the
tests), and ``secretmirror serve`` subprocesses (sql primary in the main
database, ``gcp`` backup on the fake with a throwaway service-account key,
configured only through ``SECRETMIRROR_*`` variables, the scheduled verify
off). Phases, in one run, each figure beside its raw limit:

1. **raw**: a bare write loop of the official SDK (``google-cloud-secret-manager``,
   REST transport, one client per thread, ``replication.concurrency`` = 16
   threads): ``add_secret_version`` on pre-created secrets for ``RAW_S``
   seconds, right before and right after the unlimited phase; the limit is
   the mean of the two (the machine is shared: bracketing the phase follows
   its load; both rates are recorded).
2. **unlimited**: a daemon with ``max_writes_per_s`` = 100000. N secrets are
   created through the API and replicated (first writes), then each is
   PATCHed once; the write calls the fake served while the updates drained
   (its call log: the time from the first to the last write) give writes/s,
   and the status ``applied`` counter gives changes/s.
3. **limited**: a daemon at the default ``max_writes_per_s`` (8); a burst of
   creates far above what 8 writes/s can carry; writes/s at the fake while it
   drains, against the limit.

Targets (issue 7): limited writes/s >= 90% of 8; unlimited writes/s >= 80% of
the SDK loop's. A measurement, not a test: targets are recorded as pass/miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench._common import machine_info, machine_load, now_iso, run_standalone
from bench.api import ADMIN_TOKEN, BenchPostgres, Daemon, values_for, with_database
from secretmirror.model import canonical

NAME = "gcp"
REPO = Path(__file__).resolve().parent.parent
SECRETS = int(os.environ.get("SECRETMIRROR_BENCH_GCP_SECRETS", "1500"))
LIMITED_SECRETS = int(os.environ.get("SECRETMIRROR_BENCH_GCP_LIMITED_SECRETS", "100"))
CONCURRENCY = 16
API_CLIENTS = 32
RAW_S = float(os.environ.get("SECRETMIRROR_BENCH_GCP_RAW_S", "6"))
DEFAULT_WRITES_PER_S = 8.0
UNLIMITED_WRITES_PER_S = 100_000.0
DRAIN_TIMEOUT_S = 300.0
PROJECT = "smbench-project"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class FakeProcess:
    """``python -m tests.gcpfake`` in a subprocess: its URL, a key file, its call statistics."""

    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gcpfake", "--key-dir", str(workdir)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Secret Manager fake did not start")
        started = json.loads(line)
        self.url: str = started["url"]
        self.key_file: str = started["key_file"]

    async def stats(self, since: int = 0) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/_fake/stats", params={"since": str(since)}) as resp,
        ):
            found: dict[str, Any] = await resp.json()
            return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class GcpDaemon(Daemon):
    """``bench.api.Daemon`` with a gcp backup on the fake and the verify schedule off."""

    def __init__(self, dsn: str, workdir: Path, fake: FakeProcess, writes_per_s: float | None):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(dsn, workdir)
        self.extra = {
            "SECRETMIRROR_BACKUP__TYPE": "gcp",
            "SECRETMIRROR_BACKUP__PROJECT_ID": PROJECT,
            "SECRETMIRROR_BACKUP__ENDPOINT_URL": fake.url,
            "SECRETMIRROR_BACKUP__AUTH_METHOD": "service-account",
            "SECRETMIRROR_BACKUP__SERVICE_ACCOUNT_FILE": fake.key_file,
            "SECRETMIRROR_BACKUP__NAME_PREFIX": f"b{uuid.uuid4().hex[:8]}-",
            "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
        }
        if writes_per_s is not None:
            self.extra["SECRETMIRROR_BACKUP__MAX_WRITES_PER_S"] = str(writes_per_s)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
        env.update(
            SECRETMIRROR_DATABASE_URL=self.dsn,
            SECRETMIRROR_DATA_DIR=str(self.workdir / "data"),
            SECRETMIRROR_LISTEN=f"127.0.0.1:{self.port}",
            SECRETMIRROR_ADMIN_TOKEN=ADMIN_TOKEN,
            SECRETMIRROR_ENCRYPTION_KEYS=self.key,
            **self.extra,
        )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "secretmirror", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


# -- the SDK's bare write loop ---------------------------------------------------------


def _sdk_client(fake: FakeProcess) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(fake.key_file, scopes=[SCOPE])
    return secretmanager.SecretManagerServiceClient(
        credentials=creds, transport="rest", client_options=ClientOptions(api_endpoint=fake.url)
    )


def sdk_write_loop(fake: FakeProcess, seconds: float, threads: int) -> dict[str, Any]:
    """``add_secret_version`` from ``threads`` SDK clients for ``seconds``: calls per second."""
    payload = canonical(values_for(0))
    clients = [_sdk_client(fake) for _ in range(threads)]
    names = []
    for client in clients:
        created = client.create_secret(
            request={
                "parent": f"projects/{PROJECT}",
                "secret_id": f"raw-{uuid.uuid4().hex[:12]}",
                "secret": {"replication": {"automatic": {}}},
            }
        )
        names.append(created.name)
        client.add_secret_version(request={"parent": created.name, "payload": {"data": payload}})
    counts = [0] * threads
    errors = [0] * threads
    go = threading.Event()
    deadline = [0.0]

    def loop(i: int) -> None:
        go.wait()
        while time.monotonic() < deadline[0]:
            try:
                clients[i].add_secret_version(
                    request={"parent": names[i], "payload": {"data": payload}}
                )
                counts[i] += 1
            except Exception:
                errors[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    started = time.monotonic()
    deadline[0] = started + seconds
    go.set()
    for worker in workers:
        worker.join()
    took = time.monotonic() - started
    return {
        "threads": threads,
        "seconds": round(took, 3),
        "calls": sum(counts),
        "errors": sum(errors),
        "writes_per_s": round(sum(counts) / took, 1),
    }


# -- replication phases -----------------------------------------------------------------


async def new_database(pg: BenchPostgres, name: str) -> str:
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(pg.admin_dsn, name)


async def drop_database(pg: BenchPostgres, name: str) -> None:
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class Api:
    """The daemon's HTTP API with the admin token, at ``API_CLIENTS`` concurrency."""

    def __init__(self, daemon: Daemon) -> None:
        self.url = daemon.base_url
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            connector=aiohttp.TCPConnector(limit=API_CLIENTS),
        )

    async def close(self) -> None:
        await self.session.close()

    async def create_many(self, count: int, tag: str) -> list[str]:
        ids: list[str] = []
        names = iter(range(count))

        async def client() -> None:
            for n in names:
                body = {"name": f"{tag}-{n}", "values": values_for(n)}
                async with self.session.post(f"{self.url}/api/v1/secrets", json=body) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"create answered {resp.status}")
                    ids.append(str((await resp.json())["id"]))

        await asyncio.gather(*(client() for _ in range(API_CLIENTS)))
        return ids

    async def patch_all(self, ids: list[str]) -> None:
        queue = iter(enumerate(ids))

        async def client() -> None:
            for n, sid in queue:
                body = {"values": values_for(n + 1)}
                url = f"{self.url}/api/v1/secrets/{sid}"
                async with self.session.patch(url, json=body) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"patch answered {resp.status}")

        await asyncio.gather(*(client() for _ in range(API_CLIENTS)))

    async def backup_status(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/admin/v1/status") as resp:
            body: dict[str, Any] = await resp.json()
            return dict(body["replication"]["backup"])

    async def wait_applied(self, total: int) -> float:
        """Poll status until ``total`` deliveries are applied and none pending; when it was."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            backup = await self.backup_status()
            if backup["applied"] >= total and backup["pending"] == 0:
                return time.monotonic()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"replication did not drain in {DRAIN_TIMEOUT_S} s")


def write_rate(times: list[float]) -> float | None:
    """Writes per second between the first and the last write the fake served."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


async def replication_phase(
    pg: BenchPostgres,
    fake: FakeProcess,
    workdir: Path,
    *,
    writes_per_s: float | None,
    secrets_n: int,
    update: bool,
) -> dict[str, Any]:
    """One daemon on a fresh database; creates (and, if ``update``, one PATCH each)."""
    db = f"smbench_gcp_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    dsn = await new_database(pg, db)
    daemon = GcpDaemon(dsn, workdir / db, fake, writes_per_s)
    out: dict[str, Any] = {
        "max_writes_per_s": writes_per_s or DEFAULT_WRITES_PER_S,
        "secrets": secrets_n,
    }
    try:
        await asyncio.to_thread(daemon.start)
        await daemon.wait_ready()
        api = Api(daemon)
        try:
            mark = (await fake.stats())["mark"]
            started = time.monotonic()
            ids = await api.create_many(secrets_n, "gcp")
            done = await api.wait_applied(secrets_n)
            stats = await fake.stats(mark)
            out["first_writes"] = _summary(stats, secrets_n, done - started)
            if update:
                mark = stats["mark"]
                started = time.monotonic()
                await api.patch_all(ids)
                done = await api.wait_applied(2 * secrets_n)
                stats = await fake.stats(mark)
                out["updates"] = _summary(stats, secrets_n, done - started)
        finally:
            await api.close()
    finally:
        await asyncio.to_thread(daemon.stop)
        with contextlib.suppress(Exception):
            await drop_database(pg, db)
    return out


def _summary(stats: dict[str, Any], changes: int, took_s: float) -> dict[str, Any]:
    rate = write_rate(stats["write_times"])
    writes = len(stats["write_times"])
    return {
        "changes": changes,
        "seconds": round(took_s, 3),
        "changes_per_s": round(changes / took_s, 1),
        "write_calls": writes,
        "writes_per_change": round(writes / changes, 2),
        "writes_per_s": None if rate is None else round(rate, 1),
        "calls": stats["ops"],
        "throttled": stats["throttled"],
    }


# -- results --------------------------------------------------------------------------


def _check(target: str, measured: float | None, limit: float) -> dict[str, Any]:
    passed = measured is not None and measured >= limit
    return {"target": target, "measured": measured, "pass": passed}


def targets(out: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    limited = out.get("limited", {}).get("first_writes", {}).get("writes_per_s")
    if limited is not None:
        share = round(limited / DEFAULT_WRITES_PER_S, 3)
        found["limited_writes_vs_limit"] = {
            **_check(">= 0.90 of 8 writes/s", share, 0.9),
            "writes_per_s": limited,
            "limit_writes_per_s": DEFAULT_WRITES_PER_S,
        }
    unlimited = out.get("unlimited", {}).get("updates", {}).get("writes_per_s")
    rates = [r["writes_per_s"] for r in out.get("raw", [])]
    raw = round(sum(rates) / len(rates), 1) if rates else None
    if unlimited is not None and raw:
        share = round(unlimited / raw, 3)
        found["unlimited_writes_vs_sdk_loop"] = {
            **_check(">= 0.80 of the SDK's bare write loop", share, 0.8),
            "writes_per_s": unlimited,
            "sdk_writes_per_s": raw,
        }
    return found


def print_summary(out: dict[str, Any]) -> None:
    print(f"\n== {NAME} ==")
    for raw in out.get("raw", []):
        print(
            f"SDK bare add_secret_version loop ({raw['threads']} threads): "
            f"{raw['writes_per_s']} writes/s ({raw['errors']} errors)"
        )
    for phase in ("unlimited", "limited"):
        for step in ("first_writes", "updates"):
            got = out.get(phase, {}).get(step)
            if got:
                print(
                    f"{phase:9} {step:12}: {got['writes_per_s']} writes/s, "
                    f"{got['changes_per_s']} changes/s, {got['writes_per_change']} writes/change"
                )
    for name, target in out.get("targets", {}).items():
        verdict = "pass" if target["pass"] else "MISS"
        print(f"{name}: {target['measured']} ({target['target']}) {verdict}")


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": NAME,
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
        "config": {
            "secrets": SECRETS,
            "limited_secrets": LIMITED_SECRETS,
            "replication_concurrency": CONCURRENCY,
            "api_clients": API_CLIENTS,
            "raw_s": RAW_S,
            "values_bytes": len(canonical(values_for(0))),
            "fake": "tests/gcpfake.py in its own process, response checking off",
        },
        "raw": [],
    }
    pg = BenchPostgres()
    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-gcp-"))
    fake: FakeProcess | None = None
    try:
        fake = FakeProcess(workdir)
        await asyncio.to_thread(pg.start)
        out["raw"].append(await asyncio.to_thread(sdk_write_loop, fake, RAW_S, CONCURRENCY))
        out["unlimited"] = await replication_phase(
            pg, fake, workdir, writes_per_s=UNLIMITED_WRITES_PER_S, secrets_n=SECRETS, update=True
        )
        out["raw"].append(await asyncio.to_thread(sdk_write_loop, fake, RAW_S, CONCURRENCY))
        out["limited"] = await replication_phase(
            pg, fake, workdir, writes_per_s=None, secrets_n=LIMITED_SECRETS, update=False
        )
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"gcp bench failed: {out['error']}", file=sys.stderr)
    finally:
        if fake is not None:
            await asyncio.to_thread(fake.stop)
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    out["targets"] = targets(out)
    print_summary(out)
    return out


if __name__ == "__main__":
    run_standalone(NAME, main)
