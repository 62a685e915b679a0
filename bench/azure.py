"""The Azure benchmark: a real daemon replicating to the in-repo Key Vault fake.

Everything runs on 127.0.0.1: PostgreSQL (``pgserver``, or a fresh database on
``SECRETMIRROR_BENCH_DATABASE_URL``), the Key Vault fake as a subprocess of
its own (``tests/azurefake.py``: HTTPS with a throwaway CA, Entra ID token
endpoint), and ``secretmirror serve`` subprocesses (sql primary in the main
database, ``azure`` backup on the fake with a service principal, configured
only through ``SECRETMIRROR_*`` plus ``SSL_CERT_FILE`` and
``AZURE_AUTHORITY_HOST``, the scheduled verify off).

Phases, in one run (each figure beside the raw limit measured in the same run):

1. **raw**: a bare write loop of the official SDK (``azure-keyvault-secrets``
   aio ``set_secret`` on ``azure-identity``'s ``ClientSecretCredential``) at
   ``replication.concurrency`` (16) against the same fake, on pre-created
   names: one Key Vault set per call, what one replicated update costs. The
   loop's own CPU per call is recorded: the SDK's pipeline is what bounds it
   on a small machine. For context only, a bare aiohttp PUT loop (one token,
   no SDK) shows what the fake itself takes.
2. **seed**: N secrets created through the API at 32 clients with the write
   limit lifted; first touches cost a read (404) and a set each.
3. **alongside** (limit lifted, ``max_writes_per_s`` = 100000, recorded):
   one PATCH per secret (N) at 32 clients while the worker replicates; events
   applied per second from the first PATCH until ``/admin/v1/status`` shows
   all applied (as ``bench/replication.py`` measures AWS). The daemon serves
   the API and replicates in one process, and the load generator shares the
   cores, so this mixes the API's cost into the figure; CPU per update is
   recorded. The fake's call log gives the calls per applied update (1 set
   when the store knows the entry, nothing else).
4. **throughput** (limit lifted, the target): the vault answers 503 while N
   more PATCHes commit (the worker only probes a store that is down, so a
   backlog builds), then comes back; events applied per second from its
   return until all are applied: replication alone. Target: >= 80% of the
   raw SDK loop, run again right after this phase; the limit is the mean of
   the two loops (the machine is shared). The daemon runs with a 0.2 s poll
   and a 0.5 s backoff cap so that it resumes within a poll.
5. **limiter** (the default ``max_writes_per_s``, 25, not set in the
   environment): a fresh daemon on the same database, a burst of PATCHes,
   events applied per second and sets per second reaching the fake in the
   steady part of the drain, with the fake enforcing Key Vault's documented
   quota (300 secret sets per 10 s per vault): target >= 90% of 25/s and no
   429 at all.

A measurement, not a test: targets are recorded as pass/miss and never fail the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from tests.azurefake import CLIENT_ID, CLIENT_SECRET, TENANT_ID, AzureFake

from bench._common import (
    latency_summary,
    machine_info,
    machine_load,
    now_iso,
    run_standalone,
)
from bench.api import ADMIN_TOKEN, BenchPostgres, CpuMeter, Daemon, values_for

NAME = "azure"
SECRETS = int(os.environ.get("SECRETMIRROR_BENCH_AZURE_SECRETS", "2000"))
#: ``replication.concurrency``'s default: the raw loop runs at the same concurrency.
CONCURRENCY = 16
API_CLIENTS = 32
RAW_S = float(os.environ.get("SECRETMIRROR_BENCH_AZURE_RAW_S", "8"))
RAW_NAMES = 256
DEFAULT_WRITES_PER_S = 25.0
UNLIMITED_WRITES_PER_S = 100_000
LIMITED_UPDATES = int(os.environ.get("SECRETMIRROR_BENCH_AZURE_LIMITED", "400"))
#: Key Vault's documented quota: 300 secret sets per 10 s per vault.
KEY_VAULT_SETS_PER_10_S = 300
DRAIN_TIMEOUT_S = 300.0
OUTAGE_NOTE = (
    "The backlog is built while the vault answers 503, then drains with nothing else "
    "running: the replication's own rate. It needs the worker back at full concurrency "
    "once the store answers: before RoleStore._call (stores/instrumented.py) marked a "
    "store up again after a success, this drain ran one delivery at a time."
)


class OpError(Exception):
    """A request that did not get the answer it should have."""


class AzureDaemon(Daemon):
    """``bench.api.Daemon`` with the azure backup's variables and the verify schedule off."""

    def __init__(
        self, dsn: str, workdir: Path, extra_env: dict[str, str], key: str | None = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(dsn, workdir)
        if key is not None:
            self.key = key
        self.extra_env = extra_env

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SECRETMIRROR_", "AZURE_"))}
        env.update(
            SECRETMIRROR_DATABASE_URL=self.dsn,
            SECRETMIRROR_DATA_DIR=str(self.workdir / "data"),
            SECRETMIRROR_LISTEN=f"127.0.0.1:{self.port}",
            SECRETMIRROR_ADMIN_TOKEN=ADMIN_TOKEN,
            SECRETMIRROR_ENCRYPTION_KEYS=self.key,
            SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S="0",
            # The throughput phase ends an outage: resume within a poll, never dead-letter.
            SECRETMIRROR_REPLICATION__POLL_INTERVAL_S="0.2",
            SECRETMIRROR_REPLICATION__BACKOFF_INITIAL_S="0.1",
            SECRETMIRROR_REPLICATION__BACKOFF_MAX_S="0.5",
            SECRETMIRROR_REPLICATION__MAX_ATTEMPTS="100000",
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


def azure_backup_env(
    fake: AzureFake, prefix: str, max_writes_per_s: float | None
) -> dict[str, str]:
    """``SECRETMIRROR_BACKUP__*`` for the azure store on the fake (None: the default rate)."""
    env = {
        "SECRETMIRROR_BACKUP__TYPE": "azure",
        "SECRETMIRROR_BACKUP__VAULT_URL": fake.url,
        "SECRETMIRROR_BACKUP__AUTH_METHOD": "service-principal",
        "SECRETMIRROR_BACKUP__TENANT_ID": TENANT_ID,
        "SECRETMIRROR_BACKUP__CLIENT_ID": CLIENT_ID,
        "SECRETMIRROR_BACKUP__CLIENT_SECRET": CLIENT_SECRET,
        "SECRETMIRROR_BACKUP__NAME_PREFIX": prefix,
        **fake.env(),
    }
    if max_writes_per_s is not None:
        env["SECRETMIRROR_BACKUP__MAX_WRITES_PER_S"] = str(max_writes_per_s)
    return env


# -- phase 1: the bare SDK loop -----------------------------------------------------------


async def raw_sdk_loop(fake: AzureFake, prefix: str, seconds: float) -> dict[str, Any]:
    """``set_secret`` on pre-created names at ``CONCURRENCY`` for ``seconds``."""
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.identity.aio import ClientSecretCredential
    from azure.keyvault.secrets.aio import SecretClient

    # Trust the fake's CA through the session's connector. (``connection_verify=<path>``
    # would make azure-core build an SSL context per request, and aiohttp then opens
    # a new TLS connection for every call: not how the SDK runs in production.)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=fake.ssl_context()))
    transport = AioHttpTransport(session=session, session_owner=False)
    credential = ClientSecretCredential(
        TENANT_ID, CLIENT_ID, CLIENT_SECRET, authority=fake.url, transport=transport
    )
    client = SecretClient(
        fake.url, credential, verify_challenge_resource=False, transport=transport
    )
    names = [f"{prefix}raw-{i}" for i in range(RAW_NAMES)]
    async with session, credential, client:
        for start in range(0, len(names), CONCURRENCY):
            await asyncio.gather(
                *(client.set_secret(n, "{}") for n in names[start : start + CONCURRENCY])
            )
        latencies: list[float] = []
        errors = 0
        done = 0
        deadline = time.monotonic() + seconds

        async def worker(index: int) -> None:
            nonlocal errors, done
            n = index
            while time.monotonic() < deadline:
                name = names[n % len(names)]
                n += CONCURRENCY
                started = time.perf_counter()
                try:
                    await client.set_secret(
                        name,
                        f'{{"n":"{n}","password":"{values_for(n)["password"]}"}}',
                        content_type="application/json",
                        tags={"bench": "raw", "n": str(n)},
                    )
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                done += 1

        started = time.monotonic()
        cpu = time.process_time()
        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        wall = time.monotonic() - started
        cpu = time.process_time() - cpu
    return {
        "concurrency": CONCURRENCY,
        "seconds": round(wall, 3),
        "writes": done,
        "errors": errors,
        "ops_s": round(done / wall, 1),
        "latency": latency_summary(latencies),
        "client_cpu_ms_per_op": round(cpu * 1000 / max(done, 1), 2),
    }


async def raw_rest_loop(fake: AzureFake, prefix: str, seconds: float) -> dict[str, Any]:
    """For context, not a target: bare aiohttp PUTs (one token) at ``CONCURRENCY``.

    What the fake itself can take on this machine; the SDK loop above is the
    target's reference, as the issue asks.
    """
    from azure.identity.aio import ClientSecretCredential

    credential = ClientSecretCredential(
        TENANT_ID, CLIENT_ID, CLIENT_SECRET, authority=fake.url, connection_verify=str(fake.ca_file)
    )
    async with credential:
        token = (await credential.get_token("https://vault.azure.net/.default")).token
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(ssl=fake.ssl_context(), limit=CONCURRENCY)
    done = errors = 0
    deadline = time.monotonic() + seconds
    cpu = time.process_time()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(index: int) -> None:
            nonlocal done, errors
            n = index
            while time.monotonic() < deadline:
                url = f"{fake.url}/secrets/{prefix}rest-{n % RAW_NAMES}?api-version=7.5"
                n += CONCURRENCY
                body = {"value": "{}", "contentType": "application/json", "tags": {"n": str(n)}}
                async with session.put(url, json=body) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1
                    else:
                        errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        wall = time.monotonic() - started
    return {
        "concurrency": CONCURRENCY,
        "seconds": round(wall, 3),
        "writes": done,
        "errors": errors,
        "ops_s": round(done / wall, 1),
        "client_cpu_ms_per_op": round((time.process_time() - cpu) * 1000 / max(done, 1), 2),
    }


# -- the API and the daemon's status --------------------------------------------------------


class Api:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            connector=aiohttp.TCPConnector(limit=API_CLIENTS),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        await self.session.close()

    async def create(self, name: str, n: int) -> str:
        body = {"name": name, "values": values_for(n)}
        async with self.session.post(f"{self.base_url}/api/v1/secrets", json=body) as resp:
            if resp.status != 201:
                raise OpError(f"create: HTTP {resp.status}")
            return str((await resp.json())["id"])

    async def update(self, secret_id: str, n: int) -> None:
        body = {"values": values_for(n + 7)}
        url = f"{self.base_url}/api/v1/secrets/{secret_id}"
        async with self.session.patch(url, json=body) as resp:
            if resp.status != 200:
                raise OpError(f"update: HTTP {resp.status}")

    async def replication(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/admin/v1/status") as resp:
            body = await resp.json()
        backup: dict[str, Any] = body["replication"]["backup"]
        return backup


async def in_parallel(items: list[Any], clients: int, call: Any) -> float:
    """Run ``call(item, index)`` over ``items`` at ``clients``; the wall seconds it took."""
    queue = iter(enumerate(items))
    started = time.monotonic()

    async def worker() -> None:
        for index, item in queue:
            await call(item, index)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.monotonic() - started


async def drain(api: Api, started: float, baseline: int, expected: int) -> dict[str, Any]:
    """Sample ``applied`` every 0.1 s until ``expected`` more events are applied."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = await api.replication()
        applied = int(state["applied"]) - baseline
        samples.append((time.monotonic() - started, applied))
        if applied >= expected and state["pending"] == 0:
            break
        await asyncio.sleep(0.1)  # the sampling interval
    else:
        raise OpError(f"not drained in {DRAIN_TIMEOUT_S} s")
    wall = samples[-1][0]
    dead = int((await api.replication())["dead"])
    return {"wall_s": round(wall, 3), "applied": samples[-1][1], "dead": dead, "samples": samples}


async def until_pending(api: Api, count: int) -> None:
    """Wait until ``count`` deliveries are pending (every update committed, none applied)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while (await api.replication())["pending"] < count:
        if time.monotonic() > deadline:
            raise OpError(f"the backlog did not reach {count}")
        await asyncio.sleep(0.1)  # the sampling interval


def steady_rate(samples: list[tuple[float, int]], total: int) -> float | None:
    """Events per second between 10% and 90% of ``total`` applied (ramp-up and tail cut)."""
    low = next((s for s in samples if s[1] >= total * 0.1), None)
    high = next((s for s in samples if s[1] >= total * 0.9), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def sets_per_second(calls: list[dict[str, Any]]) -> float | None:
    """Sets reaching the fake per second between the 10th and 90th percentile set."""
    times = sorted(c["at"] for c in calls if c["op"] == "set" and c["status"] == 200)
    if len(times) < 20:
        return None
    low, high = int(len(times) * 0.1), int(len(times) * 0.9)
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else None


def check(target: str, measured: float | None, goal: float) -> dict[str, Any]:
    passed = measured is not None and measured >= goal
    return {"target": target, "measured": measured, "pass": passed}


# -- the run ------------------------------------------------------------------------------


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    fake = AzureFake()
    pg = BenchPostgres()
    daemons: list[AzureDaemon] = []
    try:
        out["fake"] = {"url": fake.url}
        prefix = f"b{uuid.uuid4().hex[:10]}-"
        print("raw: the official SDK's bare set loop ...", flush=True)
        fake_cpu = _fake_cpu(fake)
        raw = await raw_sdk_loop(fake, f"{prefix}r-", RAW_S)
        raw["fake_cpu_ms_per_op"] = round(
            (_fake_cpu(fake) - fake_cpu) * 1000 / max(raw["writes"] + RAW_NAMES, 1), 2
        )
        out["raw_sdk"] = raw
        print(f"  {raw['ops_s']} sets/s at {CONCURRENCY}", flush=True)
        rest = await raw_rest_loop(fake, f"{prefix}r-", RAW_S)
        out["raw_rest_context"] = rest
        print(f"  (bare aiohttp PUTs, for context: {rest['ops_s']} sets/s)", flush=True)

        dsn = pg.start()
        await pg.create_database()
        lifted = AzureDaemon(
            dsn,
            workdir / "lifted",
            azure_backup_env(fake, prefix, UNLIMITED_WRITES_PER_S),
        )
        daemons.append(lifted)
        lifted.start()
        await lifted.wait_ready()
        api = Api(lifted.base_url)
        try:
            print(f"seed: {SECRETS} creates through the API ...", flush=True)
            mark = fake.mark()
            baseline = int((await api.replication())["applied"])
            started = time.monotonic()
            ids: list[str] = [""] * SECRETS

            async def create(n: int, index: int) -> None:
                ids[index] = await api.create(f"bench-{n}", n)

            api_s = await in_parallel(list(range(SECRETS)), API_CLIENTS, create)
            seeded = await drain(api, started, baseline, SECRETS)
            seed_calls = fake.call_log(mark, prefix)
            out["seed"] = {
                "secrets": SECRETS,
                "api_s": round(api_s, 3),
                "drain_s": seeded["wall_s"],
                "applied_per_s": round(SECRETS / seeded["wall_s"], 1),
                "calls": _count(seed_calls),
            }

            print(f"alongside: {SECRETS} updates while replicating ...", flush=True)
            mark = fake.mark()
            baseline = int((await api.replication())["applied"])
            started = time.monotonic()

            async def update(secret_id: str, index: int) -> None:
                await api.update(secret_id, index)

            meter = CpuMeter(lifted.pid, pg.postmaster_pid)
            fake_cpu = _fake_cpu(fake)
            cpu_before = meter.snapshot()
            api_s = await in_parallel(ids, API_CLIENTS, update)
            drained = await drain(api, started, baseline, SECRETS)
            cpu = CpuMeter.diff(cpu_before, meter.snapshot(), drained["wall_s"])
            cpu["fake_s"] = round(_fake_cpu(fake) - fake_cpu, 3)
            cpu["ms_per_update"] = {
                who: round(cpu[f"{who}_s"] * 1000 / SECRETS, 2)
                for who in ("daemon", "postgres", "fake", "client")
                if cpu.get(f"{who}_s") is not None
            }
            calls = fake.call_log(mark, prefix)
            rate = SECRETS / drained["wall_s"]
            out["alongside_api_writes"] = {
                "cpu": cpu,
                "updates": SECRETS,
                "max_writes_per_s": UNLIMITED_WRITES_PER_S,
                "api_s": round(api_s, 3),
                "api_updates_per_s": round(SECRETS / api_s, 1),
                "wall_s": drained["wall_s"],
                "applied_per_s": round(rate, 1),
                "applied_per_s_steady": _round(steady_rate(drained["samples"], SECRETS)),
                "sets_per_s_at_fake": _round(sets_per_second(calls)),
                "dead": drained["dead"],
            }
            out["calls_per_update"] = {
                "counts": _count(calls),
                "sets_per_update": round(sum(1 for c in calls if c["op"] == "set") / SECRETS, 3),
            }
            alongside_rate = rate
            print(f"  {rate:.1f} applied/s (API {SECRETS / api_s:.0f} updates/s)", flush=True)

            print(f"throughput: a backlog of {SECRETS} updates after an outage ...", flush=True)
            # The vault answers 503 while the updates commit (the worker only probes a
            # store that is down, so the backlog builds), then comes back.
            fake.inject(503, 10**9)
            baseline = int((await api.replication())["applied"])
            await in_parallel(ids, API_CLIENTS, lambda sid, i: api.update(sid, i + 500))
            await until_pending(api, SECRETS)
            mark = fake.mark()
            started = time.monotonic()
            fake.reset()
            drained = await drain(api, started, baseline, SECRETS)
            calls = fake.call_log(mark, prefix)
            rate = SECRETS / drained["wall_s"]
            throughput_rate = rate
            out["throughput"] = {
                "updates": SECRETS,
                "max_writes_per_s": UNLIMITED_WRITES_PER_S,
                "drain_s": drained["wall_s"],
                "applied_per_s": round(rate, 1),
                "applied_per_s_steady": _round(steady_rate(drained["samples"], SECRETS)),
                "sets_per_s_at_fake": _round(sets_per_second(calls)),
                "calls": _count(calls),
                "dead": drained["dead"],
                "note": OUTAGE_NOTE,
            }
            print(f"  {rate:.1f} applied/s draining the backlog", flush=True)
        finally:
            await api.close()
        lifted.stop()

        print("raw again: the SDK loop after the lifted phases ...", flush=True)
        raw_after = await raw_sdk_loop(fake, f"{prefix}r-", RAW_S)
        out["raw_sdk_after"] = raw_after
        limit = (raw["ops_s"] + raw_after["ops_s"]) / 2
        out["raw_sdk_limit"] = {
            "ops_s": round(limit, 1),
            "what": "mean of the SDK loop right before and right after the lifted phases",
        }
        out["throughput"]["ratio_to_raw"] = round(throughput_rate / limit, 3)
        out["alongside_api_writes"]["ratio_to_raw"] = round(alongside_rate / limit, 3)
        print(
            f"  {raw_after['ops_s']} sets/s; limit {limit:.1f}: throughput "
            f"{throughput_rate / limit:.0%}, alongside API writes {alongside_rate / limit:.0%}",
            flush=True,
        )

        print("limiter: the default max_writes_per_s (25) under Key Vault's quota ...", flush=True)
        fake.quota(KEY_VAULT_SETS_PER_10_S, 10.0)
        limited = AzureDaemon(
            dsn, workdir / "limited", azure_backup_env(fake, prefix, None), key=lifted.key
        )
        daemons.append(limited)
        limited.start()
        await limited.wait_ready()
        api = Api(limited.base_url)
        try:
            chosen = ids[:LIMITED_UPDATES]
            mark = fake.mark()
            baseline = int((await api.replication())["applied"])
            started = time.monotonic()

            async def update_limited(secret_id: str, index: int) -> None:
                await api.update(secret_id, index + 1000)

            await in_parallel(chosen, API_CLIENTS, update_limited)
            drained = await drain(api, started, baseline, len(chosen))
            calls = fake.call_log(mark, prefix)
            steady = steady_rate(drained["samples"], len(chosen))
            at_fake = sets_per_second(calls)
            throttled = sum(1 for c in calls if c["status"] == 429)
            out["limiter"] = {
                "updates": len(chosen),
                "max_writes_per_s": DEFAULT_WRITES_PER_S,
                "key_vault_quota": f"{KEY_VAULT_SETS_PER_10_S} sets per 10 s",
                "drain_s": drained["wall_s"],
                "applied_per_s_steady": _round(steady),
                "sets_per_s_at_fake": _round(at_fake),
                "throttled_answers": throttled,
                "dead": drained["dead"],
                "calls": _count(calls),
            }
            print(f"  {steady} applied/s, {at_fake} sets/s at the fake, 429s: {throttled}")
        finally:
            await api.close()
            fake.quota(None)

        out["targets"] = {
            "limited_applied_vs_default_limit": check(
                f">= 90% of {DEFAULT_WRITES_PER_S:g}/s",
                _ratio(out["limiter"]["applied_per_s_steady"], DEFAULT_WRITES_PER_S),
                0.9,
            ),
            "limited_no_throttling": {
                "target": "0 answers 429 at the default limit under Key Vault's quota",
                "measured": out["limiter"]["throttled_answers"],
                "pass": out["limiter"]["throttled_answers"] == 0,
            },
            "lifted_applied_vs_raw_sdk": check(
                ">= 80% of the bare SDK set loop (mean of before and after)",
                out["throughput"]["ratio_to_raw"],
                0.8,
            ),
            "sets_per_update": {
                "target": "1 set per replicated update of a known entry",
                "measured": out["calls_per_update"]["sets_per_update"],
                "pass": out["calls_per_update"]["sets_per_update"] == 1.0,
            },
        }
    finally:
        for daemon in daemons:
            with contextlib.suppress(Exception):
                daemon.stop()
        with contextlib.suppress(Exception):
            await pg.drop_database()
        pg.stop()
        fake.stop()


def _count(calls: list[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for call in calls:
        key = call["op"] if call["status"] < 400 else f"{call['op']}:{call['status']}"
        found[key] = found.get(key, 0) + 1
    return dict(sorted(found.items()))


def _fake_cpu(fake: AzureFake) -> float:
    """CPU seconds the fake's process has used so far."""
    if fake.pid is None:
        return 0.0
    times = psutil.Process(fake.pid).cpu_times()
    return float(times.user + times.system)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ratio(value: float | None, limit: float) -> float | None:
    return None if value is None else round(value / limit, 3)


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": NAME,
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-azure-"))
    try:
        await _measure(out, workdir)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    return out


if __name__ == "__main__":
    run_standalone(NAME, main)
