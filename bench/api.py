"""The core API benchmark: a real ``secretmirror serve`` subprocess against real PostgreSQL.

What it measures, at 1 and at 32 concurrent clients (one aiohttp ``ClientSession``
whose connection limit is the concurrency), each for a fixed duration:

* ``create``  POST /api/v1/secrets
* ``get``     GET /api/v1/secrets/{id}
* ``update``  PATCH /api/v1/secrets/{id} with new values
* ``list``    GET /api/v1/secrets?limit=100

and, in the same run, the *raw limit*: the SQL work the API does per request,
issued directly with asyncpg over one dedicated connection per client (the same
``sql/queries.sql`` blocks, the same parameter shapes, the same encryption):

* ``create``     ``authenticate`` + ``secret_create`` with canonical JSON, AES-GCM and HMAC
* ``create_sql`` the same statements with a ciphertext computed once (SQL only)
* ``create_no_notify`` ``create`` with the ``pg_notify`` taken out of ``secret_create``:
  what the same work costs without the commit-serialising NOTIFY (see bench/README.md)
* ``get``        ``authenticate`` + ``secret_get_with_value`` + decrypt
* ``get_sql``    the same statements without decrypting
* ``update``     ``authenticate`` + ``secret_get_with_value`` + decrypt + ``secret_change``
* ``list``       ``authenticate`` + ``secret_list`` (limit 101, as the API asks)

It also fills the database to 10,000 secrets through the API and reads the
daemon's RSS (psutil), and records where the CPU went in every phase (daemon,
PostgreSQL, this load generator, everything else on the machine).

PostgreSQL: ``SECRETMIRROR_BENCH_DATABASE_URL`` (a fresh database is created on
that server and dropped afterwards) or a ``pgserver`` instance in a temp dir.
``SECRETMIRROR_BENCH_DURATION_S`` sets the length of each phase (default 5).

A measurement, not a test: targets are recorded as pass/miss and never fail the run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil

from bench._common import (
    latency_summary,
    machine_info,
    machine_load,
    now_iso,
    print_targets,
    run_standalone,
)
from secretmirror import crypto
from secretmirror.crypto import secret_aad
from secretmirror.model import canonical
from secretmirror.queries import Q

NAME = "api"
CONCURRENCY = (1, 32)
DURATION_S = float(os.environ.get("SECRETMIRROR_BENCH_DURATION_S", "5"))
RSS_SECRETS = 10_000
API_OPS = ("create", "get", "update", "list")
RAW_OPS = ("create", "create_sql", "create_no_notify", "get", "get_sql", "update", "list")
#: Which raw variant an API operation is compared with (the same work, encryption included).
RAW_FOR_API = {"create": "create", "get": "get", "update": "update", "list": "list"}

#: The raw variants with no API counterpart, printed below the table.
RAW_EXTRA = {
    "create_sql": "create without crypto",
    "create_no_notify": "create without the NOTIFY",
    "get_sql": "get without decrypting",
}

TARGETS = {
    "api_create_c32_ops_s": (">=", 800.0),
    "api_get_c32_ops_s": (">=", 1500.0),
    "api_create_vs_raw_c32": (">=", 0.30),
    "daemon_rss_after_10k_mib": ("<=", 150.0),
}

#: ``secret_create`` without its NOTIFY: PostgreSQL serialises the commits of notifying
#: transactions (a global lock held through the WAL flush), which defeats group commit.
#: None when ``secret_create`` no longer NOTIFYs this way (the variant is then skipped).
_NOTIFY_CALL = "pg_notify('secretmirror_deliveries', '')"
SECRET_CREATE_NO_NOTIFY = (
    Q.secret_create.replace(_NOTIFY_CALL, "NULL::void") if _NOTIFY_CALL in Q.secret_create else None
)

ADMIN_TOKEN = "smt_bench-admin-" + secrets.token_urlsafe(24)
_PASSWORDS = [secrets.token_urlsafe(24) for _ in range(512)]


class OpError(Exception):
    """A request that did not get the answer it should have."""


def values_for(n: int) -> dict[str, str]:
    """A realistic small secret (~110 bytes of canonical JSON)."""
    return {
        "username": f"svc-bench-{n % 1000}",
        "password": _PASSWORDS[n % len(_PASSWORDS)],
        "host": "db.internal.example:5432",
    }


# -- PostgreSQL ------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


class BenchPostgres:
    """A pgserver in a temp dir, or the server SECRETMIRROR_BENCH_DATABASE_URL names."""

    def __init__(self) -> None:
        self._server: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.external = os.environ.get("SECRETMIRROR_BENCH_DATABASE_URL")
        self.admin_dsn = ""
        self.database = f"smbench_{os.getpid()}_{secrets.token_hex(3)}"
        self._created = False

    def start(self) -> str:
        """Start (or reach) the server and return the DSN of a fresh database on it."""
        if self.external:
            self.admin_dsn = self.external
        else:
            import pgserver

            self._tmp = tempfile.TemporaryDirectory(prefix="sm-bench-pg-")
            self._server = pgserver.get_server(Path(self._tmp.name) / "pg", cleanup_mode="stop")
            self.admin_dsn = self._server.get_uri()
        return with_database(self.admin_dsn, self.database)

    async def create_database(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
            self._created = True
        finally:
            await conn.close()

    async def drop_database(self) -> None:
        if not self._created:
            return
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    @property
    def postmaster_pid(self) -> int | None:
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None
        if self._tmp is not None:
            with contextlib.suppress(Exception):
                self._tmp.cleanup()
            self._tmp = None


# -- the daemon --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Daemon:
    """``secretmirror serve`` as a subprocess, configured only through the environment."""

    def __init__(self, dsn: str, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.shutdown_s: float | None = None
        self.exit_code: int | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")}
        env.update(
            SECRETMIRROR_DATABASE_URL=self.dsn,
            SECRETMIRROR_DATA_DIR=str(self.workdir / "data"),
            SECRETMIRROR_LISTEN=f"127.0.0.1:{self.port}",
            SECRETMIRROR_ADMIN_TOKEN=ADMIN_TOKEN,
            SECRETMIRROR_ENCRYPTION_KEYS=self.key,
        )
        env.update(self.extra_env)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "secretmirror", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def wait_ready(self, timeout_s: float = 60.0) -> float:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < timeout_s:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the daemon exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.base_url + "/readyz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the daemon was not ready in {timeout_s} s:\n{self.log_tail()}")

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.shutdown_s = round(time.monotonic() - started, 3)
        self.exit_code = self.proc.returncode


# -- CPU accounting ----------------------------------------------------------------


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class CpuMeter:
    """CPU seconds spent by the daemon, PostgreSQL, this process and the rest of the machine."""

    def __init__(self, daemon_pid: int, postmaster_pid: int | None) -> None:
        self.daemon = psutil.Process(daemon_pid)
        self.client = psutil.Process()
        self.postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None

    def _postgres(self) -> dict[int, float] | None:
        if self.postmaster is None:
            return None
        found: dict[int, float] = {}
        for proc in [self.postmaster, *self.postmaster.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                found[proc.pid] = _cpu_s(proc)
        return found

    def snapshot(self) -> dict[str, Any]:
        system = psutil.cpu_times()
        idle = system.idle + getattr(system, "iowait", 0.0)
        total = sum(
            getattr(system, f, 0.0)
            for f in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        )
        return {
            "daemon": _cpu_s(self.daemon),
            "daemon_sys": float(self.daemon.cpu_times().system),
            "client": _cpu_s(self.client),
            "postgres": self._postgres(),
            "busy": total - idle,
        }

    @staticmethod
    def diff(before: dict[str, Any], after: dict[str, Any], wall_s: float) -> dict[str, Any]:
        daemon = after["daemon"] - before["daemon"]
        client = after["client"] - before["client"]
        postgres = None
        if after["postgres"] is not None and before["postgres"] is not None:
            postgres = sum(
                cpu - before["postgres"].get(pid, 0.0) for pid, cpu in after["postgres"].items()
            )
        busy = after["busy"] - before["busy"]
        other = busy - daemon - client - (postgres or 0.0)
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(wall_s, 3),
            "daemon_s": round(daemon, 3),
            "daemon_sys_s": round(after["daemon_sys"] - before["daemon_sys"], 3),
            "postgres_s": None if postgres is None else round(postgres, 3),
            "client_s": round(client, 3),
            "other_s": round(max(other, 0.0), 3) if postgres is not None else None,
            "machine_busy_fraction": round(busy / (wall_s * cores), 3) if wall_s else None,
        }


# -- phases --------------------------------------------------------------------------

Op = Callable[[int, int], Awaitable[None]]


async def run_phase(
    label: str,
    concurrency: int,
    op: Op,
    meter: CpuMeter,
    *,
    duration_s: float | None = DURATION_S,
    max_ops: int | None = None,
) -> dict[str, Any]:
    """Run ``op(worker, n)`` from ``concurrency`` workers for a duration or a count."""
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    issued = itertools.count()
    deadline = time.perf_counter() + duration_s if duration_s is not None else float("inf")

    async def worker(index: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < deadline:
            if max_ops is not None and next(issued) >= max_ops:
                return
            started = time.perf_counter()
            try:
                await op(index, n)
            except (OpError, aiohttp.ClientError, asyncpg.PostgresError, OSError) as exc:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}"[:300])
                if errors > 200 and errors > len(latencies):
                    return  # everything fails: no point hammering for the whole phase
            else:
                latencies.append(time.perf_counter() - started)
            n += 1

    before = meter.snapshot()
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    cpu = CpuMeter.diff(before, meter.snapshot(), wall)
    ops = len(latencies)
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "ops": ops,
        "errors": errors,
        "seconds": round(wall, 3),
        "ops_per_s": round(ops / wall, 1) if wall > 0 else 0.0,
        **latency_summary(latencies),
        "cpu": cpu,
    }
    if ops:
        result["cpu_ms_per_op"] = {
            who: round(cpu[f"{who}_s"] * 1000 / ops, 3)
            for who in ("daemon", "postgres", "client")
            if cpu[f"{who}_s"] is not None
        }
    if samples:
        result["error_samples"] = samples
    print(
        f"  {label:<18} c={concurrency:<3} {result['ops_per_s']:>9.1f} ops/s"
        f"  p50 {result['p50_ms'] or 0:>7.2f} ms  p99 {result['p99_ms'] or 0:>7.2f} ms"
        f"  errors {errors}",
        flush=True,
    )
    return result


class ApiOps:
    """The four API operations over one ClientSession (connection limit = concurrency)."""

    def __init__(self, base_url: str, concurrency: int, ids: list[str], run_tag: str) -> None:
        self.base = base_url
        self.concurrency = concurrency
        self.ids = ids
        self.run_tag = run_tag
        self.seq = itertools.count()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )

    async def close(self) -> None:
        await self.session.close()

    async def create(self, _worker: int, _n: int) -> None:
        n = next(self.seq)
        body = {"name": f"bench-{self.run_tag}-{n}", "values": values_for(n)}
        async with self.session.post(self.base + "/api/v1/secrets", json=body) as resp:
            data = await resp.read()
            if resp.status != 201:
                raise OpError(f"create: {resp.status} {data[:200]!r}")
        self.ids.append(json.loads(data)["id"])

    async def get(self, _worker: int, _n: int) -> None:
        secret_id = self.ids[random.randrange(len(self.ids))]
        async with self.session.get(f"{self.base}/api/v1/secrets/{secret_id}") as resp:
            data = await resp.read()
            if resp.status != 200:
                raise OpError(f"get: {resp.status} {data[:200]!r}")

    async def update(self, worker: int, n: int) -> None:
        # Each worker walks its own stride of ids, so no two clients race on one secret.
        secret_id = self.ids[(worker + n * self.concurrency) % len(self.ids)]
        body = {"values": {"password": _PASSWORDS[(worker + n) % len(_PASSWORDS)]}}
        async with self.session.patch(f"{self.base}/api/v1/secrets/{secret_id}", json=body) as r:
            data = await r.read()
            if r.status != 200:
                raise OpError(f"update: {r.status} {data[:200]!r}")

    async def list(self, _worker: int, _n: int) -> None:
        async with self.session.get(self.base + "/api/v1/secrets?limit=100") as resp:
            data = await resp.read()
            if resp.status != 200:
                raise OpError(f"list: {resp.status} {data[:200]!r}")


class RawOps:
    """The API's SQL work per request, straight through asyncpg, one connection per client."""

    def __init__(
        self,
        conns: list[asyncpg.Connection],
        keyring: crypto.Keyring,
        hash_key: bytes,
        deployment_id: str,
        ids: list[str],
        run_tag: str,
    ) -> None:
        self.conns = conns
        self.concurrency = len(conns)
        self.keyring = keyring
        self.hash_key = hash_key
        self.deployment_id = deployment_id
        self.ids = ids
        self.run_tag = run_tag
        self.seq = itertools.count()
        self.node = f"bench:{os.getpid()}"
        # For create_sql: one ciphertext and hash computed once (SQL cost only).
        blob = canonical(values_for(0))
        self.fixed_snapshot = keyring.encrypt(blob, secret_aad(str(uuid.uuid4()), 1))
        self.fixed_hash = crypto.content_hash(hash_key, "fixed", blob)

    async def _auth(self, conn: asyncpg.Connection) -> Any:
        row = await conn.fetchrow(Q.authenticate, crypto.token_hash(ADMIN_TOKEN))
        if row is None:
            raise OpError("authenticate found no token")
        return row

    async def _create(self, worker: int, encrypt: bool, sql: str = Q.secret_create) -> None:
        conn = self.conns[worker]
        principal = await self._auth(conn)
        n = next(self.seq)
        secret_id = str(uuid.uuid4())
        if encrypt:
            blob = canonical(values_for(n))
            snapshot = self.keyring.encrypt(blob, secret_aad(secret_id, 1))
            content_hash = crypto.content_hash(self.hash_key, secret_id, blob)
        else:
            snapshot, content_hash = self.fixed_snapshot, self.fixed_hash
        args = Q.args(
            Q.secret_create,
            secret_id=secret_id,
            name=f"bench-raw-{self.run_tag}-{n}",
            owner=principal["user_id"],
            private=False,
            hash=content_hash,
            actor=principal["name"],
            snapshot=snapshot,
            outbox_deployment=self.deployment_id,  # the sql primary in the main database
            targets=[],  # no backup
            inline=[],
            token=self.node,
            lease_s=6.0,
        )
        await conn.fetchrow(sql, *args)

    async def create(self, worker: int, _n: int) -> None:
        await self._create(worker, encrypt=True)

    async def create_sql(self, worker: int, _n: int) -> None:
        await self._create(worker, encrypt=False)

    async def create_no_notify(self, worker: int, _n: int) -> None:
        assert SECRET_CREATE_NO_NOTIFY is not None
        await self._create(worker, encrypt=True, sql=SECRET_CREATE_NO_NOTIFY)

    async def _get(self, worker: int, secret_id: str, decrypt: bool) -> Any:
        conn = self.conns[worker]
        await self._auth(conn)
        row = await conn.fetchrow(Q.secret_get_with_value, uuid.UUID(secret_id), self.deployment_id)
        if row is None:
            raise OpError("get: no such secret")
        if decrypt:
            json.loads(
                self.keyring.decrypt(row["ciphertext"], secret_aad(secret_id, row["version"]))
            )
        return row

    async def get(self, worker: int, _n: int) -> None:
        await self._get(worker, self.ids[random.randrange(len(self.ids))], decrypt=True)

    async def get_sql(self, worker: int, _n: int) -> None:
        await self._get(worker, self.ids[random.randrange(len(self.ids))], decrypt=False)

    async def update(self, worker: int, n: int) -> None:
        conn = self.conns[worker]
        principal = await self._auth(conn)
        secret_id = self.ids[(worker + n * self.concurrency) % len(self.ids)]
        row = await conn.fetchrow(Q.secret_get_with_value, uuid.UUID(secret_id), self.deployment_id)
        if row is None:
            raise OpError("update: no such secret")
        current = json.loads(
            self.keyring.decrypt(row["ciphertext"], secret_aad(secret_id, row["version"]))
        )
        current["password"] = _PASSWORDS[(worker + n) % len(_PASSWORDS)]
        blob = canonical(current)
        version = row["version"] + 1
        snapshot = self.keyring.encrypt(blob, secret_aad(secret_id, version))
        args = Q.args(
            Q.secret_change,
            secret_id=secret_id,
            version_read=row["version"],
            name=row["name"],
            private=row["private"],
            hash=crypto.content_hash(self.hash_key, secret_id, blob),
            kind="update",
            actor=principal["name"],
            snapshot=snapshot,
            outbox_deployment=self.deployment_id,
            targets=[],
            inline=[],
            token=self.node,
            lease_s=6.0,
        )
        changed = await conn.fetchrow(Q.secret_change, *args)
        if changed is None:
            raise OpError("update: lost a race")

    async def list(self, worker: int, _n: int) -> None:
        conn = self.conns[worker]
        principal = await self._auth(conn)
        await conn.fetch(Q.secret_list, principal["user_id"], None, None, None, None, None, 101)


# -- the run ---------------------------------------------------------------------------


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


class RssSampler:
    """The daemon's RSS every 0.25 s, for the peak."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.daemon.rss_bytes())
            await asyncio.sleep(0.25)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def _server_facts(conn: asyncpg.Connection) -> dict[str, Any]:
    facts: dict[str, Any] = {"version": await conn.fetchval("SHOW server_version")}
    for setting in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
        facts[setting] = await conn.fetchval(f"SHOW {setting}")
    return facts


async def _secret_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(Q.secret_count)
        return count
    finally:
        await conn.close()


def _check(name: str, measured: float | None) -> dict[str, Any]:
    op, target = TARGETS[name]
    ok = measured is not None and (measured >= target if op == ">=" else measured <= target)
    return {"target": f"{op} {target:g}", "measured": measured, "pass": ok}


async def _measure(pg: BenchPostgres, dsn: str, workdir: Path, out: dict[str, Any]) -> None:
    daemon = Daemon(dsn, workdir)
    out["daemon"] = {"listen": daemon.base_url}
    daemon.start()
    sampler = RssSampler(daemon)
    try:
        out["daemon"]["ready_after_s"] = round(await daemon.wait_ready(), 3)
        out["daemon"]["rss_ready_mib"] = _mib(daemon.rss_bytes())
        sampler.start()
        meter = CpuMeter(daemon.pid, pg.postmaster_pid)

        admin = await asyncpg.connect(dsn)
        try:
            out["postgres"] = await _server_facts(admin)
            deployment = await admin.fetchrow(Q.deployment_get)
        finally:
            await admin.close()
        out["postgres"]["source"] = "external" if pg.external else "pgserver"
        keyring = crypto.Keyring(crypto.parse_keys(daemon.key))
        hash_key = keyring.decrypt(deployment["hash_key"], b"deployment-hash-key")
        run_tag = secrets.token_hex(3)
        ids: list[str] = []

        # 1. Fill to 10,000 secrets through the API at 32 clients, then read the RSS.
        print(f"fill: {RSS_SECRETS} secrets through the API at 32 clients", flush=True)
        fill_ops = ApiOps(daemon.base_url, 32, ids, run_tag + "f")
        try:
            fill = await run_phase(
                "fill(create)", 32, fill_ops.create, meter, duration_s=None, max_ops=RSS_SECRETS
            )
        finally:
            await fill_ops.close()
        await asyncio.sleep(1.0)
        rss: dict[str, Any] = {
            "secrets_at_reading": await _secret_count(dsn),
            "after_10k_mib": _mib(daemon.rss_bytes()),
        }
        out["fill"] = fill
        out["rss"] = rss

        # 2. API and raw phases at each concurrency.
        out["api"], out["raw"] = {}, {}
        for concurrency in CONCURRENCY:
            key = f"c{concurrency}"
            print(f"API at {concurrency} client(s), {DURATION_S:g} s per operation", flush=True)
            api = ApiOps(daemon.base_url, concurrency, ids, f"{run_tag}c{concurrency}")
            results: dict[str, Any] = {}
            try:
                for op in API_OPS:
                    results[op] = await run_phase(f"api {op}", concurrency, getattr(api, op), meter)
                    if op == "get" and concurrency == max(CONCURRENCY):
                        results["db_connections_in_use"] = await _backend_count(dsn)
            finally:
                await api.close()
            out["api"][key] = results

            print(f"raw asyncpg at {concurrency} connection(s)", flush=True)
            conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]
            raw = RawOps(
                conns, keyring, hash_key, deployment["id"], ids, f"{run_tag}c{concurrency}"
            )
            raw_results: dict[str, Any] = {}
            try:
                for op in RAW_OPS:
                    if op == "create_no_notify" and SECRET_CREATE_NO_NOTIFY is None:
                        continue
                    raw_results[op] = await run_phase(
                        f"raw {op}", concurrency, getattr(raw, op), meter
                    )
            finally:
                for conn in conns:
                    await conn.close()
            out["raw"][key] = raw_results

        rss["end_mib"] = _mib(daemon.rss_bytes())
        rss["secrets_at_end"] = await _secret_count(dsn)
        await sampler.stop()
        rss["peak_mib"] = _mib(sampler.peak)
    finally:
        await sampler.stop()
        await asyncio.to_thread(daemon.stop)
        out["daemon"]["shutdown_s"] = daemon.shutdown_s
        out["daemon"]["exit_code"] = daemon.exit_code
        out["daemon"]["log_lines"] = _count_lines(daemon.log_path)


async def _backend_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"
        )
        return count
    finally:
        await conn.close()


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return None


def _ratios(out: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for key in out.get("api", {}):
        api, raw = out["api"][key], out["raw"].get(key, {})
        row: dict[str, Any] = {}
        for op, raw_op in RAW_FOR_API.items():
            if op in api and raw_op in raw and raw[raw_op]["ops_per_s"]:
                row[op] = round(api[op]["ops_per_s"] / raw[raw_op]["ops_per_s"], 3)
        if "create" in api and raw.get("create_sql", {}).get("ops_per_s"):
            row["create_vs_sql_only"] = round(
                api["create"]["ops_per_s"] / raw["create_sql"]["ops_per_s"], 3
            )
        if "create" in api and raw.get("create_no_notify", {}).get("ops_per_s"):
            row["create_vs_no_notify"] = round(
                api["create"]["ops_per_s"] / raw["create_no_notify"]["ops_per_s"], 3
            )
        if "get" in api and raw.get("get_sql", {}).get("ops_per_s"):
            row["get_vs_sql_only"] = round(api["get"]["ops_per_s"] / raw["get_sql"]["ops_per_s"], 3)
        ratios[key] = row
    return ratios


def _others_fraction(out: dict[str, Any]) -> float | None:
    """Share of the machine's CPU that other processes used during the phases (0..1)."""
    other = wall = 0.0
    phases = [out["fill"]] if "fill" in out else []
    for side in ("api", "raw"):
        for results in out.get(side, {}).values():
            phases += [r for r in results.values() if isinstance(r, dict)]
    for phase in phases:
        if phase["cpu"]["other_s"] is None:
            return None
        other += phase["cpu"]["other_s"]
        wall += phase["cpu"]["wall_s"]
    return round(other / (wall * (os.cpu_count() or 1)), 3) if wall else None


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    c32 = out.get("api", {}).get("c32", {})
    return {
        "api_create_c32_ops_s": _check(
            "api_create_c32_ops_s", c32.get("create", {}).get("ops_per_s")
        ),
        "api_get_c32_ops_s": _check("api_get_c32_ops_s", c32.get("get", {}).get("ops_per_s")),
        "api_create_vs_raw_c32": _check(
            "api_create_vs_raw_c32", out.get("ratios", {}).get("c32", {}).get("create")
        ),
        "daemon_rss_after_10k_mib": _check(
            "daemon_rss_after_10k_mib", out.get("rss", {}).get("after_10k_mib")
        ),
    }


def print_summary(out: dict[str, Any]) -> None:
    def num(value: Any, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    print()
    print(
        f"{'op':<8}{'c':>4} | {'API ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'err':>5} |"
        f" {'raw ops/s':>10}{'p50 ms':>9}{'p99 ms':>9} | {'API/raw':>7}"
        f" | {'cpu ms/op: daemon':>17}{'pg':>7}{'client':>8}"
    )
    print("-" * 121)
    for key in out.get("api", {}):
        for op in API_OPS:
            api = out["api"][key].get(op)
            raw = out["raw"].get(key, {}).get(RAW_FOR_API[op], {})
            if api is None:
                continue
            cpu = api.get("cpu_ms_per_op", {})
            print(
                f"{op:<8}{api['concurrency']:>4} | {api['ops_per_s']:>10.1f}"
                f"{num(api['p50_ms'], '{:.2f}'):>9}{num(api['p99_ms'], '{:.2f}'):>9}"
                f"{api['errors']:>5} | {num(raw.get('ops_per_s')):>10}"
                f"{num(raw.get('p50_ms'), '{:.2f}'):>9}{num(raw.get('p99_ms'), '{:.2f}'):>9} |"
                f" {num(out['ratios'].get(key, {}).get(op), '{:.2f}'):>7} |"
                f" {num(cpu.get('daemon'), '{:.3f}'):>17}{num(cpu.get('postgres'), '{:.3f}'):>7}"
                f"{num(cpu.get('client'), '{:.3f}'):>8}"
            )
    for key in out.get("raw", {}):
        for op, what in RAW_EXTRA.items():
            raw = out["raw"][key].get(op)
            if raw:
                print(
                    f"raw {op:<16} c={raw['concurrency']:<3} {raw['ops_per_s']:>9.1f} ops/s"
                    f"  p50 {num(raw['p50_ms'], '{:.2f}')} ms  p99 {num(raw['p99_ms'], '{:.2f}')}"
                    f" ms  ({what})"
                )
    rss = out.get("rss", {})
    print(
        f"daemon RSS: ready {out.get('daemon', {}).get('rss_ready_mib')} MiB,"
        f" after {rss.get('secrets_at_reading')} secrets {rss.get('after_10k_mib')} MiB,"
        f" end {rss.get('end_mib')} MiB, peak {rss.get('peak_mib')} MiB"
    )
    print(
        f"load: start {out['load_start']['loadavg']}  end {out['load_end']['loadavg']};"
        f" other processes used {num(out.get('others_cpu_fraction'), '{:.0%}')} of the CPU"
        " during the phases"
    )
    print_targets(out)


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": NAME,
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
        "config": {
            "concurrency": list(CONCURRENCY),
            "duration_s": DURATION_S,
            "rss_secrets": RSS_SECRETS,
            "values_bytes": len(canonical(values_for(0))),
            "client": "aiohttp, one ClientSession, TCPConnector(limit=concurrency)",
            "raw": "asyncpg, one dedicated connection per client, same Q blocks",
        },
    }
    pg = BenchPostgres()
    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-api-"))
    try:
        dsn = await asyncio.to_thread(pg.start)
        await pg.create_database()
        await _measure(pg, dsn, workdir, out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"api bench failed: {out['error']}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await pg.drop_database()
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    out["ratios"] = _ratios(out)
    out["others_cpu_fraction"] = _others_fraction(out)
    out["targets"] = _targets(out)
    print_summary(out)
    return out


if __name__ == "__main__":
    run_standalone(NAME, main)
