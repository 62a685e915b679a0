"""The audit log's cost: gets/s at 32 clients with the audit log on and off, same run.

Two ``secretmirror serve`` subprocesses on one database (the same secrets, the same
key): one with the audit log (every GET writes its record, group-committed, before
the answer), one with ``audit.enabled = false``. Phases alternate between them
(on, off, on, off, ...) so a change in the machine's load hits both alike; the
figure per side is the median of its phases. The raw limit is the same API without
the audit log, measured in the same run: the target is on/off >= 0.8, and >= 1,500
gets/s with the audit on.

PostgreSQL and ``SECRETMIRROR_BENCH_DURATION_S`` as in bench/api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench._common import machine_info, machine_load, now_iso, print_targets, run_standalone
from bench.api import DURATION_S, ApiOps, BenchPostgres, CpuMeter, Daemon, run_phase

NAME = "audit"
CLIENTS = 32
SECRETS = 1000
ROUNDS = 5
TARGETS = {
    "api_get_audit_on_c32_ops_s": (">=", 1500.0),
    "api_get_audit_on_vs_off_c32": (">=", 0.8),
}


async def _batch_stats(base_url: str) -> dict[str, float]:
    """The on-daemon's group-commit histogram: inserts and records so far."""
    async with aiohttp.ClientSession() as session, session.get(base_url + "/metrics") as resp:
        text = await resp.text()
    found: dict[str, float] = {}
    for name in ("count", "sum"):
        match = re.search(rf"^secretmirror_audit_batch_records_{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


async def _measure(pg: BenchPostgres, dsn: str, workdir: Path, out: dict[str, Any]) -> None:
    on = Daemon(dsn, workdir / "on")
    off = Daemon(dsn, workdir / "off", {"SECRETMIRROR_AUDIT__ENABLED": "false"})
    # Same key for both, so each reads what the other wrote.
    off.key = on.key
    for daemon in (on, off):
        (daemon.workdir).mkdir(parents=True, exist_ok=True)
    on.start()
    await on.wait_ready()
    off.start()
    try:
        await off.wait_ready()
        ids: list[str] = []
        fill = ApiOps(on.base_url, CLIENTS, ids, "audit")
        meter = CpuMeter(on.pid, None)
        try:
            await run_phase(
                "fill(create)", CLIENTS, fill.create, meter, duration_s=None, max_ops=SECRETS
            )
        finally:
            await fill.close()
        rates: dict[str, list[float]] = {"on": [], "off": []}
        phases: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        before = await _batch_stats(on.base_url)
        for _ in range(ROUNDS):
            for side, daemon in (("on", on), ("off", off)):
                ops = ApiOps(daemon.base_url, CLIENTS, ids, side)
                try:
                    meter = CpuMeter(daemon.pid, pg.postmaster_pid)
                    result = await run_phase(f"get audit {side}", CLIENTS, ops.get, meter)
                finally:
                    await ops.close()
                rates[side].append(result["ops_per_s"])
                phases[side].append(result)
        after = await _batch_stats(on.base_url)
        inserts = after["count"] - before["count"]
        records = after["sum"] - before["sum"]
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE action = 'secret.read'"
            )
        finally:
            await conn.close()
        out["phases"] = phases
        out["gets_per_s"] = {side: statistics.median(r) for side, r in rates.items()}
        out["all_gets_per_s"] = rates
        out["ratio_on_vs_off"] = round(out["gets_per_s"]["on"] / out["gets_per_s"]["off"], 3)
        # Each "on" phase against the "off" phase right after it: on a shared machine the
        # load drifts between rounds, and a pair sees nearly the same load.
        pairs = [a / b for a, b in zip(rates["on"], rates["off"], strict=True) if b]
        out["paired_ratios"] = [round(r, 3) for r in pairs]
        out["paired_ratio_median"] = round(statistics.median(pairs), 3) if pairs else None
        out["cpu_ms_per_get"] = {
            side: {
                who: round(statistics.median(p["cpu_ms_per_op"][who] for p in phases[side]), 3)
                for who in phases[side][0].get("cpu_ms_per_op", {})
            }
            for side in phases
        }
        out["group_commit"] = {
            "inserts": int(inserts),
            "records": int(records),
            "records_per_insert": round(records / inserts, 1) if inserts else None,
            "read_records_stored": stored,
        }
    finally:
        await asyncio.to_thread(off.stop)
        await asyncio.to_thread(on.stop)


def _check(name: str, measured: float | None) -> dict[str, Any]:
    op, target = TARGETS[name]
    ok = measured is not None and (measured >= target if op == ">=" else measured <= target)
    return {"target": f"{op} {target:g}", "measured": measured, "pass": ok}


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": NAME,
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
        "config": {
            "clients": CLIENTS,
            "secrets": SECRETS,
            "rounds": ROUNDS,
            "duration_s": DURATION_S,
        },
    }
    pg = BenchPostgres()
    workdir = Path(tempfile.mkdtemp(prefix="sm-bench-audit-"))
    try:
        dsn = await asyncio.to_thread(pg.start)
        await pg.create_database()
        await _measure(pg, dsn, workdir, out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"audit bench failed: {out['error']}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await pg.drop_database()
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    gets = out.get("gets_per_s", {})
    out["targets"] = {
        "api_get_audit_on_c32_ops_s": _check("api_get_audit_on_c32_ops_s", gets.get("on")),
        "api_get_audit_on_vs_off_c32": _check(
            "api_get_audit_on_vs_off_c32", out.get("ratio_on_vs_off")
        ),
    }
    print()
    print(
        f"gets/s at {CLIENTS} clients (median of {ROUNDS}): audit on {gets.get('on')},"
        f" off {gets.get('off')}; on/off {out.get('ratio_on_vs_off')}"
    )
    print(
        f"paired on/off ratios {out.get('paired_ratios')}, median {out.get('paired_ratio_median')}"
    )
    print(f"cpu ms per get (median): {out.get('cpu_ms_per_get')}")
    print(f"group commit: {out.get('group_commit')}")
    print(f"load: start {out['load_start']['loadavg']}  end {out['load_end']['loadavg']}")
    print_targets(out)
    return out


if __name__ == "__main__":
    run_standalone(NAME, main)
