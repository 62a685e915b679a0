"""The replication benchmark: a real daemon replicating to AWS Secrets Manager on moto."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from tests.faultproxy import ProxyProcess
from tests.load import open_loop
from tests.moto import MotoServer, secrets_client
from tests.prometheus import (
    histogram_buckets,
    histogram_delta,
    histogram_fraction_le,
    histogram_quantile,
)

from bench._common import (
    check,
    knob,
    latency_summary,
    mean,
    measured,
    ratio,
    rounded,
    run_standalone,
)
from bench._harness import (
    LOG_EVENTS,
    VERIFY_OFF,
    Api,
    Cpu,
    Daemon,
    OpError,
    Progress,
    Stack,
    aws_env,
    aws_raw_loop,
    aws_stack,
    count_calls,
    counted_phases,
    every,
    first_writes,
    print_replicated,
    run_ops,
    running,
    serving,
    updates,
    values_for,
)

NAME = "replication"
SECRETS = knob("SECRETMIRROR_BENCH_REPLICATION_SECRETS", 1500, 200)
#: ``replication.concurrency``'s default: the raw loop runs at the same concurrency.
CONCURRENCY = 16
API_CLIENTS = 32
RAW_S = knob(None, 8.0, 2.0)
RAW_CREATE_S = knob(None, 4.0, 1.0)
STEADY_RATE = 100.0
STEADY_S = knob(None, 20.0, 3.0)
COUNTED_CREATES = 100
COUNTED_UPDATES = 200
LIMITED_UPDATES = knob(None, 300, 80)
DEFAULT_WRITES_PER_S = 40.0
UNLIMITED_WRITES_PER_S = 100_000
PROXY_LATENCY_S = 0.3
PROXY_PHASE_S = knob(None, 5.0, 1.5)
PROXY_CLIENTS = (1, 8)
TWO_DAEMONS_SECRETS = 50
TWO_DAEMONS_CLIENTS = 8
TWO_DAEMONS_LOAD_S = knob("SECRETMIRROR_BENCH_TWO_DAEMONS_S", 15.0, 4.0)
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


def patch_values(n: int) -> dict[str, str]:
    """A new password every time: each PATCH writes a version."""
    return {"password": f"p-{n}-{secrets.token_hex(8)}"}


# -- phases --------------------------------------------------------------------------


async def _raw(moto: MotoServer, prefix: str, **loop: Any) -> dict[str, Any]:
    """A bare aiobotocore loop at CONCURRENCY (``loop``: ``aws_raw_loop``'s arguments), with
    the CPU it and moto used."""
    cpu = Cpu({"moto": moto.pid})
    cpu.start()
    result = await aws_raw_loop(moto.endpoint_url, prefix, CONCURRENCY, **loop)
    # Includes creating the put loop's secrets: an upper bound per op.
    result["cpu_incl_setup"] = cpu.stop(result["ops"])
    print(
        f"  raw {result['operation']:<15} {result['ops_per_s']:>8.1f}/s  p50 {result['p50_ms']}"
        f" ms  p99 {result['p99_ms']} ms  errors {result['errors']};  others used"
        f" {result['cpu_incl_setup'].get('others_share_of_machine')} of the machine"
    )
    return result


async def _steady_latency(api: Api, progress: Progress, cpu: Cpu, ids: list[str]) -> dict[str, Any]:
    """An open-loop writer at STEADY_RATE; commit-to-applied from the daemon's histogram."""
    print(f"latency: open-loop {STEADY_RATE:g} PATCH/s for {STEADY_S:g} s")
    labels = {"target": "backup"}
    before = histogram_buckets(await api.metrics(), LATENCY_METRIC, labels)
    start_applied = (await progress.sample())[1]
    total = int(STEADY_RATE * STEADY_S)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(n: int) -> None:
        started = time.perf_counter()
        try:
            await api.update(ids[n % len(ids)], patch_values(10_000_000 + n))
        except (OpError, aiohttp.ClientError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        else:
            latencies.append(time.perf_counter() - started)

    cpu.start()
    late = await open_loop(one, STEADY_RATE, total)
    sent_s = (total - 1) / STEADY_RATE + late[-1]  # from the first send's due time to the last
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
        "share_le_50ms": rounded(histogram_fraction_le(buckets, 0.05), 4),
        "share_le_250ms": rounded(histogram_fraction_le(buckets, 0.25), 4),
        "buckets": [[le, count] for le, count in buckets],
        "cpu": cpu_used,
        "backup_store": (await api.status())["stores"].get("backup"),
    }
    print(
        f"  commit-to-applied p50 {result['p50_ms']} ms  p90 {result['p90_ms']} ms"
        f"  p99 {result['p99_ms']} ms over {observed:g} events; <=50 ms"
        f" {result['share_le_50ms']}, <=250 ms {result['share_le_250ms']};"
        f" API PATCH p50 {result['api_patch']['p50_ms']} ms;"
        f" others used {cpu_used.get('others_share_of_machine')} of the machine"
    )
    return result


async def _calls(
    api: Api, progress: Progress, stack: Stack, needles: tuple[str, ...], ids: list[str], tag: str
) -> dict[str, Any]:
    """AWS calls per applied change, from moto's recorder: first writes, then updates."""
    print("calls: moto's recorder during first writes and updates")
    moto = stack.moto
    moto.recording(True)
    try:
        create = api.creates(f"calls-{tag}")

        async def update(_worker: int, n: int) -> None:
            await api.update(ids[n % len(ids)], patch_values(20_000_000 + n))

        found = await counted_phases(
            progress,
            [("first_write", COUNTED_CREATES, create), ("update_known", COUNTED_UPDATES, update)],
            moto.mark,
            lambda since: count_calls(moto.read_calls(since, needles)[0]),
            settle_s=0.3,  # let moto finish appending the last lines
        )
        for counted in found.values():
            writes = sum(n for o, n in counted["by_operation"].items() if o in WRITE_OPERATIONS)
            counted["writes_per_change"] = ratio(writes, counted["events_applied"])
        return found
    finally:
        moto.recording(False)


async def _limiter(
    api: Api, progress: Progress, stack: Stack, needles: tuple[str, ...], ids: list[str]
) -> dict[str, Any]:
    """A burst of updates at the default write rate: write calls reaching moto per 0.1 s."""
    moto = stack.moto
    print(f"limiter: {LIMITED_UPDATES} PATCHes at the default 40 writes/s")
    moto.recording(True)
    try:
        applied0 = (await progress.sample())[1]
        position = moto.mark()
        points: list[tuple[float, int]] = []
        writes_seen = 0

        def watch() -> None:
            nonlocal position, writes_seen
            calls, position = moto.read_calls(position, needles)
            writes_seen += sum(1 for c in calls if c["operation"] in WRITE_OPERATIONS)
            points.append((time.perf_counter(), writes_seen))

        async with every(0.1, watch):
            writes = await run_ops(
                lambda _w, n: api.update(ids[n % len(ids)], patch_values(30_000_000 + n)),
                API_CLIENTS,
                count=LIMITED_UPDATES,
            )
            drained = await progress.until_applied(applied0 + writes["ops"], timeout_s=90)
            await asyncio.sleep(0.3)
        watch()
    finally:
        moto.recording(False)
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
        f" (setting {DEFAULT_WRITES_PER_S:g}/s)"
    )
    return result


async def _backup_latency(api: Api, proxy: ProxyProcess, tag: str) -> dict[str, Any]:
    """API create latency with the backup behind the proxy: without, then with 300 ms."""
    found: dict[str, Any] = {"without": {}, "with": {}}
    seq = itertools.count()

    async def create(_worker: int, n: int) -> None:
        await api.create(f"lat-{tag}-{next(seq)}", n)

    for mode in ("without", "with"):
        if mode == "with":
            proxy.latency(PROXY_LATENCY_S, "upstream")
        for clients in PROXY_CLIENTS:
            result = await run_ops(create, clients, duration_s=PROXY_PHASE_S)
            found[mode][f"c{clients}"] = result
            print(
                f"  create c={clients} {mode} added latency: {result['ops_per_s']}/s"
                f"  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms"
                f"  errors {result['errors']}"
            )
    proxy.pass_through()
    found["ratio_with_over_without"] = {
        key: {s: ratio(slow[s], found["without"][key][s]) for s in ("p50_ms", "p99_ms")}
        for key, slow in found["with"].items()
    }
    found["added_latency"] = (
        f"{PROXY_LATENCY_S * 1000:g} ms on every request to the backup (proxy direction"
        " 'upstream'); both sides measured through the proxy, in this order"
    )
    return found


# -- the run ---------------------------------------------------------------------------


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    tag = secrets.token_hex(3)
    prefix = f"smbench-{tag}/"
    backup_prefix = prefix + "backup/"
    out["config"]["name_prefix"] = backup_prefix
    async with aws_stack(out, workdir) as stack:
        moto = stack.moto
        url = moto.endpoint_url
        api = await stack.serve("throughput", aws_env(url, backup_prefix, UNLIMITED_WRITES_PER_S))
        assert stack.daemon is not None
        needles = (backup_prefix, (await api.status())["deployment_id"])
        progress = Progress(api, DRAIN_TIMEOUT_S)
        cpu = Cpu({"daemon": stack.daemon.pid, "moto": moto.pid}, stack.pg.postmaster_pid)

        ids: list[str] = []
        out["first_writes"] = await first_writes(api, progress, cpu, SECRETS, tag, ids)
        # moto scans every secret of the region per lookup: the raw loops run now, at
        # the fill the throughput phase sees, and again after it (the machine is shared).
        print(f"raw: bare aiobotocore loops at {CONCURRENCY}, moto holding {len(ids)}+ secrets")
        raw: dict[str, Any] = {
            "create": await _raw(
                moto, prefix + "raw-create/", operation="create", duration_s=RAW_CREATE_S
            ),
            "put_before": await _raw(moto, prefix + "raw-put/", operation="put", duration_s=RAW_S),
        }
        out["raw"] = raw
        out["throughput"] = await updates(api, progress, cpu, ids, patch_values)
        raw["put_after"] = await _raw(
            moto, prefix + "raw-put/", operation="put", duration_s=RAW_S, create_secrets=False
        )
        raw["put_ops_per_s_mean"] = mean([raw[k]["ops_per_s"] for k in ("put_before", "put_after")])

        out["latency"] = await _steady_latency(api, progress, cpu, ids)
        out["calls"] = await _calls(api, progress, stack, needles, ids, tag)

        api = await stack.serve("limiter", aws_env(url, backup_prefix, None))
        limiter_progress = Progress(api, DRAIN_TIMEOUT_S)
        out["limiter"] = await _limiter(api, limiter_progress, stack, needles, ids)

        print("backup latency: the backup behind a fault proxy")
        async with running(ProxyProcess, moto.port) as proxy:
            api = await stack.serve(
                "backup latency", aws_env(proxy.url, backup_prefix, UNLIMITED_WRITES_PER_S)
            )
            out["backup_latency"] = await _backup_latency(api, proxy, tag)
            out["backup_latency"]["backup_status_at_end"] = await api.backup_status()
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
    async with secrets_client(endpoint_url) as client:
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
    """Two daemons on one database PATCH the same secrets; both stores AWS behind one proxy
    (one endpoint URL: it is part of the stores' locations, bench/README.md)."""
    result: dict[str, Any] = {
        "secrets": TWO_DAEMONS_SECRETS,
        "clients_per_daemon": TWO_DAEMONS_CLIENTS,
        "load_s": TWO_DAEMONS_LOAD_S,
        "added_latency_s": TWO_DAEMONS_LATENCY_S,
    }
    async with (
        aws_stack(result, workdir / "two") as stack,
        running(ProxyProcess, stack.moto.port) as proxy,
    ):
        await asyncio.to_thread(proxy.latency, TWO_DAEMONS_LATENCY_S, "upstream")
        prefixes = {
            "primary": f"smbench-{tag}/two-primary/",
            "backup": f"smbench-{tag}/two-backup/",
        }
        env = {
            **aws_env(proxy.url, prefixes["primary"], UNLIMITED_WRITES_PER_S, "PRIMARY"),
            **aws_env(proxy.url, prefixes["backup"], UNLIMITED_WRITES_PER_S),
            **VERIFY_OFF,
        }
        a = Daemon(stack.dsn, workdir / "two-a", env, label="a")
        b = Daemon(stack.dsn, workdir / "two-b", env, key=a.key, label="b")
        try:
            async with serving(a) as api_a, serving(b) as api_b:
                await _two_daemons_load(result, stack, proxy, [api_a, api_b], prefixes, tag)
        finally:
            result["log_events"] = [daemon.log_events(LOG_EVENTS) for daemon in (a, b)]
    return result


async def _two_daemons_load(
    result: dict[str, Any],
    stack: Stack,
    proxy: ProxyProcess,
    apis: list[Api],
    prefixes: dict[str, str],
    tag: str,
) -> None:
    """PATCHes from both daemons while the pollers watch the stores; then verify."""
    print(
        f"two daemons: {TWO_DAEMONS_SECRETS} secrets, PATCHed from both at"
        f" {TWO_DAEMONS_CLIENTS} clients each for {TWO_DAEMONS_LOAD_S:g} s,"
        f" +{TWO_DAEMONS_LATENCY_S * 1000:g} ms on every AWS request"
    )
    ids = [await apis[0].create(f"two-{tag}-{n}", n) for n in range(TWO_DAEMONS_SECRETS)]
    await apis[0].until_drained(DRAIN_TIMEOUT_S)
    print("two daemons: raw PutSecretValue loop through the proxy")
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
            _poll_versions(stack.moto.endpoint_url, {i: prefix + i for i in ids}, stop)
        )
        for role, prefix in prefixes.items()
    }
    started = time.perf_counter()
    loads = await asyncio.gather(
        *(
            run_ops(
                lambda _w, n, api=api: api.update(ids[n % len(ids)], patch_values(n)),
                TWO_DAEMONS_CLIENTS,
                duration_s=TWO_DAEMONS_LOAD_S,
            )
            for api in apis
        )
    )
    await apis[0].until_drained(DRAIN_TIMEOUT_S)
    drained_s = time.perf_counter() - started
    stop.set()  # each poller ends with one whole round read after the drain
    polls = {role: await task for role, task in pollers.items()}
    after = (await apis[0].status())["replication"]
    applied = {
        role: after[role]["applied"] - before[role]["applied"] for role in ("primary", "backup")
    }
    patches = sum(r["ops"] for r in loads)
    job = await apis[1].job("/admin/v1/reconcile", {"mode": "verify"})
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


def _two_daemon_targets(two: dict[str, Any]) -> dict[str, Any]:
    stores = (two.get("verify") or {}).get("stores") or {}
    backup = stores.get("backup", {})
    polls = two.get("pollers", {})
    return {
        "two_daemons_backup_stale_after_drain": check("<=", 0, backup.get("stale")),
        "two_daemons_backup_drift_after_drain": check(
            "<=",
            0,
            sum(backup.get(k, 0) for k in ("missing", "stale", "mismatch", "unreadable", "orphan"))
            if backup
            else None,
            what="missing + stale + mismatch + unreadable + orphan in the backup",
        ),
        "two_daemons_backup_versions_backwards": check(
            "<=",
            0,
            len(polls["backup"]["backwards"]) if "backup" in polls else None,
            what="entries the poller read at a lower version than before",
        ),
    }


async def _two_daemons_only(out: dict[str, Any], workdir: Path) -> None:
    out["two_daemons"] = await _two_daemons(workdir, secrets.token_hex(3))


async def two_daemons_main() -> dict[str, Any]:
    """Only the two-daemon run (``python -m bench.replication two-daemons``)."""
    return await measured(
        NAME + "_two_daemons",
        _two_daemons_only,
        targets=lambda out: _two_daemon_targets(out.get("two_daemons", {})),
        summary=lambda out: _print_two_daemons(out.get("two_daemons", {})),
    )


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


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    out["ratios"] = _ratios(out)
    raw_put = out.get("raw", {}).get("put_ops_per_s_mean")
    throughput = out.get("throughput", {}).get("applied_per_s")
    latency = out.get("latency", {})
    calls = out.get("calls", {})
    limiter = out.get("limiter", {})
    targets: dict[str, Any] = {
        "throughput_vs_raw_put": check(
            ">=",
            0.8,
            round(throughput / raw_put, 3) if throughput and raw_put else None,
            what=f"updates applied/s {throughput} / raw PutSecretValue/s {raw_put} (mean of"
            " the loops before and after the phase)",
        ),
        "latency_p50_ms_at_100_per_s": check("<=", 50, latency.get("p50_ms")),
        "latency_p99_ms_at_100_per_s": check("<=", 250, latency.get("p99_ms")),
        "calls_per_update_known": check(
            "<=", 1, calls.get("update_known", {}).get("calls_per_change")
        ),
        "limiter_mean_write_calls_per_s": check(
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
            targets[f"create_{stat[:3]}_{key}_300ms_backup_ratio"] = check(
                "<=", 1.2, row.get(stat), what="create latency with / without 300 ms on the backup"
            )
    return targets


def _ratios(out: dict[str, Any]) -> dict[str, Any]:
    """Replication rates over the raw rates of the same run (informational beside targets)."""
    raw = out.get("raw", {})
    put, create = raw.get("put_ops_per_s_mean"), raw.get("create", {}).get("ops_per_s")
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
        if r := raw.get(key):
            print(f"raw {key:<15} {r['ops_per_s']:>8.1f}/s at {r['concurrency']}")
    print_replicated(out)
    print(f"ratios to the raw limits: {out.get('ratios')}")
    for daemon in out.get("daemons", []):
        print(f"daemon {daemon['label']!r}: log events {daemon['log_events']}")
    print(f"moto answered {out.get('moto_500_answers')} requests with a 500")
    _print_two_daemons(out.get("two_daemons", {}))


async def main() -> dict[str, Any]:
    config = {
        "secrets": SECRETS,
        "replication_concurrency": CONCURRENCY,
        "api_clients": API_CLIENTS,
        "max_writes_per_s": UNLIMITED_WRITES_PER_S,
        "raw_s": RAW_S,
        "steady_rate_per_s": STEADY_RATE,
        "steady_s": STEADY_S,
        "values_bytes": len(json.dumps(values_for(0))),
        "verify_interval_s": 0,
    }
    return await measured(NAME, _measure, config=config, targets=_targets, summary=print_summary)


if __name__ == "__main__":
    if "two-daemons" in sys.argv[1:]:
        run_standalone(NAME + "_two_daemons", two_daemons_main)
    else:
        run_standalone(NAME, main)
