"""The replication benchmark: a real daemon replicating to AWS Secrets Manager on moto.

Everything runs on 127.0.0.1: PostgreSQL (``pgserver``, or a fresh database on
``SECRETMIRROR_BENCH_DATABASE_URL``), a moto server subprocess, and
``secretmirror serve`` subprocesses (sql primary in the main database, ``aws``
backup on moto, configured only through ``SECRETMIRROR_*`` variables, the
scheduled verify off). Moto has no write quota, so the throughput daemons run
with ``backup.max_writes_per_s`` = 100000; one phase runs at the default 40/s.

Phases, in one run (each figure beside the raw limit measured in the same run):

1. **first writes**: N secrets created through the API at 32 clients; events
   applied per second from the first create until ``/admin/v1/status`` shows
   every one applied (first touch: DescribeSecret + CreateSecret each).
2. **raw**: a bare aiobotocore ``CreateSecret`` loop, then a bare
   ``PutSecretValue`` loop (pre-created secrets, a unique ``ClientRequestToken``
   per put) at ``replication.concurrency`` (16) against the same moto. moto
   finds a secret by scanning every secret of the region, so its calls slow
   down as it fills: the loops run here, at the fill the next phase sees, and
   the put loop once more after it; the target uses the mean of the two.
3. **throughput**: one PATCH per secret (N), at 32 clients, while the worker
   replicates; events applied per second from the first PATCH until all are
   applied (the status ``applied`` counter, sampled every 0.1 s).
4. **latency**: an open-loop writer at a steady 100 PATCH/s for 20 s;
   commit-to-applied quantiles from the daemon's
   ``secretmirror_replication_latency_seconds{target="backup"}`` histogram
   (scraped before and after; quantiles interpolated inside buckets; the
   share at or below 50 ms and 250 ms is exact, both are bucket bounds).
5. **calls**: moto's request recorder counts the AWS calls per applied change
   for first writes (new secrets) and for updates to secrets the daemon knows.
6. **limiter**: a daemon at the default ``max_writes_per_s`` (40); a burst of
   PATCHes, and the write calls reaching moto per second (recorder, 0.1 s).
7. **backup latency**: a daemon whose backup endpoint is a TCP fault proxy
   (``tests/faultproxy.py``, in a subprocess of its own so its CPU is not the
   load generator's) in front of moto; API create p50/p99 at 1 and 8 clients
   without and then with 300 ms added to every backup request.

8. **two daemons** (also alone: ``python -m bench.replication two-daemons``):
   two daemons on one database, primary and backup both AWS behind the fault
   proxy (50 ms on every request), PATCH the same 50 secrets at 8 clients
   each for 15 s while a poller reads every entry's current version from
   moto; after the drain, verify. Targets: no ``stale`` entry in the backup,
   no version seen going backwards. Raw limit: a bare ``PutSecretValue`` loop
   through the same proxy.

Each daemon's log is scanned for ``store.down``/``store.up`` and retries, and
moto's log for the 500s it answers (moto 5.2.5 can fail a CreateSecret racing
another with "dictionary changed size during iteration").

A measurement, not a test: targets are recorded as pass/miss and never fail the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench._common import (
    AWS_ACCESS_KEY,
    AWS_REGION,
    AWS_SECRET_KEY,
    MotoProcess,
    aws_raw_loop,
    count_calls,
    histogram_buckets,
    histogram_delta,
    histogram_fraction_le,
    histogram_quantile,
    latency_summary,
    machine_info,
    machine_load,
    now_iso,
    print_load,
    print_targets,
    run_standalone,
    secretsmanager_client,
)
from bench.api import ADMIN_TOKEN, BenchPostgres, Daemon, values_for

NAME = "replication"
REPO = Path(__file__).resolve().parent.parent
SECRETS = int(os.environ.get("SECRETMIRROR_BENCH_REPLICATION_SECRETS", "1500"))
#: ``replication.concurrency``'s default: the raw loop runs at the same concurrency.
CONCURRENCY = 16
API_CLIENTS = 32
RAW_S = 8.0
RAW_CREATE_S = 4.0
STEADY_RATE = 100.0
STEADY_S = 20.0
COUNTED_CREATES = 100
COUNTED_UPDATES = 200
LIMITED_UPDATES = 300
DEFAULT_WRITES_PER_S = 40.0
UNLIMITED_WRITES_PER_S = 100_000
PROXY_LATENCY_S = 0.3
PROXY_PHASE_S = 5.0
PROXY_CLIENTS = (1, 8)
TWO_DAEMONS_SECRETS = 50
TWO_DAEMONS_CLIENTS = 8
TWO_DAEMONS_LOAD_S = float(os.environ.get("SECRETMIRROR_BENCH_TWO_DAEMONS_S", "15"))
TWO_DAEMONS_LATENCY_S = 0.05
DRAIN_TIMEOUT_S = 60.0
LATENCY_METRIC = "secretmirror_replication_latency_seconds"
#: The Secrets Manager operations the aws store paces with its token bucket.
WRITE_OPERATIONS = {
    "CreateSecret",
    "PutSecretValue",
    "UpdateSecret",
    "RestoreSecret",
    "TagResource",
    "UntagResource",
    "DeleteSecret",
    "UpdateSecretVersionStage",
}


class OpError(Exception):
    """A request that did not get the answer it should have."""


# -- processes -----------------------------------------------------------------------


def aws_backup_env(
    endpoint_url: str, prefix: str, max_writes_per_s: float | None, role: str = "BACKUP"
) -> dict[str, str]:
    """``SECRETMIRROR_<role>__*`` for the aws store on moto (None: the default rate)."""
    env = {
        f"SECRETMIRROR_{role}__TYPE": "aws",
        f"SECRETMIRROR_{role}__ENDPOINT_URL": endpoint_url,
        f"SECRETMIRROR_{role}__REGION": AWS_REGION,
        f"SECRETMIRROR_{role}__AUTH_METHOD": "secret-key",
        f"SECRETMIRROR_{role}__AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY,
        f"SECRETMIRROR_{role}__AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
        f"SECRETMIRROR_{role}__NAME_PREFIX": prefix,
    }
    if max_writes_per_s is not None:
        env[f"SECRETMIRROR_{role}__MAX_WRITES_PER_S"] = str(max_writes_per_s)
    return env


class AwsDaemon(Daemon):
    """``bench.api.Daemon`` with extra ``SECRETMIRROR_*`` variables and the verify schedule off.

    ``key`` reuses another daemon's encryption key (a restart on the same database).
    """

    def __init__(
        self,
        dsn: str,
        workdir: Path,
        extra_env: dict[str, str],
        key: str | None = None,
        label: str = "",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(dsn, workdir)
        if key is not None:
            self.key = key
        self.extra_env = extra_env
        self.label = label

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SECRETMIRROR_", "AWS_"))}
        env.update(
            SECRETMIRROR_DATABASE_URL=self.dsn,
            SECRETMIRROR_DATA_DIR=str(self.workdir / "data"),
            SECRETMIRROR_LISTEN=f"127.0.0.1:{self.port}",
            SECRETMIRROR_ADMIN_TOKEN=ADMIN_TOKEN,
            SECRETMIRROR_ENCRYPTION_KEYS=self.key,
            # No verify at start-up or on a timer: it would list the backup mid-measurement.
            SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S="0",
        )
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "secretmirror", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )


_PROXY_MAIN = """
import asyncio, sys
from tests.faultproxy import FaultProxy

async def main():
    proxy = await FaultProxy("127.0.0.1", int(sys.argv[1])).start()
    print(proxy.port, flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words[0] == "latency":
            await proxy.latency(float(words[1]), words[2])
        else:
            await proxy.pass_through()
        print("ok", flush=True)
    await proxy.stop()

asyncio.run(main())
"""


class ProxyProcess:
    """``tests.faultproxy.FaultProxy`` in front of moto, in a subprocess driven over stdin."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROXY_MAIN, str(self.upstream_port)],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError("the fault proxy did not start")
        self.url = f"http://127.0.0.1:{port}"

    def _command(self, line: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the fault proxy refused {line!r}")

    def latency(self, seconds: float, direction: str) -> None:
        self._command(f"latency {seconds} {direction}")

    def pass_through(self) -> None:
        self._command("pass")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


# -- the API as the load generator sees it ---------------------------------------------


class Api:
    """One aiohttp session to a daemon: the calls the benches make."""

    def __init__(self, base_url: str, limit: int = 64) -> None:
        self.base = base_url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )

    async def close(self) -> None:
        await self.session.close()

    async def create(self, name: str, n: int) -> str:
        body = {"name": name, "values": values_for(n)}
        async with self.session.post(self.base + "/api/v1/secrets", json=body) as resp:
            data = await resp.read()
            if resp.status != 201:
                raise OpError(f"create: {resp.status} {data[:200]!r}")
        secret_id: str = json.loads(data)["id"]
        return secret_id

    async def update(self, secret_id: str, n: int) -> None:
        body = {"values": {"password": f"p-{n}-{secrets.token_hex(8)}"}}
        async with self.session.patch(f"{self.base}/api/v1/secrets/{secret_id}", json=body) as r:
            data = await r.read()
            if r.status != 200:
                raise OpError(f"update: {r.status} {data[:200]!r}")

    async def status(self) -> dict[str, Any]:
        async with self.session.get(self.base + "/admin/v1/status") as resp:
            data = await resp.read()
            if resp.status != 200:
                raise OpError(f"status: {resp.status} {data[:200]!r}")
        status: dict[str, Any] = json.loads(data)
        return status

    async def backup_status(self) -> dict[str, Any]:
        backup: dict[str, Any] = (await self.status())["replication"]["backup"]
        return backup

    async def metrics(self) -> str:
        async with self.session.get(self.base + "/metrics") as resp:
            return await resp.text()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.base + path, json=body) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise OpError(f"POST {path}: {resp.status} {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    async def get(self, path: str) -> dict[str, Any]:
        async with self.session.get(self.base + path) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise OpError(f"GET {path}: {resp.status} {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer


async def run_ops(
    count: int | None,
    clients: int,
    op: Callable[[int], Awaitable[None]],
    duration_s: float | None = None,
) -> dict[str, Any]:
    """``op(n)`` for n = 0, 1, ... from ``clients`` workers, ``count`` times or for a duration."""
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    issued = itertools.count()
    deadline = time.perf_counter() + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            n = next(issued)
            if count is not None and n >= count:
                return
            started = time.perf_counter()
            try:
                await op(n)
            except (OpError, aiohttp.ClientError, OSError) as exc:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{type(exc).__name__}: {exc}"[:300])
                if errors > 200 and errors > len(latencies):
                    return
            else:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    result: dict[str, Any] = {
        "clients": clients,
        "ops": len(latencies),
        "errors": errors,
        "started_at": started,
        "seconds": round(wall, 3),
        "ops_per_s": round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        **latency_summary(latencies),
    }
    if samples:
        result["error_samples"] = samples
    return result


class Progress:
    """``/admin/v1/status`` for the backup every 0.1 s: (time, applied, pending) samples."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.samples: list[tuple[float, int, int]] = []

    async def sample(self) -> tuple[float, int, int]:
        status = await self.api.backup_status()
        point = (time.perf_counter(), int(status["applied"]), int(status["pending"]))
        self.samples.append(point)
        return point

    async def until_applied(self, applied: int, timeout_s: float = DRAIN_TIMEOUT_S) -> float | None:
        """Sample until ``applied`` is reached with nothing pending; when, or None on timeout."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            at, done, pending = await self.sample()
            if done >= applied and pending == 0:
                return at
            await asyncio.sleep(0.1)
        return None

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
        return None if best is None else round(best, 1)


def _cpu_s(pid: int | None, tree: bool = False) -> float | None:
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


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return (
        float(sum(times)) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    )


class Cpu:
    """CPU seconds of our processes (by name) and of everyone else on the machine.

    ``postgres`` counts the postmaster and its backends (pgserver only); ``other``
    is the machine's busy time minus ours: other people's work on a shared box.
    """

    def __init__(self, pids: dict[str, int | None], postmaster: int | None = None) -> None:
        self.pids = pids
        self.postmaster = postmaster
        self.before: dict[str, float | None] = {}
        self.started = 0.0

    def _now(self) -> dict[str, float | None]:
        found = {who: _cpu_s(pid) for who, pid in self.pids.items()}
        if self.postmaster is not None:
            found["postgres"] = _cpu_s(self.postmaster, tree=True)
        found["machine_busy"] = _machine_busy_s()
        return found

    def start(self) -> None:
        self.before = self._now()
        self.started = time.perf_counter()

    def stop(self, ops: int | None = None) -> dict[str, Any]:
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
        if found["machine_busy_s"] is not None:
            found["other_s"] = round(max(found["machine_busy_s"] - ours, 0.0), 3)
            cores = os.cpu_count() or 1
            found["others_share_of_machine"] = round(found["other_s"] / (wall * cores), 3)
        if ops:
            found["ms_per_op"] = {
                who: round(found[f"{who}_s"] * 1000 / ops, 2)
                for who in [*self.pids, "postgres"]
                if found.get(f"{who}_s") is not None
            }
        return found


def _rate(events: int, seconds: float | None) -> float | None:
    return round(events / seconds, 1) if seconds else None


# -- phases --------------------------------------------------------------------------


async def _raw(
    moto: MotoProcess, prefix: str, operation: str, duration_s: float, *, create_secrets: bool
) -> dict[str, Any]:
    """A bare aiobotocore loop at CONCURRENCY, with the CPU it and moto used."""
    assert moto.proc is not None
    cpu = Cpu({"client": os.getpid(), "moto": moto.proc.pid})
    cpu.start()
    result = await aws_raw_loop(
        moto.endpoint_url,
        prefix,
        CONCURRENCY,
        operation=operation,
        duration_s=duration_s,
        create_secrets=create_secrets,
    )
    # Includes creating the put loop's secrets: an upper bound per op.
    result["cpu_incl_setup"] = cpu.stop(result["ops"])
    print(
        f"  raw {result['operation']:<15} {result['ops_per_s']:>8.1f}/s  p50 {result['p50_ms']}"
        f" ms  p99 {result['p99_ms']} ms  errors {result['errors']};  others used"
        f" {result['cpu_incl_setup'].get('others_share_of_machine')} of the machine",
        flush=True,
    )
    return result


async def _loaded_phase(
    label: str,
    api: Api,
    progress: Progress,
    cpu: Cpu,
    count: int,
    op: Callable[[int], Awaitable[None]],
) -> dict[str, Any]:
    """``count`` writes at 32 clients, then until every resulting event is applied."""
    start_applied = (await progress.sample())[1]
    stop_sampling = asyncio.Event()

    async def sample_while_writing() -> None:
        while not stop_sampling.is_set():
            await progress.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.1)

    cpu.start()
    sampler = asyncio.create_task(sample_while_writing())
    try:
        writes = await run_ops(count, API_CLIENTS, op)
    finally:
        stop_sampling.set()
        await sampler
    writes_end = time.perf_counter()
    drained = await progress.until_applied(start_applied + writes["ops"])
    cpu_used = cpu.stop(writes["ops"])
    first = writes.pop("started_at")
    applied = (progress.samples[-1][1] if progress.samples else start_applied) - start_applied
    total_s = (drained - first) if drained is not None else None
    at_writes_end = progress.applied_at(writes_end) - start_applied
    backlog = writes["ops"] - at_writes_end
    tail_s = (drained - writes_end) if drained is not None else None
    result = {
        "api_writes": writes,
        "events_applied": applied,
        "drained": drained is not None,
        "seconds_first_write_to_applied": None if total_s is None else round(total_s, 3),
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
        f" others used {cpu_used.get('others_share_of_machine')} of the machine",
        flush=True,
    )
    return result


async def _steady_latency(api: Api, progress: Progress, cpu: Cpu, ids: list[str]) -> dict[str, Any]:
    """An open-loop writer at STEADY_RATE; commit-to-applied from the daemon's histogram."""
    print(f"latency: open-loop {STEADY_RATE:g} PATCH/s for {STEADY_S:g} s", flush=True)
    labels = {"target": "backup"}
    before = histogram_buckets(await api.metrics(), LATENCY_METRIC, labels)
    start_applied = (await progress.sample())[1]
    total = int(STEADY_RATE * STEADY_S)
    latencies: list[float] = []
    errors: list[str] = []
    late: list[float] = []

    async def one(n: int) -> None:
        started = time.perf_counter()
        try:
            await api.update(ids[n % len(ids)], 10_000_000 + n)
        except (OpError, aiohttp.ClientError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        else:
            latencies.append(time.perf_counter() - started)

    tasks = []
    cpu.start()
    begin = time.perf_counter() + 0.05
    for n in range(total):
        due = begin + n / STEADY_RATE
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(time.perf_counter() - due)
        tasks.append(asyncio.create_task(one(n)))
    sent_s = time.perf_counter() - begin
    await asyncio.gather(*tasks)
    drained = await progress.until_applied(start_applied + len(latencies))
    cpu_used = cpu.stop(total)
    after = histogram_buckets(await api.metrics(), LATENCY_METRIC, labels)
    buckets = histogram_delta(before, after)
    observed = buckets[-1][1] if buckets else 0

    def ms(q: float) -> float | None:
        value = histogram_quantile(buckets, q)
        return None if value is None else round(value * 1000, 1)

    result = {
        "method": (
            "daemon histogram secretmirror_replication_latency_seconds{target=backup}, "
            "scraped before and after; quantiles interpolated linearly inside buckets"
        ),
        "writes": total,
        "writes_ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "offered_rate_per_s": STEADY_RATE,
        "achieved_rate_per_s": round(total / sent_s, 1) if sent_s > 0 else None,
        "max_send_lateness_ms": round(max(late) * 1000, 1) if late else None,
        "api_patch": latency_summary(latencies),
        "drained": drained is not None,
        "observed": observed,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "share_le_50ms": _round(histogram_fraction_le(buckets, 0.05)),
        "share_le_250ms": _round(histogram_fraction_le(buckets, 0.25)),
        "buckets": [[le, count] for le, count in buckets],
        "cpu": cpu_used,
        "backup_store": (await api.status())["stores"].get("backup"),
    }
    print(
        f"  commit-to-applied p50 {result['p50_ms']} ms  p90 {result['p90_ms']} ms"
        f"  p99 {result['p99_ms']} ms over {observed:g} events; <=50 ms"
        f" {result['share_le_50ms']}, <=250 ms {result['share_le_250ms']};"
        f" API PATCH p50 {result['api_patch']['p50_ms']} ms;"
        f" others used {cpu_used.get('others_share_of_machine')} of the machine",
        flush=True,
    )
    return result


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


async def _calls(
    api: Api,
    progress: Progress,
    moto: MotoProcess,
    needles: tuple[str, ...],
    ids: list[str],
    tag: str,
) -> dict[str, Any]:
    """AWS calls per applied change, from moto's recorder: first writes, then updates."""
    print("calls: moto's recorder during first writes and updates", flush=True)
    moto.recording(True)
    try:
        found: dict[str, Any] = {}
        fresh: list[str] = []

        async def create(n: int) -> None:
            fresh.append(await api.create(f"calls-{tag}-{n}", n))

        async def update(n: int) -> None:
            await api.update(ids[n % len(ids)], 20_000_000 + n)

        for label, count, op in (
            ("first_write", COUNTED_CREATES, create),
            ("update_known", COUNTED_UPDATES, update),
        ):
            applied0 = (await progress.sample())[1]
            mark = moto.mark()
            writes = await run_ops(count, 8, op)
            drained = await progress.until_applied(applied0 + writes["ops"])
            await asyncio.sleep(0.3)  # let moto finish appending the last lines
            counted = count_calls(moto.calls(mark, needles))
            applied = progress.samples[-1][1] - applied0
            counted.update(
                changes=writes["ops"],
                events_applied=applied,
                drained=drained is not None,
                calls_per_change=round(counted["work"] / applied, 3) if applied else None,
                writes_per_change=round(
                    sum(n for op_, n in counted["by_operation"].items() if op_ in WRITE_OPERATIONS)
                    / applied,
                    3,
                )
                if applied
                else None,
            )
            found[label] = counted
            print(
                f"  {label}: {counted['work']} calls for {applied} applied changes"
                f" = {counted['calls_per_change']}/change {counted['by_operation']}"
                f" (+{counted['health_probes']} health probes)",
                flush=True,
            )
        return found
    finally:
        moto.recording(False)


async def _limiter(
    api: Api, progress: Progress, moto: MotoProcess, needles: tuple[str, ...], ids: list[str]
) -> dict[str, Any]:
    """A burst of updates at the default write rate: write calls reaching moto per 0.1 s."""
    print(f"limiter: {LIMITED_UPDATES} PATCHes at the default 40 writes/s", flush=True)
    moto.recording(True)
    try:
        applied0 = (await progress.sample())[1]
        position = moto.mark()
        points: list[tuple[float, int]] = []
        writes_seen = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal position, writes_seen
            while not done.is_set():
                calls, position = moto.read_calls(position, needles)
                writes_seen += sum(1 for c in calls if c["operation"] in WRITE_OPERATIONS)
                points.append((time.perf_counter(), writes_seen))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.1)

        watcher = asyncio.create_task(watch())
        try:
            writes = await run_ops(
                LIMITED_UPDATES,
                API_CLIENTS,
                lambda n: api.update(ids[n % len(ids)], 30_000_000 + n),
            )
            drained = await progress.until_applied(applied0 + writes["ops"], timeout_s=90)
            await asyncio.sleep(0.3)
        finally:
            done.set()
            await watcher
        calls, position = moto.read_calls(position, needles)
        writes_seen += sum(1 for c in calls if c["operation"] in WRITE_OPERATIONS)
        points.append((time.perf_counter(), writes_seen))
    finally:
        moto.recording(False)
    writes.pop("started_at")
    first = next((t for t, n in points if n > 0), None)
    last = next((t for t, n in points if n >= writes_seen), None)
    mean = None
    if first is not None and last is not None and last > first and writes_seen > 1:
        # The first sample with a write sees it up to 0.1 s late: count from that sample.
        first_count = next(n for t, n in points if t == first)
        mean = round((writes_seen - first_count) / (last - first), 1)
    peak = 0
    for i, (t0, n0) in enumerate(points):
        for t1, n1 in points[i + 1 :]:
            if t1 - t0 > 1.0 + 1e-9:
                break
            peak = max(peak, n1 - n0)
    result = {
        "max_writes_per_s_setting": DEFAULT_WRITES_PER_S,
        "api_writes": writes,
        "drained": drained is not None,
        "write_calls_seen": writes_seen,
        "mean_write_calls_per_s": mean,
        "max_write_calls_in_1s": peak,
        "sampling": "moto recorder read every 0.1 s; window = samples at most 1.0 s apart",
    }
    print(
        f"  {writes_seen} write calls, mean {mean}/s, at most {peak} within 1 s"
        f" (setting {DEFAULT_WRITES_PER_S:g}/s)",
        flush=True,
    )
    return result


async def _backup_latency(api: Api, proxy: ProxyProcess, tag: str) -> dict[str, Any]:
    """API create latency with the backup behind the proxy: without, then with 300 ms."""
    found: dict[str, Any] = {"without": {}, "with": {}}
    seq = itertools.count()

    async def create(n: int) -> None:
        await api.create(f"lat-{tag}-{next(seq)}", n)

    for mode in ("without", "with"):
        if mode == "with":
            proxy.latency(PROXY_LATENCY_S, "upstream")
        for clients in PROXY_CLIENTS:
            result = await run_ops(None, clients, create, duration_s=PROXY_PHASE_S)
            result.pop("started_at")
            found[mode][f"c{clients}"] = result
            print(
                f"  create c={clients} {mode} added latency: {result['ops_per_s']}/s"
                f"  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms"
                f"  errors {result['errors']}",
                flush=True,
            )
    proxy.pass_through()
    ratios: dict[str, Any] = {}
    for clients in PROXY_CLIENTS:
        key = f"c{clients}"
        row = {}
        for stat in ("p50_ms", "p99_ms"):
            base, slow = found["without"][key][stat], found["with"][key][stat]
            row[stat] = round(slow / base, 3) if base and slow is not None else None
        ratios[key] = row
    found["ratio_with_over_without"] = ratios
    found["added_latency"] = (
        f"{PROXY_LATENCY_S * 1000:g} ms on every request to the backup (proxy direction"
        " 'upstream'); both sides measured through the proxy, in this order"
    )
    return found


# -- the run ---------------------------------------------------------------------------


def log_events(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """How often each structlog ``event`` in ``names`` appears in a daemon's log."""
    found = dict.fromkeys(names, 0)
    with contextlib.suppress(OSError), path.open("rb") as handle:
        for line in handle:
            if not line.startswith(b"{"):
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line).get("event")
                if event in found:
                    found[event] += 1
    return found


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
    """PostgreSQL, moto and one daemon at a time; ``close()`` stops whatever runs."""

    def __init__(self, out: dict[str, Any], workdir: Path) -> None:
        self.out = out
        self.workdir = workdir
        self.pg = BenchPostgres()
        self.moto = MotoProcess(workdir)
        self.dsn = ""
        self.daemon: AwsDaemon | None = None
        self.api: Api | None = None
        self.key: str | None = None
        self._count = 0

    async def start(self) -> None:
        self.dsn = await asyncio.to_thread(self.pg.start)
        await self.pg.create_database()
        await asyncio.to_thread(self.moto.start)

    async def serve(self, label: str, env: dict[str, str]) -> Api:
        """Stop the running daemon, start another on the same database and key."""
        await self.stop_daemon()
        self._count += 1
        self.daemon = AwsDaemon(
            self.dsn, self.workdir / f"daemon-{self._count}", env, self.key, label
        )
        self.daemon.start()
        await self.daemon.wait_ready()
        self.key = self.daemon.key
        self.api = Api(self.daemon.base_url)
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
            rss = round(daemon.rss_bytes() / 2**20, 1)
        await asyncio.to_thread(daemon.stop)
        self.out.setdefault("daemons", []).append(
            {
                "label": daemon.label,
                "rss_at_stop_mib": rss,
                "shutdown_s": daemon.shutdown_s,
                "exit_code": daemon.exit_code,
                "log_events": log_events(daemon.log_path, LOG_EVENTS),
            }
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_daemon()
        self.out["moto_500_answers"] = self.moto.server_errors()
        await asyncio.to_thread(self.moto.stop)
        with contextlib.suppress(Exception):
            await self.pg.drop_database()
        await asyncio.to_thread(self.pg.stop)


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    stack = Stack(out, workdir)
    proxy: ProxyProcess | None = None
    tag = secrets.token_hex(3)
    prefix = f"smbench-{tag}/"
    backup_prefix = prefix + "backup/"
    out["config"]["name_prefix"] = backup_prefix
    try:
        await stack.start()
        moto = stack.moto
        assert moto.proc is not None
        api = await stack.serve(
            "throughput",
            aws_backup_env(moto.endpoint_url, backup_prefix, UNLIMITED_WRITES_PER_S),
        )
        assert stack.daemon is not None
        needles = (backup_prefix, (await api.status())["deployment_id"])
        progress = Progress(api)
        cpu = Cpu(
            {"daemon": stack.daemon.pid, "moto": moto.proc.pid, "client": os.getpid()},
            stack.pg.postmaster_pid,
        )

        print(f"first writes: {SECRETS} creates at {API_CLIENTS} clients", flush=True)
        ids: list[str] = []

        async def create(n: int) -> None:
            ids.append(await api.create(f"bulk-{tag}-{n}", n))

        out["first_writes"] = await _loaded_phase(
            "first writes", api, progress, cpu, SECRETS, create
        )
        # moto scans every secret of the region per lookup: the raw loops run now, at
        # the fill the throughput phase sees, and again after it (the machine is shared).
        print(f"raw: bare aiobotocore loops at {CONCURRENCY}, moto holding {len(ids)}+ secrets")
        raw: dict[str, Any] = {
            "create": await _raw(
                moto, prefix + "raw-create/", "create", RAW_CREATE_S, create_secrets=True
            ),
            "put_before": await _raw(moto, prefix + "raw-put/", "put", RAW_S, create_secrets=True),
        }
        out["raw"] = raw
        print(f"throughput: {len(ids)} PATCHes (one per secret) at {API_CLIENTS} clients")
        out["throughput"] = await _loaded_phase(
            "updates", api, progress, cpu, len(ids), lambda n: api.update(ids[n], n)
        )
        raw["put_after"] = await _raw(moto, prefix + "raw-put/", "put", RAW_S, create_secrets=False)
        rates = [raw[k]["ops_per_s"] for k in ("put_before", "put_after") if raw[k]["ops"]]
        raw["put_ops_per_s_mean"] = round(sum(rates) / len(rates), 1) if rates else None

        out["latency"] = await _steady_latency(api, progress, cpu, ids)
        out["calls"] = await _calls(api, progress, moto, needles, ids, tag)

        api = await stack.serve("limiter", aws_backup_env(moto.endpoint_url, backup_prefix, None))
        out["limiter"] = await _limiter(api, Progress(api), moto, needles, ids)

        print("backup latency: the backup behind a fault proxy", flush=True)
        proxy = ProxyProcess(moto.port)
        await asyncio.to_thread(proxy.start)
        api = await stack.serve(
            "backup latency", aws_backup_env(proxy.url, backup_prefix, UNLIMITED_WRITES_PER_S)
        )
        out["backup_latency"] = await _backup_latency(api, proxy, tag)
        out["backup_latency"]["backup_status_at_end"] = await api.backup_status()
    finally:
        await stack.close()
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
    out["two_daemons"] = await _two_daemons(workdir, tag)


# -- two daemons writing the same secrets ------------------------------------------------


async def _poll_versions(
    endpoint_url: str, names: dict[str, str], stop: asyncio.Event
) -> dict[str, Any]:
    """Read every entry's ``AWSCURRENT`` over and over, ending with one whole round begun
    after ``stop``; count versions that went backwards (an entry read at a lower
    secretmirror version than seen before)."""
    from secretmirror.stores.aws import parse_token

    seen: dict[str, int] = {}
    backwards: list[dict[str, Any]] = []
    reads = rounds = errors = 0
    async with secretsmanager_client(endpoint_url, AWS_REGION) as client:
        last = False
        while not last:
            last = stop.is_set()
            for sid, name in names.items():
                try:
                    answer = await client.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")
                except Exception:  # botocore's errors: counted, the poll goes on
                    errors += 1
                    continue
                reads += 1
                parsed = parse_token(answer.get("VersionId"))
                version = parsed[0] if parsed else 0
                if version < seen.get(sid, 0) and len(backwards) < 20:
                    backwards.append({"secret_id": sid, "seen": seen[sid], "then": version})
                seen[sid] = max(seen.get(sid, 0), version)
            rounds += 1
    return {"rounds": rounds, "reads": reads, "errors": errors, "backwards": backwards}


async def _two_daemons(workdir: Path, tag: str) -> dict[str, Any]:
    """Two daemons on one database PATCH the same secrets; both stores AWS behind a proxy.

    The primary and the backup are AWS on moto with different prefixes, reached
    through ``tests/faultproxy.py`` adding ``TWO_DAEMONS_LATENCY_S`` to every
    request, so each daemon's API writes the primary inline while both workers
    deliver to both stores: the interleavings of issue #11 part 1 (AWS has no
    conditional write). A poller reads every entry's current version straight
    from moto the whole time; afterwards verify runs.

    Both daemons reach the stores through the same endpoint URL: it is part of a
    store's location, which keys the delivery rows and so their leases. Two
    proxies (say, to give one daemon more latency) would make two locations for
    the same entries: two delivery streams that never wait for each other.
    """
    result: dict[str, Any] = {
        "secrets": TWO_DAEMONS_SECRETS,
        "clients_per_daemon": TWO_DAEMONS_CLIENTS,
        "load_s": TWO_DAEMONS_LOAD_S,
        "added_latency_s": TWO_DAEMONS_LATENCY_S,
    }
    pg = BenchPostgres()
    (workdir / "two-moto").mkdir(parents=True, exist_ok=True)
    moto = MotoProcess(workdir / "two-moto")
    proxy: ProxyProcess | None = None
    daemons: list[AwsDaemon] = []
    apis: list[Api] = []
    try:
        dsn = await asyncio.to_thread(pg.start)
        await pg.create_database()
        await asyncio.to_thread(moto.start)
        proxy = ProxyProcess(moto.port)
        await asyncio.to_thread(proxy.start)
        await asyncio.to_thread(proxy.latency, TWO_DAEMONS_LATENCY_S, "upstream")
        prefixes = {
            "primary": f"smbench-{tag}/two-primary/",
            "backup": f"smbench-{tag}/two-backup/",
        }
        env = {
            **aws_backup_env(proxy.url, prefixes["primary"], UNLIMITED_WRITES_PER_S, "PRIMARY"),
            **aws_backup_env(proxy.url, prefixes["backup"], UNLIMITED_WRITES_PER_S),
        }
        key = None
        for label in ("a", "b"):
            daemon = AwsDaemon(dsn, workdir / f"two-{label}", env, key, f"two daemons: {label}")
            daemon.start()
            await daemon.wait_ready()
            key = daemon.key
            daemons.append(daemon)
            apis.append(Api(daemon.base_url))
        print(
            f"two daemons: {TWO_DAEMONS_SECRETS} secrets, PATCHed from both at"
            f" {TWO_DAEMONS_CLIENTS} clients each for {TWO_DAEMONS_LOAD_S:g} s,"
            f" +{TWO_DAEMONS_LATENCY_S * 1000:g} ms on every AWS request",
            flush=True,
        )
        ids = [await apis[0].create(f"two-{tag}-{n}", n) for n in range(TWO_DAEMONS_SECRETS)]
        await _drained(apis[0])
        print("two daemons: raw PutSecretValue loop through the proxy", flush=True)
        result["raw_put_via_proxy"] = await aws_raw_loop(
            proxy.url,
            f"smbench-{tag}/two-raw/",
            2 * CONCURRENCY,
            operation="put",
            duration_s=RAW_CREATE_S,
        )
        before = (await apis[0].status())["replication"]
        stop = asyncio.Event()
        pollers = {
            role: asyncio.create_task(
                _poll_versions(moto.endpoint_url, {i: prefix + i for i in ids}, stop)
            )
            for role, prefix in prefixes.items()
        }
        started = time.perf_counter()
        loads = await asyncio.gather(
            *(
                run_ops(
                    None,
                    TWO_DAEMONS_CLIENTS,
                    lambda n, api=api: api.update(ids[n % len(ids)], n),
                    duration_s=TWO_DAEMONS_LOAD_S,
                )
                for api in apis
            )
        )
        await _drained(apis[0])
        drained_s = time.perf_counter() - started
        stop.set()  # each poller ends with one whole round read after the drain
        polls = {role: await task for role, task in pollers.items()}
        after = (await apis[0].status())["replication"]
        applied = {
            role: after[role]["applied"] - before[role]["applied"] for role in ("primary", "backup")
        }
        patches = sum(r["ops"] for r in loads)
        job = await apis[1].post("/admin/v1/reconcile", {"mode": "verify"})
        while job["status"] in ("queued", "running"):
            await asyncio.sleep(0.2)
            job = await apis[1].get(f"/admin/v1/jobs/{job['id']}")
        raw_put = result["raw_put_via_proxy"]["ops_per_s"]
        result.update(
            patches_ok=patches,
            patches_failed=sum(r["errors"] for r in loads),
            patch_latency={k: loads[0][k] for k in ("p50_ms", "p99_ms") if k in loads[0]},
            per_daemon=[{k: r[k] for k in ("ops", "errors", "ops_per_s")} for r in loads],
            seconds_to_drain=round(drained_s, 2),
            applied=applied,
            applied_per_s={r: round(n / drained_s, 1) for r, n in applied.items()},
            applied_per_s_vs_raw_put=round(sum(applied.values()) / drained_s / raw_put, 3)
            if raw_put
            else None,
            pollers=polls,
            verify={"status": job["status"], "stores": job["counts"].get("stores")},
        )
    finally:
        for api in apis:
            await api.close()
        logs = []
        for daemon in daemons:
            await asyncio.to_thread(daemon.stop)
            logs.append(log_events(daemon.log_path, LOG_EVENTS))
        result["log_events"] = logs
        result["moto_500_answers"] = moto.server_errors()
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
        await asyncio.to_thread(moto.stop)
        with contextlib.suppress(Exception):
            await pg.drop_database()
        await asyncio.to_thread(pg.stop)
    return result


async def _drained(api: Api) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        replication = (await api.status())["replication"]
        if all(t["pending"] == 0 for t in replication.values()):
            return
        if time.monotonic() > deadline:
            raise OpError(f"not drained after {DRAIN_TIMEOUT_S:g} s: {replication}")
        await asyncio.sleep(0.1)


def _two_daemon_targets(two: dict[str, Any]) -> dict[str, Any]:
    stores = (two.get("verify") or {}).get("stores") or {}
    backup = stores.get("backup", {})
    polls = two.get("pollers", {})
    return {
        "two_daemons_backup_stale_after_drain": _check("<=", 0, backup.get("stale")),
        "two_daemons_backup_drift_after_drain": _check(
            "<=",
            0,
            sum(backup.get(k, 0) for k in ("missing", "stale", "mismatch", "unreadable", "orphan"))
            if backup
            else None,
            what="missing + stale + mismatch + unreadable + orphan in the backup",
        ),
        "two_daemons_backup_versions_backwards": _check(
            "<=",
            0,
            len(polls["backup"]["backwards"]) if "backup" in polls else None,
            what="entries the poller read at a lower version than before",
        ),
    }


async def two_daemons_main() -> dict[str, Any]:
    """Only the two-daemon run (``python -m bench.replication two-daemons``)."""
    out: dict[str, Any] = {
        "benchmark": NAME + "_two_daemons",
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-two-"))
    try:
        out["two_daemons"] = await _two_daemons(workdir, secrets.token_hex(3))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"two-daemon bench failed: {out['error']}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    out["targets"] = _two_daemon_targets(out.get("two_daemons", {}))
    _print_two_daemons(out.get("two_daemons", {}))
    print_load(out)
    print_targets(out)
    return out


def _print_two_daemons(two: dict[str, Any]) -> None:
    if "patches_ok" not in two:
        return
    print(
        f"two daemons: {two['patches_ok']} PATCHes ok, {two['patches_failed']} failed;"
        f" drained {two['seconds_to_drain']} s after the load began; applied {two['applied']}"
        f" ({two['applied_per_s']}/s; raw put via proxy"
        f" {two['raw_put_via_proxy']['ops_per_s']}/s)"
    )
    for role, poll in two["pollers"].items():
        print(
            f"  poller {role}: {poll['reads']} reads in {poll['rounds']} rounds,"
            f" {len(poll['backwards'])} went backwards"
        )
    print(f"  verify: {two['verify']}")
    print(f"  log events: {two['log_events']}")


def _check(op: str, target: float, measured: float | None, *, what: str = "") -> dict[str, Any]:
    ok = measured is not None and (measured >= target if op == ">=" else measured <= target)
    check: dict[str, Any] = {"target": f"{op} {target:g}", "measured": measured, "pass": ok}
    if what:
        check["what"] = what
    return check


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    raw_put = out.get("raw", {}).get("put_ops_per_s_mean")
    throughput = out.get("throughput", {}).get("applied_per_s")
    latency = out.get("latency", {})
    calls = out.get("calls", {})
    limiter = out.get("limiter", {})
    targets: dict[str, Any] = {
        "throughput_vs_raw_put": _check(
            ">=",
            0.8,
            round(throughput / raw_put, 3) if throughput and raw_put else None,
            what=f"updates applied/s {throughput} / raw PutSecretValue/s {raw_put} (mean of"
            " the loops before and after the phase)",
        ),
        "latency_p50_ms_at_100_per_s": _check("<=", 50, latency.get("p50_ms")),
        "latency_p99_ms_at_100_per_s": _check("<=", 250, latency.get("p99_ms")),
        "calls_per_update_known": _check(
            "<=", 1, calls.get("update_known", {}).get("calls_per_change")
        ),
        "limiter_mean_write_calls_per_s": _check(
            "<=",
            DEFAULT_WRITES_PER_S * 1.05,
            limiter.get("mean_write_calls_per_s"),
            what="default max_writes_per_s 40 (+5%)",
        ),
    }
    targets.update(_two_daemon_targets(out.get("two_daemons", {})))
    ratios = out.get("backup_latency", {}).get("ratio_with_over_without", {})
    for key, row in ratios.items():
        for stat in ("p50_ms", "p99_ms"):
            targets[f"create_{stat[:3]}_{key}_300ms_backup_ratio"] = _check(
                "<=", 1.2, row.get(stat), what="create latency with / without 300 ms on the backup"
            )
    return targets


def _ratios(out: dict[str, Any]) -> dict[str, Any]:
    """Replication rates over the raw rates of the same run (informational beside targets)."""
    raw = out.get("raw", {})
    put, create = raw.get("put_ops_per_s_mean"), raw.get("create", {}).get("ops_per_s")

    def ratio(value: float | None, limit: float | None) -> float | None:
        return round(value / limit, 3) if value and limit else None

    first, updates = out.get("first_writes", {}), out.get("throughput", {})
    return {
        "first_writes_vs_raw_create": ratio(first.get("applied_per_s"), create),
        "updates_vs_raw_put": ratio(updates.get("applied_per_s"), put),
        "updates_while_writing_vs_raw_put": ratio(updates.get("applied_per_s_while_writing"), put),
        "updates_after_writes_vs_raw_put": ratio(updates.get("applied_per_s_after_writes"), put),
        # How close the latency phase's steady rate runs to moto's raw capacity here.
        "latency_offered_rate_vs_raw_put": ratio(STEADY_RATE, put),
    }


def print_summary(out: dict[str, Any]) -> None:
    print()
    raw = out.get("raw", {})
    for key in ("create", "put_before", "put_after"):
        r = raw.get(key)
        if r:
            print(f"raw {key:<15} {r['ops_per_s']:>8.1f}/s at {r['concurrency']}")
    for key in ("first_writes", "throughput"):
        r = out.get(key)
        if r:
            print(
                f"{key:<14} applied {r['applied_per_s']}/s overall"
                f" (while writing {r['applied_per_s_while_writing']}/s, after"
                f" {r['applied_per_s_after_writes']}/s, peak 1 s {r['peak_applied_per_s_1s']}/s);"
                f" API {r['api_writes']['ops_per_s']}/s; cpu {r['cpu']}"
            )
    print(f"ratios to the raw limits: {out.get('ratios')}")
    for daemon in out.get("daemons", []):
        print(f"daemon {daemon['label']!r}: log events {daemon['log_events']}")
    print(f"moto answered {out.get('moto_500_answers')} requests with a 500")
    _print_two_daemons(out.get("two_daemons", {}))
    print_load(out)
    print_targets(out)


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": NAME,
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
        "config": {
            "secrets": SECRETS,
            "replication_concurrency": CONCURRENCY,
            "api_clients": API_CLIENTS,
            "max_writes_per_s": UNLIMITED_WRITES_PER_S,
            "raw_s": RAW_S,
            "steady_rate_per_s": STEADY_RATE,
            "steady_s": STEADY_S,
            "values_bytes": len(json.dumps(values_for(0))),
            "verify_interval_s": 0,
        },
    }
    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-repl-"))
    try:
        await _measure(out, workdir)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"replication bench failed: {out['error']}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    out["ratios"] = _ratios(out)
    out["targets"] = _targets(out)
    print_summary(out)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["two-daemons"]:
        run_standalone(NAME + "_two_daemons", two_daemons_main)
    else:
        run_standalone(NAME, main)
