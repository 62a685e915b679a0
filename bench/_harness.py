"""What the bench modules start and drive, on top of the tests' harness (bench/README.md)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import asyncpg
import psutil
from tests.blackbox import encryption_key
from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess, store_env
from tests.moto import REGION, MotoServer, aws_settings, secrets_client
from tests.pg import TestPostgres

from bench._common import latency_summary, rounded

#: Verify neither at start-up nor on a timer: it would list a backup mid-measurement.
VERIFY_OFF = {"SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0"}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_PASSWORDS = [secrets.token_urlsafe(24) for _ in range(512)]


class OpError(Exception):
    """A request that did not get the answer it should have."""


def mib(size: int) -> float:
    """Bytes in MiB, to 0.1."""
    return round(size / 2**20, 1)


def values_for(n: int) -> dict[str, str]:
    """A realistic small secret (~110 bytes of canonical JSON)."""
    return {
        "username": f"svc-bench-{n % 1000}",
        "password": _PASSWORDS[n % len(_PASSWORDS)],
        "host": "db.internal.example:5432",
    }


# -- PostgreSQL and the daemon ---------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres() -> AsyncIterator[Postgres]:
    """A pgserver in a temp dir, or the server ``SECRETMIRROR_BENCH_DATABASE_URL`` names;
    every database made on it is dropped after."""
    pg = await asyncio.to_thread(Postgres)
    try:
        yield pg
    finally:
        for name in pg.names:
            with contextlib.suppress(Exception):
                await pg.drop_database(name)
        await asyncio.to_thread(pg.stop)


class Postgres(TestPostgres):
    def __init__(self) -> None:
        super().__init__("SECRETMIRROR_BENCH_DATABASE_URL")
        self.names: list[str] = []

    async def database(self) -> str:
        """The DSN of a fresh, empty database (the daemon migrates it)."""
        self.names.append(await self.create_database())
        return self.dsn(self.names[-1])


class Daemon(DaemonProcess):
    """``secretmirror serve`` configured only through ``SECRETMIRROR_*`` (the caller's own
    ``SECRETMIRROR_*``, ``AWS_*`` and ``AZURE_*`` left out); ``key`` reuses a key."""

    def __init__(
        self,
        dsn: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        *,
        key: str | None = None,
        label: str = "",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = key or encryption_key()
        self.label = label
        env = {
            "SECRETMIRROR_DATABASE_URL": dsn,
            "SECRETMIRROR_ENCRYPTION_KEYS": self.key,
            **(env or {}),
        }
        drop = ("SECRETMIRROR_", "AWS_", "AZURE_")
        super().__init__(env, workdir / "data", workdir / "daemon.log", drop_env=drop)

    async def ready(self) -> float:
        """Start; the seconds until ``/readyz`` answered."""
        return await asyncio.to_thread(self.start, 60.0)

    async def close(self) -> None:
        await asyncio.to_thread(self.stop)

    def stopped(self) -> dict[str, Any]:
        """How the last ``close`` went."""
        return {"shutdown_s": self.shutdown_s, "exit_code": self.exit_code}

    def rss_mib(self) -> float:
        return mib(psutil.Process(self.pid).memory_info().rss)

    def log_events(self, names: tuple[str, ...]) -> dict[str, int]:
        """How often each structlog ``event`` in ``names`` appears in the log."""
        found = dict.fromkeys(names, 0)
        with contextlib.suppress(OSError), self.log_path.open("rb") as handle:
            for line in handle:
                if line.startswith(b"{"):
                    with contextlib.suppress(ValueError):
                        event = json.loads(line).get("event")
                        if event in found:
                            found[event] += 1
        return found


@contextlib.asynccontextmanager
async def serving(daemon: Daemon, clients: int = 64) -> AsyncIterator[Api]:
    """Start ``daemon`` and wait until it is ready: a client of its API (connection limit
    ``clients``); on the way out the client closes and the daemon stops."""
    api = Api(daemon.url, clients)
    try:
        await daemon.ready()
        yield api
    finally:
        await api.close()
        await daemon.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """``query``'s rows on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def fetchval(dsn: str, query: str, *args: Any) -> Any:
    """The first column of ``query``'s first row, on a connection of its own."""
    rows = await fetch(dsn, query, *args)
    return rows[0][0] if rows else None


@contextlib.asynccontextmanager
async def every(interval_s: float, sample: Callable[[], object]) -> AsyncIterator[None]:
    """Call ``sample`` (a plain or an async function) at once and every ``interval_s`` while
    the block runs; the last call has ended when the block is left."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            if inspect.isawaitable(called := sample()):
                await called
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task


class Stoppable(Protocol):
    """A server a test fixture started (moto, bao, a fake): ``stop`` ends it."""

    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


@contextlib.asynccontextmanager
async def running(start: Callable[..., S], *args: Any, **kwargs: Any) -> AsyncIterator[S]:
    """A server process made by ``start(*args, **kwargs)`` in a thread, stopped (in a thread)
    on the way out."""
    server = await asyncio.to_thread(start, *args, **kwargs)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


class RssPeak:
    """A process's RSS every ``interval_s``: baseline before, peak during."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self.samples = 0
        self._sampling = contextlib.AsyncExitStack()

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.samples += 1

    async def start(self) -> None:
        await self._sampling.enter_async_context(every(self.interval_s, self._sample))

    async def stop(self) -> dict[str, Any]:
        await self._sampling.aclose()
        end = None
        with contextlib.suppress(psutil.Error):
            end = mib(self.proc.memory_info().rss)
        return {
            "baseline_mib": mib(self.baseline),
            "peak_mib": mib(self.peak),
            "end_mib": end,
            "growth_mib": mib(self.peak - self.baseline),
            "growth_mb": round((self.peak - self.baseline) / 1e6, 1),
            "samples": self.samples,
        }


# -- the API ---------------------------------------------------------------------------


class Api:
    """One aiohttp session to a daemon with the admin token (connection limit ``limit``), or
    to another HTTP API with ``headers`` of its own (``ssl``: aiohttp's, e.g. a context)."""

    def __init__(
        self,
        base_url: str,
        limit: int = 64,
        headers: dict[str, str] = AUTH,
        *,
        ssl: Any = True,
        timeout_s: float = 60.0,
    ) -> None:
        self.base = base_url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=ssl),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self, method: str, path: str, body: Any = None, *, ok: int | None = 200, parse: bool = True
    ) -> Any:
        """The answer's JSON (None without a body or with ``parse`` False); OpError unless
        the status is ``ok`` (None: any 2xx)."""
        async with self.session.request(method, self.base + path, json=body) as resp:
            data = await resp.read()
            if resp.status != ok and (ok is not None or resp.status >= 300):
                raise OpError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data) if parse and data else None

    async def create(self, name: str, n: int) -> str:
        body = {"name": name, "values": values_for(n)}
        return str((await self.call("POST", "/api/v1/secrets", body, ok=201))["id"])

    def creates(self, name: str, ids: list[str] | None = None) -> Op:
        """``run_ops``'s op creating secret ``{name}-{n}`` (its id appended to ``ids``)."""

        async def create(_worker: int, n: int) -> None:
            secret_id = await self.create(f"{name}-{n}", n)
            if ids is not None:
                ids.append(secret_id)

        return create

    async def update(self, secret_id: str, values: dict[str, str]) -> None:
        body = {"values": values}
        await self.call("PATCH", f"/api/v1/secrets/{secret_id}", body, parse=False)

    async def status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.call("GET", "/admin/v1/status")
        return status

    async def replication(self) -> dict[str, dict[str, Any]]:
        """Each target's ``applied``, ``pending``, ``dead``, ... from the status."""
        replication: dict[str, dict[str, Any]] = (await self.status())["replication"]
        return replication

    async def backup_status(self) -> dict[str, Any]:
        return (await self.replication())["backup"]

    async def until_drained(self, timeout_s: float, targets: tuple[str, ...] = ()) -> float:
        """Poll the status every 0.1 s until nothing is pending for ``targets`` (none named:
        every target); the seconds that took, OpError after ``timeout_s``."""
        started = time.perf_counter()
        while True:
            found = await self.replication()
            if all(found[t]["pending"] == 0 for t in targets or found):
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                raise OpError(f"not drained after {timeout_s:g} s: {found}")
            await asyncio.sleep(0.1)

    async def metrics(self) -> str:
        async with self.session.get(self.base + "/metrics") as resp:
            return await resp.text()

    async def job(self, path: str, body: Any = None, poll_s: float = 0.2) -> dict[str, Any]:
        """POST a job and poll it until it ended; the job, the seconds since the POST and
        ``seconds``: from its ``started`` to its ``finished`` (None without both)."""
        started = time.perf_counter()
        job: dict[str, Any] = await self.call("POST", path, body, ok=None)
        while job["status"] in ("queued", "running"):
            await asyncio.sleep(poll_s)
            job = await self.call("GET", f"/admin/v1/jobs/{job['id']}")
        job["seconds_wall_from_post"] = round(time.perf_counter() - started, 3)
        begin, end = job.get("started"), job.get("finished")
        ran = datetime.fromisoformat(end) - datetime.fromisoformat(begin) if begin and end else None
        job["seconds"] = None if ran is None else ran.total_seconds()
        return job


# -- CPU accounting ------------------------------------------------------------------------


def cpu_seconds(pid: int | None, tree: bool = False) -> float | None:
    """CPU seconds of a process (and of its children with ``tree``: PostgreSQL's backends)."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if tree else [root]
    except psutil.Error:
        return None
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += float(times.user + times.system)
    return total


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    guests = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times)) - idle - guests


class Cpu:
    """CPU seconds of our processes (by name; this one is ``client``) and of everyone else.

    ``postgres`` counts the postmaster and its backends (pgserver only); ``other``
    is the machine's busy time minus ours: other people's work on a shared box.
    """

    def __init__(self, pids: dict[str, int | None], postmaster: int | None = None) -> None:
        self.pids = {**pids, "client": os.getpid()}
        self.postmaster = postmaster
        self.before: dict[str, float | None] = {}
        self.started = 0.0

    def _now(self) -> dict[str, float | None]:
        found = {who: cpu_seconds(pid) for who, pid in self.pids.items()}
        found["postgres"] = cpu_seconds(self.postmaster, tree=True)
        found["machine_busy"] = machine_busy_s()
        return found

    def start(self) -> None:
        self.before = self._now()
        self.started = time.perf_counter()

    def stop(self, ops: int | None = None) -> dict[str, Any]:
        """Seconds per process since ``start``, ``other_s``, and ``ms_per_op`` given ``ops``."""
        now = self._now()
        wall = time.perf_counter() - self.started
        found: dict[str, Any] = {"wall_s": round(wall, 3)}
        ours = 0.0
        for who, value in now.items():
            then = self.before.get(who)
            used = None if value is None or then is None else round(value - then, 3)
            found[f"{who}_s"] = used
            if who != "machine_busy" and used is not None:
                ours += used
        cores = os.cpu_count() or 1
        found["other_s"] = round(max(found["machine_busy_s"] - ours, 0.0), 3)
        found["others_share_of_machine"] = round(found["other_s"] / (wall * cores), 3)
        found["machine_busy_fraction"] = round(found["machine_busy_s"] / (wall * cores), 3)
        if ops:
            found["ms_per_op"] = {
                who: round(found[f"{who}_s"] * 1000 / ops, 3)
                for who in [*self.pids, "postgres"]
                if found.get(f"{who}_s") is not None
            }
        return found


# -- the phase loop -------------------------------------------------------------------------

#: ``op(worker, n)``: ``n`` counts the operations issued by all workers (0, 1, ...).
Op = Callable[[int, int], Awaitable[Any]]


async def run_ops(
    op: Op,
    clients: int,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    cpu: Cpu | None = None,
    label: str = "",
    stop: asyncio.Event | None = None,
    failures: tuple[type[Exception], ...] = (
        OpError,
        aiohttp.ClientError,
        asyncpg.PostgresError,
        OSError,
    ),
) -> dict[str, Any]:
    """``op`` from ``clients`` workers, ``count`` times, for ``duration_s`` or until ``stop``
    is set, whichever ends first: ops/s, latencies, errors (and, given ``cpu``, the CPU
    each process took)."""
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    issued = itertools.count()
    deadline = time.perf_counter() + duration_s if duration_s is not None else float("inf")

    async def worker(index: int) -> None:
        nonlocal errors
        while time.perf_counter() < deadline and not (stop is not None and stop.is_set()):
            n = next(issued)
            if count is not None and n >= count:
                return
            started = time.perf_counter()
            try:
                await op(index, n)
            except failures as exc:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}"[:300])
                if errors > 200 and errors > len(latencies):
                    return  # everything fails: no point hammering for the whole phase
            else:
                latencies.append(time.perf_counter() - started)

    if cpu is not None:
        cpu.start()
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - started
    ops = len(latencies)
    result: dict[str, Any] = {
        "concurrency": clients,
        "ops": ops,
        "errors": errors,
        "seconds": round(wall, 3),
        "ops_per_s": round(ops / wall, 1) if wall > 0 else 0.0,
        **latency_summary(latencies),
    }
    if cpu is not None:
        result["cpu"] = cpu.stop(ops)
        result["cpu_ms_per_op"] = result["cpu"].pop("ms_per_op", {})
    if samples:
        result["error_samples"] = samples
    if label:
        print(
            f"  {label:<18} c={clients:<3} {result['ops_per_s']:>9.1f} ops/s"
            f"  p50 {result['p50_ms'] or 0:>7.2f} ms  p99 {result['p99_ms'] or 0:>7.2f} ms"
            f"  errors {errors}"
        )
    return result


# -- replication progress ------------------------------------------------------------------


class Progress:
    """The backup's ``applied`` and ``pending`` from ``/admin/v1/status``, sampled."""

    def __init__(self, api: Api, timeout_s: float = 180.0) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.samples: list[tuple[float, int, int]] = []

    async def sample(self) -> tuple[float, int, int]:
        status = await self.api.backup_status()
        point = (time.perf_counter(), int(status["applied"]), int(status["pending"]))
        self.samples.append(point)
        return point

    async def until_applied(self, applied: int, timeout_s: float | None = None) -> float | None:
        """Sample every 0.1 s until ``applied`` is reached with nothing pending; when, or
        None on timeout."""
        deadline = time.perf_counter() + (timeout_s or self.timeout_s)
        while time.perf_counter() < deadline:
            at, done, pending = await self.sample()
            if done >= applied and pending == 0:
                return at
            await asyncio.sleep(0.1)
        return None

    async def drained(self, applied: int) -> float:
        """``until_applied`` that raises on a timeout."""
        at = await self.until_applied(applied)
        if at is None:
            raise OpError(f"replication did not drain in {self.timeout_s:g} s")
        return at

    def applied_at(self, when: float) -> int:
        """The applied counter at the last sample taken at or before ``when``."""
        found = self.samples[0][1] if self.samples else 0
        for at, done, _ in self.samples:
            if at > when:
                break
            found = done
        return found

    def peak_rate(self, window_s: float = 1.0) -> float | None:
        """The most events applied in any ``window_s`` between samples, per second."""
        best = None
        for i, (t0, a0, _) in enumerate(self.samples):
            for t1, a1, _ in self.samples[i + 1 :]:
                if t1 - t0 >= window_s:
                    rate = (a1 - a0) / (t1 - t0)
                    best = rate if best is None else max(best, rate)
                    break
        return rounded(best)


def steady_rate(samples: list[tuple[float, int]], total: int) -> float | None:
    """Per second between the samples ``(at, done)`` where 10% and 90% of ``total`` were
    first done: a drain's rate without its ramp-up and its stragglers."""
    low = next((s for s in samples if s[1] >= total * 0.1), None)
    high = next((s for s in samples if s[1] >= total * 0.9), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def _rate(events: int, seconds: float | None) -> float | None:
    return round(events / seconds, 1) if seconds else None


async def replicated_phase(
    label: str, api: Api, progress: Progress, cpu: Cpu, count: int, op: Op, clients: int = 32
) -> dict[str, Any]:
    """``count`` API writes at ``clients``, then until every resulting event is applied:
    applied/s overall, while writing and after the writes (the backlog alone)."""
    start_applied = (await progress.sample())[1]
    cpu.start()
    async with every(0.1, progress.sample):
        first = time.perf_counter()
        writes = await run_ops(op, clients, count=count)
    writes_end = time.perf_counter()
    drained = await progress.until_applied(start_applied + writes["ops"])
    cpu_used = cpu.stop(writes["ops"])
    applied = (progress.samples[-1][1] if progress.samples else start_applied) - start_applied
    total_s = (drained - first) if drained is not None else None
    at_writes_end = progress.applied_at(writes_end) - start_applied
    backlog = writes["ops"] - at_writes_end
    tail_s = (drained - writes_end) if drained is not None else None
    result = {
        "api_writes": writes,
        "events_applied": applied,
        "drained": drained is not None,
        "seconds_first_write_to_applied": rounded(total_s, 3),
        "applied_per_s": _rate(applied, total_s),
        "applied_per_s_while_writing": _rate(at_writes_end, writes_end - first),
        "backlog_when_writes_ended": backlog,
        "applied_per_s_after_writes": _rate(backlog, tail_s) if backlog > 0 else None,
        "peak_applied_per_s_1s": progress.peak_rate(),
        "cpu": cpu_used,
        "backup_store": (await api.status())["stores"].get("backup"),
    }
    print(
        f"  {label}: API {writes['ops_per_s']}/s ({writes['ops']} writes, {writes['errors']}"
        f" errors), applied {result['applied_per_s']}/s overall,"
        f" {result['applied_per_s_while_writing']}/s while writing,"
        f" {result['applied_per_s_after_writes']}/s after (backlog {backlog});"
        f" others used {cpu_used.get('others_share_of_machine')} of the machine"
    )
    return result


def print_replicated(out: dict[str, Any]) -> None:
    """The summary lines of ``out["first_writes"]`` and ``out["throughput"]`` (``updates``)."""
    for key in ("first_writes", "throughput"):
        if r := out.get(key):
            print(
                f"{key:<14} applied {r['applied_per_s']}/s overall (while writing"
                f" {r['applied_per_s_while_writing']}/s, after {r['applied_per_s_after_writes']}/s,"
                f" peak 1 s {r['peak_applied_per_s_1s']}/s); API {r['api_writes']['ops_per_s']}/s;"
                f" others used {r['cpu'].get('others_share_of_machine')} of the machine"
            )


async def first_writes(
    api: Api, progress: Progress, cpu: Cpu, count: int, tag: str, ids: list[str]
) -> dict[str, Any]:
    """``replicated_phase`` of ``count`` creates (``ids`` gets each new secret's id)."""
    print(f"first writes: {count} creates at 32 clients")
    create = api.creates(f"bulk-{tag}", ids)
    return await replicated_phase("first writes", api, progress, cpu, count, create)


async def updates(
    api: Api, progress: Progress, cpu: Cpu, ids: list[str], values: Callable[[int], Any]
) -> dict[str, Any]:
    """``replicated_phase`` of one PATCH per secret of ``ids`` to ``values(n)``."""
    print(f"throughput: {len(ids)} PATCHes (one per secret) at 32 clients")

    async def update(_worker: int, n: int) -> None:
        await api.update(ids[n], values(n))

    return await replicated_phase("updates", api, progress, cpu, len(ids), update)


async def counted_phases(
    progress: Progress,
    phases: list[tuple[str, int, Op]],
    mark: Callable[[], int],
    calls: Callable[[int], dict[str, Any]],
    *,
    what: str = "calls",
    by: str = "by_operation",
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """Per phase ``(label, count, op)``: ``count`` API writes at 8 clients and the store calls
    they caused once applied: ``calls(mark())`` counts them (``"work"``: calls that are not
    health probes, ``by``: their breakdown)."""
    found: dict[str, Any] = {}
    for label, count, op in phases:
        applied0 = (await progress.sample())[1]
        since = mark()
        writes = await run_ops(op, 8, count=count)
        drained = await progress.until_applied(applied0 + writes["ops"])
        await asyncio.sleep(settle_s)  # the store's log may lag behind the last answer
        counted = found[label] = calls(since)
        applied = progress.samples[-1][1] - applied0
        counted.update(
            changes=writes["ops"],
            api_errors=writes["errors"],
            events_applied=applied,
            drained=drained is not None,
            calls_per_change=round(counted["work"] / applied, 3) if applied else None,
        )
        refused = f" (refused {counted['refused']})" if "refused" in counted else ""
        print(
            f"  {label}: {counted['work']} {what} for {applied} applied changes ="
            f" {counted['calls_per_change']}/change {counted[by]}{refused}"
            f" (+{counted['health_probes']} health probes)"
        )
    return found


# -- AWS Secrets Manager on moto --------------------------------------------------------


def aws_env(
    endpoint_url: str, prefix: str, writes_per_s: float | None, role: str = "backup"
) -> dict[str, str]:
    """``SECRETMIRROR_<role>__*`` for the aws store on moto (None: the default write rate)."""
    return store_env(
        role, {"type": "aws", **aws_settings(endpoint_url, prefix), **write_limit(writes_per_s)}
    )


def write_limit(writes_per_s: float | None) -> dict[str, float]:
    """A store's ``max_writes_per_s`` field, none for None (the store's default)."""
    return {} if writes_per_s is None else {"max_writes_per_s": writes_per_s}


def count_calls(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of ``MotoServer.read_calls``: by operation, with and without health probes."""
    by_operation = collections.Counter(call["operation"] for call in calls)
    probes = sum(1 for call in calls if call["health_probe"])
    return {
        "total": len(calls),
        "health_probes": probes,
        "work": len(calls) - probes,
        "by_operation": dict(sorted(by_operation.items())),
    }


async def aws_raw_loop(
    endpoint_url: str,
    prefix: str,
    concurrency: int,
    *,
    operation: str,
    duration_s: float | None = None,
    count: int | None = None,
    secrets_per_worker: int = 25,
    region: str = REGION,
    create_secrets: bool = True,
    ready: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """The raw limit: a bare aiobotocore loop (one client, 64 connections as the store's)
    at ``concurrency`` for ``duration_s`` or ``count`` calls, whichever comes first.
    ``operation`` "put": PutSecretValue (a unique ClientRequestToken each) round robin over
    ``secrets_per_worker`` secrets per worker, made first unless ``create_secrets`` is False;
    "create": CreateSecret of new names with the aws store's two tags. ``ready``, if given,
    is called in a thread between the setup and the timed loop."""
    from aiobotocore.config import AioConfig

    config = AioConfig(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=3,
        read_timeout=10,
        max_pool_connections=64,
    )
    value = json.dumps({"host": "db.internal.example:5432", "password": "x" * 32, "user": "u"})
    tags = [
        {"Key": "secretmirror:managed", "Value": "true"},
        {"Key": "secretmirror:deployment", "Value": "bench-raw"},
    ]
    names = [[f"{prefix}w{w}-{i}" for i in range(secrets_per_worker)] for w in range(concurrency)]
    run = uuid.uuid4().hex[:6]
    async with secrets_client(endpoint_url, region, config) as client:
        await client.list_secrets(MaxResults=1)  # moto builds its backend once, not racing
        if operation == "put" and create_secrets:
            gate = asyncio.Semaphore(concurrency)

            async def make(name: str) -> None:
                async with gate:
                    await client.create_secret(Name=name, SecretString=value, Tags=tags)

            await asyncio.gather(*(make(n) for row in names for n in row))

        async def put(worker: int, n: int) -> None:
            secret_id = names[worker][n % secrets_per_worker]
            token = str(uuid.uuid4())
            await client.put_secret_value(
                SecretId=secret_id, SecretString=value, ClientRequestToken=token
            )

        async def create(worker: int, n: int) -> None:
            await client.create_secret(
                Name=f"{prefix}c{worker}-{n}-{run}", SecretString=value, Tags=tags
            )

        op = put if operation == "put" else create
        if ready is not None:
            await asyncio.to_thread(ready)
        # botocore's and aiohttp's errors alike count as failed calls
        result = await run_ops(
            op, concurrency, count=count, duration_s=duration_s, failures=(Exception,)
        )
    return {
        "operation": {"put": "PutSecretValue", "create": "CreateSecret"}[operation],
        "region": region,
        **result,
    }


#: Daemon log events worth reporting beside the figures.
LOG_EVENTS = (
    "store.down",
    "store.up",
    "replication.retry",
    "replication.dead_lettered",
    "replication.lease_lost",
    "secret.inline_write_failed",
)


class Stack:
    """One database, moto (its recorder off) and one daemon at a time, all on one key."""

    def __init__(self, out: dict[str, Any], workdir: Path, pg: Postgres, moto: MotoServer) -> None:
        self.out = out
        self.workdir = workdir
        self.pg = pg
        self.moto = moto
        self.dsn = ""
        self.daemon: Daemon | None = None
        self.api: Api | None = None
        self.key: str | None = None

    async def serve(self, label: str, env: dict[str, str]) -> Api:
        """Stop the running daemon, start another (verify off) on the same database and key."""
        await self.stop_daemon()
        count = len(self.out.get("daemons", [])) + 1
        workdir = self.workdir / f"daemon-{count}"
        self.daemon = Daemon(self.dsn, workdir, {**env, **VERIFY_OFF}, key=self.key, label=label)
        await self.daemon.ready()
        self.key = self.daemon.key
        self.api = Api(self.daemon.url)
        return self.api

    async def stop_daemon(self) -> None:
        if self.api is not None:
            await self.api.close()
            self.api = None
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return
        rss = None
        with contextlib.suppress(psutil.Error):
            rss = daemon.rss_mib()
        await daemon.close()
        self.out.setdefault("daemons", []).append(
            {
                "label": daemon.label,
                "rss_at_stop_mib": rss,
                **daemon.stopped(),
                "log_events": daemon.log_events(LOG_EVENTS),
            }
        )


@contextlib.asynccontextmanager
async def aws_stack(out: dict[str, Any], workdir: Path) -> AsyncIterator[Stack]:
    """A ``Stack``; on the way out the daemon stops and moto's 500 answers are recorded."""
    async with postgres() as pg, running(MotoServer, record=False) as moto:
        stack = Stack(out, workdir, pg, moto)
        try:
            stack.dsn = await pg.database()
            yield stack
        finally:
            with contextlib.suppress(Exception):
                await stack.stop_daemon()
            out["moto_500_answers"] = moto.server_errors()
