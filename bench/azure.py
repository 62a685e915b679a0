"""The Azure benchmark: a real daemon replicating to the in-repo Key Vault fake."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from tests.azurefake import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    AzureFake,
    azure_settings,
    sdk_client,
)
from tests.daemon_proc import store_env

from bench._common import check, knob, measured, ratio, rounded, run_standalone
from bench._harness import (
    VERIFY_OFF,
    Api,
    Cpu,
    Daemon,
    Op,
    OpError,
    Progress,
    cpu_seconds,
    postgres,
    run_ops,
    running,
    serving,
    steady_rate,
    values_for,
    write_limit,
)

NAME = "azure"
SECRETS = knob("SECRETMIRROR_BENCH_AZURE_SECRETS", 2000, 200)
#: ``replication.concurrency``'s default: the raw loop runs at the same concurrency.
CONCURRENCY = 16
API_CLIENTS = 32
RAW_S = knob("SECRETMIRROR_BENCH_AZURE_RAW_S", 8.0, 2.0)
RAW_NAMES = 256
DEFAULT_WRITES_PER_S = 25.0
UNLIMITED_WRITES_PER_S = 100_000
LIMITED_UPDATES = knob("SECRETMIRROR_BENCH_AZURE_LIMITED", 400, 100)
#: Key Vault's documented quota: 300 secret sets per 10 s per vault.
KEY_VAULT_SETS_PER_10_S = 300
DRAIN_TIMEOUT_S = 300.0
OUTAGE_NOTE = (
    "The backlog is built while the vault answers 503, then drains with nothing else "
    "running: the replication's own rate. It needs the worker back at full concurrency "
    "once the store answers: before RoleStore._call (stores/instrumented.py) marked a "
    "store up again after a success, this drain ran one delivery at a time."
)


#: The throughput phase ends an outage: resume within a poll, never dead-letter.
RESUME_FAST = {
    "SECRETMIRROR_REPLICATION__POLL_INTERVAL_S": "0.2",
    "SECRETMIRROR_REPLICATION__BACKOFF_INITIAL_S": "0.1",
    "SECRETMIRROR_REPLICATION__BACKOFF_MAX_S": "0.5",
    "SECRETMIRROR_REPLICATION__MAX_ATTEMPTS": "100000",
}


def azure_backup_env(
    fake: AzureFake, prefix: str, max_writes_per_s: float | None
) -> dict[str, str]:
    """The azure backup on the fake (None: the default write rate), the verify schedule off."""
    fields = {"type": "azure", **azure_settings(fake, prefix, **write_limit(max_writes_per_s))}
    return {**VERIFY_OFF, **RESUME_FAST, **store_env("backup", fields), **fake.env()}


# -- phase 1: the bare SDK loop -----------------------------------------------------------


async def raw_sdk_loop(fake: AzureFake, prefix: str, seconds: float) -> dict[str, Any]:
    """``set_secret`` on pre-created names at ``CONCURRENCY`` for ``seconds``."""
    from azure.core.pipeline.transport import AioHttpTransport

    # Trust the fake's CA through the session's connector. (``connection_verify=<path>``
    # would make azure-core build an SSL context per request, and aiohttp then opens
    # a new TLS connection for every call: not how the SDK runs in production.)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=fake.ssl_context()))
    transport = AioHttpTransport(session=session, session_owner=False)
    names = [f"{prefix}raw-{i}" for i in range(RAW_NAMES)]
    async with session, sdk_client(fake, transport=transport) as client:
        for start in range(0, len(names), CONCURRENCY):
            await asyncio.gather(
                *(client.set_secret(n, "{}") for n in names[start : start + CONCURRENCY])
            )

        async def set_secret(_worker: int, n: int) -> None:
            await client.set_secret(
                names[n % len(names)],
                f'{{"n":"{n}","password":"{values_for(n)["password"]}"}}',
                content_type="application/json",
                tags={"bench": "raw", "n": str(n)},
            )

        return await _raw_run(set_secret, seconds, failures=(Exception,))


async def _raw_run(op: Op, seconds: float, **run: Any) -> dict[str, Any]:
    """``run_ops`` of ``op`` at ``CONCURRENCY`` for ``seconds``, with this process's CPU."""
    cpu = time.process_time()
    found = await run_ops(op, CONCURRENCY, duration_s=seconds, **run)
    cpu = time.process_time() - cpu
    return {
        "concurrency": CONCURRENCY,
        "seconds": found["seconds"],
        "writes": found["ops"],
        "errors": found["errors"],
        "ops_s": found["ops_per_s"],
        "latency": {k: v for k, v in found.items() if k.endswith("_ms")},
        "client_cpu_ms_per_op": round(cpu * 1000 / max(found["ops"], 1), 2),
    }


async def raw_rest_loop(fake: AzureFake, prefix: str, seconds: float) -> dict[str, Any]:
    """For context, not a target: bare aiohttp PUTs (one token) at ``CONCURRENCY``."""
    from azure.identity.aio import ClientSecretCredential

    credential = ClientSecretCredential(
        TENANT_ID, CLIENT_ID, CLIENT_SECRET, authority=fake.url, connection_verify=str(fake.ca_file)
    )
    async with credential:
        token = (await credential.get_token("https://vault.azure.net/.default")).token
    headers = {"Authorization": f"Bearer {token}"}
    async with Api(fake.url, CONCURRENCY, headers, ssl=fake.ssl_context()) as rest:

        async def put(_worker: int, n: int) -> None:
            path = f"/secrets/{prefix}rest-{n % RAW_NAMES}?api-version=7.5"
            body = {"value": "{}", "contentType": "application/json", "tags": {"n": str(n)}}
            await rest.call("PUT", path, body, parse=False)

        return await _raw_run(put, seconds)


# -- the daemon's progress ------------------------------------------------------------------


def update_op(api: Api, ids: list[str], offset: int = 0) -> Any:
    """One PATCH per secret (``run_ops`` with ``count=len(ids)``), new values each time."""

    async def update(_worker: int, n: int) -> None:
        await api.update(ids[n], values_for(n + offset + 7))

    return update


async def drain(progress: Progress, started: float, baseline: int, expected: int) -> dict[str, Any]:
    """Sample ``applied`` every 0.1 s until ``expected`` more events are applied."""
    at = await progress.drained(baseline + expected)
    samples = [(t - started, done - baseline) for t, done, _ in progress.samples if t >= started]
    dead = int((await progress.api.backup_status())["dead"])
    return {
        "wall_s": round(at - started, 3),
        "applied": samples[-1][1],
        "dead": dead,
        "samples": samples,
    }


async def written(
    fake: AzureFake, progress: Progress, prefix: str, op: Op, count: int
) -> dict[str, Any]:
    """``count`` API writes at ``API_CLIENTS``, then the drain of what they caused: the API's
    seconds (``api_s``), ``drain``'s figures and the fake's ``calls`` since the first write."""
    mark = fake.mark()
    baseline = (await progress.sample())[1]
    started = time.perf_counter()
    api_s = (await run_ops(op, API_CLIENTS, count=count))["seconds"]
    drained = await drain(progress, started, baseline, count)
    return {**drained, "api_s": api_s, "calls": fake.call_log(mark, prefix)}


async def until_pending(api: Api, count: int) -> None:
    """Wait until ``count`` deliveries are pending (every update committed, none applied)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while (await api.backup_status())["pending"] < count:
        if time.monotonic() > deadline:
            raise OpError(f"the backlog did not reach {count}")
        await asyncio.sleep(0.1)  # the sampling interval


def sets_per_second(calls: list[dict[str, Any]]) -> float | None:
    """Sets reaching the fake per second between the 10th and 90th percentile set."""
    times = sorted(c["at"] for c in calls if c["op"] == "set" and c["status"] == 200)
    if len(times) < 20:
        return None
    low, high = int(len(times) * 0.1), int(len(times) * 0.9)
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else None


# -- the run ------------------------------------------------------------------------------


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    async with running(AzureFake) as fake:
        out["fake"] = {"url": fake.url}
        prefix = f"b{uuid.uuid4().hex[:10]}-"
        print("raw: the official SDK's bare set loop ...")
        fake_cpu = cpu_seconds(fake.pid) or 0.0
        raw = await raw_sdk_loop(fake, f"{prefix}r-", RAW_S)
        used = (cpu_seconds(fake.pid) or 0.0) - fake_cpu
        raw["fake_cpu_ms_per_op"] = round(used * 1000 / max(raw["writes"] + RAW_NAMES, 1), 2)
        out["raw_sdk"] = raw
        print(f"  {raw['ops_s']} sets/s at {CONCURRENCY}")
        rest = await raw_rest_loop(fake, f"{prefix}r-", RAW_S)
        out["raw_rest_context"] = rest
        print(f"  (bare aiohttp PUTs, for context: {rest['ops_s']} sets/s)")
        async with postgres() as pg:
            dsn = await pg.database()
            env = azure_backup_env(fake, prefix, UNLIMITED_WRITES_PER_S)
            lifted = Daemon(dsn, workdir / "lifted", env)
            async with serving(lifted, API_CLIENTS) as api:
                cpu = Cpu({"daemon": lifted.pid, "fake": fake.pid}, pg.postmaster_pid)
                ids = await _lifted(out, fake, api, cpu, prefix)
            print("raw again: the SDK loop after the lifted phases ...")
            raw_after = await raw_sdk_loop(fake, f"{prefix}r-", RAW_S)
            out["raw_sdk_after"] = raw_after
            limit = (raw["ops_s"] + raw_after["ops_s"]) / 2
            out["raw_sdk_limit"] = {
                "ops_s": round(limit, 1),
                "what": "mean of the SDK loop right before and right after the lifted phases",
            }
            for phase in ("throughput", "alongside_api_writes"):
                out[phase]["ratio_to_raw"] = round(out[phase]["applied_per_s"] / limit, 3)
            print(f"  {raw_after['ops_s']} sets/s; limit {limit:.1f}")

            print("limiter: the default max_writes_per_s (25) under Key Vault's quota")
            fake.quota(KEY_VAULT_SETS_PER_10_S, 10.0)
            env = azure_backup_env(fake, prefix, None)
            limited = Daemon(dsn, workdir / "limited", env, key=lifted.key)
            try:
                async with serving(limited, API_CLIENTS) as api:
                    out["limiter"] = await _limiter(fake, api, ids[:LIMITED_UPDATES], prefix)
            finally:
                fake.quota(None)


async def _lifted(
    out: dict[str, Any], fake: AzureFake, api: Api, cpu: Cpu, prefix: str
) -> list[str]:
    """Seed, updates alongside the API's writes, and a backlog after an outage; the ids."""
    progress = Progress(api, DRAIN_TIMEOUT_S)
    print(f"seed: {SECRETS} creates through the API ...")
    ids: list[str] = [""] * SECRETS

    async def create(_worker: int, n: int) -> None:
        ids[n] = await api.create(f"bench-{n}", n)

    seeded = await written(fake, progress, prefix, create, SECRETS)
    out["seed"] = {
        "secrets": SECRETS,
        "api_s": round(seeded["api_s"], 3),
        "drain_s": seeded["wall_s"],
        "applied_per_s": round(SECRETS / seeded["wall_s"], 1),
        "calls": _count(seeded["calls"]),
    }

    print(f"alongside: {SECRETS} updates while replicating ...")
    cpu.start()
    drained = await written(fake, progress, prefix, update_op(api, ids), SECRETS)
    used = cpu.stop(SECRETS)
    used["ms_per_update"] = used.pop("ms_per_op")
    api_s, calls = drained["api_s"], drained["calls"]
    rate = SECRETS / drained["wall_s"]
    out["alongside_api_writes"] = {
        "cpu": used,
        "updates": SECRETS,
        "max_writes_per_s": UNLIMITED_WRITES_PER_S,
        "api_s": round(api_s, 3),
        "api_updates_per_s": round(SECRETS / api_s, 1),
        "wall_s": drained["wall_s"],
        "applied_per_s": round(rate, 1),
        "applied_per_s_steady": rounded(steady_rate(drained["samples"], SECRETS)),
        "sets_per_s_at_fake": rounded(sets_per_second(calls)),
        "dead": drained["dead"],
    }
    out["calls_per_update"] = {
        "counts": _count(calls),
        "sets_per_update": round(sum(1 for c in calls if c["op"] == "set") / SECRETS, 3),
    }
    print(f"  {rate:.1f} applied/s (API {SECRETS / api_s:.0f} updates/s)")

    print(f"throughput: a backlog of {SECRETS} updates after an outage ...")
    # The vault answers 503 while the updates commit (the worker only probes a
    # store that is down, so the backlog builds), then comes back.
    fake.inject(503, 10**9)
    baseline = int((await api.backup_status())["applied"])
    await run_ops(update_op(api, ids, 500), API_CLIENTS, count=SECRETS)
    await until_pending(api, SECRETS)
    mark = fake.mark()
    started = time.perf_counter()
    fake.reset()
    drained = await drain(progress, started, baseline, SECRETS)
    calls = fake.call_log(mark, prefix)
    rate = SECRETS / drained["wall_s"]
    out["throughput"] = {
        "updates": SECRETS,
        "max_writes_per_s": UNLIMITED_WRITES_PER_S,
        "drain_s": drained["wall_s"],
        "applied_per_s": round(rate, 1),
        "applied_per_s_steady": rounded(steady_rate(drained["samples"], SECRETS)),
        "sets_per_s_at_fake": rounded(sets_per_second(calls)),
        "calls": _count(calls),
        "dead": drained["dead"],
        "note": OUTAGE_NOTE,
    }
    print(f"  {rate:.1f} applied/s draining the backlog")
    return ids


async def _limiter(fake: AzureFake, api: Api, chosen: list[str], prefix: str) -> dict[str, Any]:
    progress = Progress(api, DRAIN_TIMEOUT_S)
    drained = await written(fake, progress, prefix, update_op(api, chosen, 1000), len(chosen))
    calls = drained["calls"]
    steady = steady_rate(drained["samples"], len(chosen))
    at_fake = sets_per_second(calls)
    throttled = sum(1 for c in calls if c["status"] == 429)
    print(f"  {steady} applied/s, {at_fake} sets/s at the fake, 429s: {throttled}")
    return {
        "updates": len(chosen),
        "max_writes_per_s": DEFAULT_WRITES_PER_S,
        "key_vault_quota": f"{KEY_VAULT_SETS_PER_10_S} sets per 10 s",
        "drain_s": drained["wall_s"],
        "applied_per_s_steady": rounded(steady),
        "sets_per_s_at_fake": rounded(at_fake),
        "throttled_answers": throttled,
        "dead": drained["dead"],
        "calls": _count(calls),
    }


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    limiter = out.get("limiter", {})
    sets = out.get("calls_per_update", {}).get("sets_per_update")
    return {
        "limited_applied_vs_default_limit": check(
            ">=",
            0.9,
            ratio(limiter.get("applied_per_s_steady"), DEFAULT_WRITES_PER_S),
            f"of the default {DEFAULT_WRITES_PER_S:g}/s",
        ),
        "limited_no_throttling": check(
            "<=",
            0,
            limiter.get("throttled_answers"),
            "answers 429 at the default limit under Key Vault's quota",
        ),
        "lifted_applied_vs_raw_sdk": check(
            ">=",
            0.8,
            out.get("throughput", {}).get("ratio_to_raw"),
            "of the bare SDK set loop (mean of before and after)",
        ),
        "sets_per_update": {
            **check("<=", 1, sets, "set per replicated update of a known entry"),
            "pass": sets == 1.0,
        },
    }


def _count(calls: list[dict[str, Any]]) -> dict[str, int]:
    """The fake's calls by operation, a failed one by operation and status."""
    found = collections.Counter(
        c["op"] if c["status"] < 400 else f"{c['op']}:{c['status']}" for c in calls
    )
    return dict(sorted(found.items()))


async def main() -> dict[str, Any]:
    config = {
        "secrets": SECRETS,
        "replication_concurrency": CONCURRENCY,
        "api_clients": API_CLIENTS,
        "raw_s": RAW_S,
        "limited_updates": LIMITED_UPDATES,
    }
    return await measured(NAME, _measure, config=config, targets=_targets)


if __name__ == "__main__":
    run_standalone(NAME, main)
