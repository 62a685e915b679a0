"""The reconcile benchmark: backup and verify jobs of 5,000 secrets to AWS on moto."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

from tests.moto import REGION, secrets_client

from bench._common import check, knob, latency_summary, measured, rounded, run_standalone
from bench._harness import (
    Api,
    Cpu,
    RssPeak,
    Stack,
    aws_env,
    aws_raw_loop,
    aws_stack,
    count_calls,
    run_ops,
)

NAME = "reconcile"
SECRETS = knob("SECRETMIRROR_BENCH_RECONCILE_SECRETS", 5000, 300)
#: ``reconcile.concurrency``'s default: the raw loops run at the same concurrency.
CONCURRENCY = 16
API_CLIENTS = 32
RAW_REGION = "us-west-2"
RAW_PUT_S = knob(None, 4.0, 1.0)
UNLIMITED_WRITES_PER_S = 100_000
JOB_TIMEOUT_S = 240.0
RSS_INTERVAL_S = 0.01

ZENML = {
    "version": "0.98",
    "first_backup_secrets_per_s": 190,
    "second_backup_secrets_per_s": 100,
    "notes": (
        "from the issue: ZenML backs up one secret at a time to moto (about 190/s) and"
        " rewrites every secret on a second backup (about 100/s)"
    ),
}


async def run_job(api: Api, mode: str) -> dict[str, Any]:
    """Run a reconcile job (polled every 50 ms) until it ends."""
    job = await asyncio.wait_for(
        api.job("/admin/v1/reconcile", {"mode": mode}, 0.05), JOB_TIMEOUT_S
    )
    return {
        "status": job["status"],
        "error": job.get("error"),
        "counts": job.get("counts"),
        "failures_sample": (job.get("failures") or [])[:3],
        "seconds": rounded(job["seconds"], 3),
        "seconds_wall_from_post": job["seconds_wall_from_post"],
    }


async def aws_scan_floor(
    endpoint_url: str, name_prefix: str, pages: int, region: str = REGION
) -> dict[str, Any]:
    """The least ``pages`` listing calls can cost on this server: each matches nothing."""
    filters = [{"Key": "name", "Values": [name_prefix + "zz-no-such-entry-"]}]
    async with secrets_client(endpoint_url, region) as client:
        started = time.perf_counter()
        for _ in range(pages):
            page = await client.list_secrets(Filters=filters, MaxResults=100)
            assert not page.get("SecretList"), "the floor's filter matched an entry"
        wall = time.perf_counter() - started
    return {
        "operation": "ListSecrets (matching nothing)",
        "pages": pages,
        "seconds": round(wall, 3),
    }


async def aws_list_loop(
    endpoint_url: str, filters: list[dict[str, Any]], region: str = REGION
) -> dict[str, Any]:
    """The raw limit of a listing: every page of ``ListSecrets`` with ``filters``, in turn."""
    pages = entries = 0
    page_s: list[float] = []
    async with secrets_client(endpoint_url, region) as client:
        token: str | None = None
        started = time.perf_counter()
        while True:
            request: dict[str, Any] = {
                "Filters": filters,
                "IncludePlannedDeletion": True,
                "MaxResults": 100,
            }
            if token:
                request["NextToken"] = token
            begin = time.perf_counter()
            page = await client.list_secrets(**request)
            page_s.append(time.perf_counter() - begin)
            pages += 1
            entries += len(page.get("SecretList", []))
            token = page.get("NextToken")
            if not token:
                break
        wall = time.perf_counter() - started
    return {
        "operation": "ListSecrets",
        "pages": pages,
        "entries": entries,
        "seconds": round(wall, 3),
        "entries_per_s": round(entries / wall, 1) if wall > 0 else None,
        "page": latency_summary(page_s),
    }


async def _job_phase(
    label: str,
    stack: Stack,
    api: Api,
    mode: str,
    needles: tuple[str, ...],
    cpu: Cpu,
    *,
    rss: bool = False,
) -> dict[str, Any]:
    """One job with the AWS calls it made, the worker's counters and the CPU it took."""
    moto = stack.moto
    assert stack.daemon is not None
    before = await api.backup_status()
    sampler = RssPeak(stack.daemon.pid, RSS_INTERVAL_S) if rss else None
    if sampler is not None:
        await sampler.start()
    mark = moto.mark()
    cpu.start()
    try:
        job = await run_job(api, mode)
    finally:
        rss_result = await sampler.stop() if sampler is not None else None
    await asyncio.sleep(0.3)  # moto appends its last lines
    job["cpu"] = cpu.stop(SECRETS)
    job["aws_calls"] = count_calls(moto.read_calls(mark, needles)[0])
    after = await api.backup_status()
    job["worker"] = {
        "pending_before": before["pending"],
        "pending_after": after["pending"],
        "applied_during": after["applied"] - before["applied"],
    }
    if job["seconds"]:
        job["secrets_per_s"] = round(SECRETS / job["seconds"], 1)
        job["ms_per_secret"] = round(job["seconds"] * 1000 / SECRETS, 3)
    if rss_result is not None:
        job["rss"] = rss_result
    calls = job["aws_calls"]
    print(
        f"  {label}: {job['status']} in {job['seconds']} s = {job.get('secrets_per_s')}"
        f" secrets/s; AWS calls {calls['work']} {calls['by_operation']}"
        f" (+{calls['health_probes']} probes); counts {_flat(job['counts'])}"
        + (f"; RSS +{rss_result['growth_mib']} MiB" if rss_result else "")
    )
    return job


def _flat(counts: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (counts or {}).items() if k != "stores"}


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    tag = secrets.token_hex(3)
    prefix = f"smbench-{tag}/"
    backup_prefix = prefix + "backup/"
    out["config"]["name_prefix"] = backup_prefix
    async with aws_stack(out, workdir) as stack:
        moto = stack.moto
        moto.recording(True)

        print(f"fill: {SECRETS} secrets through a daemon without a backup")
        api = await stack.serve("fill, no backup", {})
        fill = await run_ops(api.creates(f"rec-{tag}"), API_CLIENTS, count=SECRETS)
        out["fill"] = fill
        print(f"  {fill['ops']} created at {fill['ops_per_s']}/s, {fill['errors']} errors")

        print(f"raw: bare aiobotocore loops at {CONCURRENCY} into {RAW_REGION}")
        raw_cpu = Cpu({"moto": moto.pid})
        raw_cpu.start()
        raw_create = await aws_raw_loop(
            moto.endpoint_url,
            prefix + "raw-create/",
            CONCURRENCY,
            operation="create",
            count=SECRETS,
            region=RAW_REGION,
        )
        raw_create["cpu"] = raw_cpu.stop(raw_create["ops"])
        raw_put = await aws_raw_loop(
            moto.endpoint_url,
            prefix + "raw-put/",
            CONCURRENCY,
            operation="put",
            duration_s=RAW_PUT_S,
            region=RAW_REGION,
            secrets_per_worker=8,
        )
        out["raw"] = {"create": raw_create, "put": raw_put}
        for r in (raw_create, raw_put):
            print(
                f"  raw {r['operation']:<15} {r['ops']} in {r['seconds']} s ="
                f" {r['ops_per_s']}/s  p50 {r['p50_ms']} ms  errors {r['errors']}"
            )

        api = await stack.serve(
            "backup jobs",
            aws_env(moto.endpoint_url, backup_prefix, UNLIMITED_WRITES_PER_S),
        )
        assert stack.daemon is not None
        status = await api.status()
        needles = (backup_prefix, status["deployment_id"])
        cpu = Cpu({"daemon": stack.daemon.pid, "moto": moto.pid}, stack.pg.postmaster_pid)
        out["rss_before_jobs_mib"] = stack.daemon.rss_mib()
        print(f"jobs on {SECRETS} secrets")
        out["first_backup"] = await _job_phase("first backup", stack, api, "backup", needles, cpu)
        out["second_backup"] = await _job_phase("second backup", stack, api, "backup", needles, cpu)
        out["verify"] = await _job_phase("verify", stack, api, "verify", needles, cpu, rss=True)
        # What one listing of the backup costs on this moto: the floor of both jobs above.
        listing = await aws_list_loop(
            moto.endpoint_url,
            [
                {"Key": "tag-key", "Values": ["secretmirror:deployment"]},
                {"Key": "tag-value", "Values": [status["deployment_id"]]},
            ],
        )
        out["raw"]["list"] = listing
        print(
            f"  raw ListSecrets: {listing['entries']} entries in {listing['pages']} pages,"
            f" {listing['seconds']} s (page p50 {listing['page']['p50_ms']} ms)"
        )
        floor = await aws_scan_floor(moto.endpoint_url, backup_prefix, listing["pages"])
        out["raw"]["scan_floor"] = floor
        print(f"  floor: {floor['pages']} ListSecrets matching nothing, {floor['seconds']} s")
        for key in ("second_backup", "verify"):
            job = out[key]
            if job.get("seconds"):
                job["seconds_beyond_one_listing"] = round(job["seconds"] - listing["seconds"], 3)


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    first = out.get("first_backup", {})
    second = out.get("second_backup", {})
    verify = out.get("verify", {})
    raw = out.get("raw", {}).get("create", {}).get("ops_per_s")
    raw_put = out.get("raw", {}).get("put", {}).get("ops_per_s")
    rate = first.get("secrets_per_s")
    calls_cap = SECRETS / 100 + 10
    speedup = None
    if first.get("ms_per_secret") and second.get("ms_per_secret"):
        speedup = round(first["ms_per_secret"] / second["ms_per_secret"], 1)
    floor_s = out.get("raw", {}).get("scan_floor", {}).get("seconds")
    ceiling = round(first["seconds"] / floor_s, 1) if floor_s and first.get("seconds") else None
    ok_status = {k: v.get("status") == "succeeded" for k, v in (("f", first), ("s", second))}
    targets = {
        "first_backup_vs_raw_create": check(
            ">=",
            0.8,
            round(rate / raw, 3) if rate and raw and ok_status["f"] else None,
            what=(
                f"first backup {rate} secrets/s / raw CreateSecret loop {raw}/s (the same"
                " call into an empty region, 0 to N secrets, as the job)"
            ),
        ),
        "first_backup_vs_raw_put": check(
            ">=",
            0.8,
            round(rate / raw_put, 3) if rate and raw_put and ok_status["f"] else None,
            what=(
                f"first backup {rate} secrets/s / raw PutSecretValue loop {raw_put}/s, run"
                " with the region already holding N secrets (moto's slowest point: flatters)"
            ),
        ),
        "second_backup_speedup_per_secret": check(
            ">=",
            50,
            speedup if ok_status["s"] else None,
            what=(
                "first / second ms per secret; the most this moto allows (first backup /"
                f" the scan floor of as many pages as a listing needs): {ceiling}"
            ),
        ),
        "second_backup_aws_calls": check(
            "<=",
            calls_cap,
            second.get("aws_calls", {}).get("work"),
            what="calls of the job (store health probes excluded)",
        ),
        "verify_aws_calls": check(
            "<=",
            calls_cap,
            verify.get("aws_calls", {}).get("work"),
            what="calls of the job (store health probes excluded)",
        ),
        "verify_rss_growth_mb": check(
            "<=", 50, verify.get("rss", {}).get("growth_mb"), what="peak - before, 1 MB = 1e6 B"
        ),
    }
    return targets


def print_summary(out: dict[str, Any]) -> None:
    print()
    raw = out.get("raw", {})
    for key in ("create", "put"):
        if r := raw.get(key):
            print(f"raw {r['operation']:<15} {r['ops_per_s']:>8.1f}/s at {r['concurrency']}")
    if raw.get("list"):
        print(f"raw ListSecrets of the backup: {raw['list']['seconds']} s")
    if raw.get("scan_floor"):
        floor = raw["scan_floor"]
        print(f"scan floor, {floor['pages']} pages matching nothing: {floor['seconds']} s")
    for key in ("first_backup", "second_backup", "verify"):
        if job := out.get(key):
            print(
                f"{key:<14} {job.get('secrets_per_s')} secrets/s ({job['seconds']} s),"
                f" {job['aws_calls']['work']} AWS calls, worker applied"
                f" {job['worker']['applied_during']}, others used"
                f" {job['cpu'].get('others_share_of_machine')} of the machine"
            )
    print(
        f"ZenML {ZENML['version']}: first backup ~{ZENML['first_backup_secrets_per_s']}/s,"
        f" second ~{ZENML['second_backup_secrets_per_s']}/s (rewrites everything)"
    )


async def main() -> dict[str, Any]:
    config = {
        "secrets": SECRETS,
        "reconcile_concurrency": CONCURRENCY,
        "api_clients": API_CLIENTS,
        "max_writes_per_s": UNLIMITED_WRITES_PER_S,
        "verify_interval_s": 0,
        "raw_region": RAW_REGION,
        "first_backup_method": (
            "secrets created by a daemon with no backup (no delivery rows for any"
            " backup), then a daemon with the aws backup on an empty prefix runs"
            " POST /admin/v1/reconcile {mode: backup}; its worker has nothing to"
            " deliver (worker.applied_during shows it), so the job does every write"
        ),
        "zenml_reference": ZENML,
    }
    return await measured(NAME, _measure, config=config, targets=_targets, summary=print_summary)


if __name__ == "__main__":
    run_standalone(NAME, main)
