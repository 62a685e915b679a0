"""The Vault benchmark: replication into OpenBao (KV v2) beside a bare aiohttp write loop."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon_proc import store_env
from tests.openbao import BaoProcess, OpenBao, bao_settings, start_bao

from bench._common import check, knob, mean, measured, ratio, run_standalone
from bench._harness import (
    VERIFY_OFF,
    Api,
    Cpu,
    Daemon,
    Progress,
    counted_phases,
    first_writes,
    postgres,
    print_replicated,
    run_ops,
    running,
    serving,
    updates,
    values_for,
)

NAME = "vault"
SECRETS = knob("SECRETMIRROR_BENCH_VAULT_SECRETS", 2000, 200)
#: ``replication.concurrency``'s default: the raw loops run at the same concurrency.
CONCURRENCY = 16
#: The hashicorp store's connection limit, given to the raw loops' session too.
CONNECTIONS = 32
API_CLIENTS = 32
RAW_S = knob("SECRETMIRROR_BENCH_DURATION_S", 8.0, 2.0)
RAW_ENTRIES_PER_WORKER = 25
COUNTED_UPDATES = 300
COUNTED_CREATES = 100
DRAIN_TIMEOUT_S = 180.0
MOUNT = "secret"
AUDIT_DEVICE = "bench/"


def vault_env(bao: OpenBao, prefix: str, role: str = "backup") -> dict[str, str]:
    return store_env(role, {"type": "hashicorp", **bao_settings(bao, prefix, mount=MOUNT)})


# -- the raw limit ---------------------------------------------------------------------


async def raw_loop(
    bao: OpenBao,
    prefix: str,
    kind: str,
    cpu: Cpu,
    duration_s: float = RAW_S,
    ready: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """``kind`` "write": one data write per op; "store_update": the store's three calls.
    ``ready``, if given, is called (in a thread) between making the entries and the loop."""
    token = {"X-Vault-Token": bao.root_token}
    paths = [
        [f"{prefix}{kind}/w{w}-{i}" for i in range(RAW_ENTRIES_PER_WORKER)]
        for w in range(CONCURRENCY)
    ]
    marks = {"secretmirror.deployment": "bench-raw", "secretmirror.version": "1"}
    async with Api(f"{bao.url}/v1/{MOUNT}", CONNECTIONS, token, timeout_s=30) as kv:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def make(path: str) -> None:
            async with gate:
                if kind == "store_update":
                    body = {"custom_metadata": marks, "metadata_cas": 0}
                    await kv.call("POST", f"/metadata/{path}", body, ok=None)
                await kv.call("POST", f"/data/{path}", {"data": values_for(0)}, ok=None)

        await asyncio.gather(*(make(p) for row in paths for p in row))

        async def write(worker: int, n: int) -> None:
            path = paths[worker][n % RAW_ENTRIES_PER_WORKER]
            await kv.call("POST", f"/data/{path}", {"data": values_for(n + 1)}, ok=None)

        async def store_update(worker: int, n: int) -> None:
            path = paths[worker][n % RAW_ENTRIES_PER_WORKER]
            meta = (await kv.call("GET", f"/metadata/{path}"))["data"]
            body = {"options": {"cas": meta["current_version"]}, "data": values_for(n + 1)}
            written = await kv.call("POST", f"/data/{path}", body, ok=None)
            custom = {
                **marks,
                "secretmirror.version": str(n + 2),
                "secretmirror.kv-version": str(written["data"]["version"]),
            }
            body = {"custom_metadata": custom, "metadata_cas": meta["current_metadata_version"]}
            await kv.call("POST", f"/metadata/{path}", body, ok=None)

        op = write if kind == "write" else store_update
        if ready is not None:
            await asyncio.to_thread(ready)
        result = await run_ops(op, CONCURRENCY, duration_s=duration_s, cpu=cpu, label=f"raw {kind}")
    result["calls_per_op"] = 1 if kind == "write" else 3
    result["vault_calls_per_s"] = round(result["ops_per_s"] * result["calls_per_op"], 1)
    return result


def update_values(n: int) -> dict[str, str]:
    """Never the values a secret was created with: an unchanged PATCH writes no version."""
    return {**values_for(n), "username": f"svc-later-{n % 1000}"}


# -- calls, from OpenBao's audit log ------------------------------------------------------


def _audit_hcl(path: Path) -> str:
    return f'audit "file" "{AUDIT_DEVICE}" {{\n  options {{\n    file_path = "{path}"\n  }}\n}}\n'


async def _audit(server: BaoProcess, bao: OpenBao, path: Path | None) -> None:
    """Turn the file audit device on (``path``) or off, and wait until the server says so."""
    server.reload(_audit_hcl(path) if path is not None else "")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = bao.ok("GET", "sys/audit")["data"]
        if (AUDIT_DEVICE in listed) == (path is not None):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the audit device did not turn {'on' if path else 'off'}")


def count_audited(path: Path, since: int, prefix: str) -> dict[str, Any]:
    """Vault calls audited after offset ``since``: under ``prefix`` by kind, probes apart."""
    with path.open("rb") as handle:
        handle.seek(since)
        data = handle.read()
    complete = data.rfind(b"\n") + 1
    by_kind: dict[str, int] = {}
    refused: dict[str, int] = {}
    probes = other = 0
    for line in data[:complete].splitlines():
        entry = json.loads(line)
        if entry.get("type") != "response":
            continue
        request = entry.get("request") or {}
        where = str(request.get("path", ""))
        if where.startswith("sys/internal/ui/mounts/"):
            probes += 1
            continue
        head, _, rest = where.partition("/")
        if head != MOUNT or not rest.partition("/")[2].startswith(prefix):
            other += 1
            continue
        kind = f"{request.get('operation')} {rest.partition('/')[0]}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if entry.get("error"):
            refused[kind] = refused.get(kind, 0) + 1
    work = sum(by_kind.values())
    return {
        "work": work,
        "by_kind": dict(sorted(by_kind.items())),
        "refused": refused,
        "health_probes": probes,
        "other_calls": other,
    }


async def calls_phase(
    server: BaoProcess,
    bao: OpenBao,
    api: Api,
    progress: Progress,
    ids: list[str],
    prefix: str,
    tag: str,
) -> dict[str, Any]:
    print("calls: OpenBao's audit log during updates, creates and deletes")
    log = server.dir / "audit.log"
    fresh: list[str] = []
    updated = ids[:COUNTED_UPDATES]

    async def update(_worker: int, n: int) -> None:
        await api.update(updated[n], update_values(40_000 + n))

    async def delete(_worker: int, n: int) -> None:
        await api.call("DELETE", f"/api/v1/secrets/{fresh[n]}", ok=204)

    await _audit(server, bao, log)
    try:
        return await counted_phases(
            progress,
            [
                ("update", len(updated), update),
                ("create", COUNTED_CREATES, api.creates(f"calls-{tag}", fresh)),
                ("delete", COUNTED_CREATES, delete),
            ],
            lambda: log.stat().st_size,
            lambda since: count_audited(log, since, prefix),
            what="Vault calls",
            by="by_kind",
        )
    finally:
        await _audit(server, bao, None)


# -- the run ---------------------------------------------------------------------------


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    tag = secrets.token_hex(3)
    prefix = f"smbench-{tag}/"
    out["config"]["path_prefix"] = prefix
    async with postgres() as pg:
        dsn = await pg.database()
        async with running(start_bao, config="") as server:
            bao = OpenBao(server.url, server.root_token)
            out["openbao"] = bao.ok("GET", "sys/health")["version"]
            backup_prefix = prefix + "backup/"
            env = {**vault_env(bao, backup_prefix), **VERIFY_OFF}
            daemon = Daemon(dsn, workdir / "daemon", env)
            async with serving(daemon) as api:
                cpu = Cpu({"daemon": daemon.pid, "bao": server.process.pid}, pg.postmaster_pid)
                progress = Progress(api, DRAIN_TIMEOUT_S)
                print(f"raw: bare aiohttp KV v2 loops at {CONCURRENCY}")
                out["raw"] = {
                    "write_before": await raw_loop(bao, prefix + "raw-1/", "write", cpu),
                    "store_update": await raw_loop(bao, prefix + "raw-2/", "store_update", cpu),
                }
                ids: list[str] = []
                out["first_writes"] = await first_writes(api, progress, cpu, SECRETS, tag, ids)
                out["throughput"] = await updates(
                    api, progress, cpu, ids, lambda n: update_values(n + 7)
                )
                out["raw"]["write_after"] = await raw_loop(bao, prefix + "raw-3/", "write", cpu)
                out["calls"] = await calls_phase(
                    server, bao, api, progress, ids, backup_prefix, tag
                )
                out["backup_status_at_end"] = await api.backup_status()
            out["daemon"] = daemon.stopped()


def _raw_write_per_s(out: dict[str, Any]) -> float | None:
    raw = out.get("raw", {})
    return mean([raw.get(k, {}).get("ops_per_s") for k in ("write_before", "write_after")])


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    out["analysis"] = _analysis(out)
    raw = _raw_write_per_s(out)
    throughput = out.get("throughput", {})
    overall = throughput.get("applied_per_s")
    drain = throughput.get("applied_per_s_after_writes")
    update = out.get("calls", {}).get("update", {})
    return {
        "throughput_vs_raw_write": check(
            ">=",
            0.8,
            ratio(overall, raw),
            f"updates applied/s {overall} (API writing meanwhile) / bare KV v2 writes/s {raw}"
            " (mean of the raw runs before and after)",
        ),
        "drain_vs_raw_write": check(
            ">=",
            0.8,
            ratio(drain, raw),
            f"backlog applied/s with no API load {drain} / bare KV v2 writes/s {raw}",
        ),
        "calls_per_update_steady": check(
            "<=",
            1,
            update.get("calls_per_change"),
            "Vault API calls per applied update of an existing secret (audit log)",
        ),
    }


def _analysis(out: dict[str, Any]) -> dict[str, Any]:
    """Vault calls per second during the drain beside the raw loops' call rates."""
    calls = out.get("calls", {}).get("update", {}).get("calls_per_change")
    drain = out.get("throughput", {}).get("applied_per_s_after_writes")
    raw = out.get("raw", {})
    store_update = raw.get("store_update", {})
    return {
        "vault_calls_per_s_while_draining": round(drain * calls, 1) if drain and calls else None,
        "raw_write_calls_per_s": _raw_write_per_s(out),
        "raw_store_update_changes_per_s": store_update.get("ops_per_s"),
        "raw_store_update_calls_per_s": store_update.get("vault_calls_per_s"),
        "ceiling_note": (
            "an update is 3 Vault calls (metadata read for the ownership check, data with cas,"
            " metadata with metadata_cas); KV v2 has no call that writes data and custom"
            " metadata together, so 2 writes per change is the floor and the raw store_update"
            " loop is the ceiling for this design"
        ),
    }


def print_summary(out: dict[str, Any]) -> None:
    print()
    raw = out.get("raw", {})
    for key in ("write_before", "store_update", "write_after"):
        if r := raw.get(key):
            print(
                f"raw {key:<13} {r['ops_per_s']:>8.1f} ops/s at {r['concurrency']}"
                f" ({r['vault_calls_per_s']} Vault calls/s), p50 {r['p50_ms']} ms"
            )
    print_replicated(out)
    for label, counted in out.get("calls", {}).items():
        print(f"calls {label:<7} {counted['calls_per_change']}/change  {counted['by_kind']}")


async def main() -> dict[str, Any]:
    config = {
        "secrets": SECRETS,
        "replication_concurrency": CONCURRENCY,
        "raw_concurrency": CONCURRENCY,
        "raw_connections": CONNECTIONS,
        "api_clients": API_CLIENTS,
        "raw_s": RAW_S,
        "values_bytes": len(json.dumps(values_for(0))),
        "auth": "root token (daemon and raw loops alike)",
        "audit_log": "on only during the calls phase",
        "verify_interval_s": 0,
    }
    return await measured(NAME, _measure, config=config, targets=_targets, summary=print_summary)


if __name__ == "__main__":
    run_standalone(NAME, main)
