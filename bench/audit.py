"""The audit log's cost: gets/s at 32 clients with the audit log on and off, same run."""

from __future__ import annotations

import contextlib
import re
import statistics
from pathlib import Path
from typing import Any

from bench._common import check, knob, measured, run_standalone
from bench._harness import Api, Cpu, Daemon, fetchval, postgres, run_ops, serving
from bench.api import DURATION_S, api_ops

NAME = "audit"
CLIENTS = 32
SECRETS = 1000
ROUNDS = knob("SECRETMIRROR_BENCH_AUDIT_ROUNDS", 5, 1)


async def _batch_stats(api: Api) -> dict[str, float]:
    """The on-daemon's group-commit histogram: inserts and records so far."""
    text = await api.metrics()
    found: dict[str, float] = {}
    for name in ("count", "sum"):
        match = re.search(rf"^secretmirror_audit_batch_records_{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    async with postgres() as pg, contextlib.AsyncExitStack() as running:
        dsn = await pg.database()
        on = Daemon(dsn, workdir / "on")
        # Same key for both, so each reads what the other wrote.
        off = Daemon(dsn, workdir / "off", {"SECRETMIRROR_AUDIT__ENABLED": "false"}, key=on.key)
        daemons = {"on": on, "off": off}
        apis = {
            side: await running.enter_async_context(serving(daemon, CLIENTS))
            for side, daemon in daemons.items()
        }
        await _phases(apis, daemons, pg.postmaster_pid, dsn, out)


async def _phases(
    apis: dict[str, Api],
    daemons: dict[str, Daemon],
    postmaster: int | None,
    dsn: str,
    out: dict[str, Any],
) -> None:
    ids: list[str] = []
    fill = api_ops(apis["on"], ids, "audit")["create"]
    await run_ops(fill, CLIENTS, count=SECRETS, label="fill(create)")
    phases: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    before = await _batch_stats(apis["on"])
    for _ in range(ROUNDS):
        for side, api in apis.items():
            cpu = Cpu({"daemon": daemons[side].pid}, postmaster)
            get = api_ops(api, ids, side)["get"]
            result = await run_ops(
                get, CLIENTS, duration_s=DURATION_S, cpu=cpu, label=f"get audit {side}"
            )
            phases[side].append(result)
    after = await _batch_stats(apis["on"])
    rates = {side: [p["ops_per_s"] for p in found] for side, found in phases.items()}
    inserts = after["count"] - before["count"]
    records = after["sum"] - before["sum"]
    stored = await fetchval(dsn, "SELECT count(*) FROM audit_records WHERE action = 'secret.read'")
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


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    return {
        "api_get_audit_on_c32_ops_s": check(">=", 1500, out.get("gets_per_s", {}).get("on")),
        "api_get_audit_on_vs_off_c32": check(">=", 0.8, out.get("ratio_on_vs_off")),
    }


def _summary(out: dict[str, Any]) -> None:
    gets = out.get("gets_per_s", {})
    print(
        f"\ngets/s at {CLIENTS} clients (median of {ROUNDS}): audit on {gets.get('on')},"
        f" off {gets.get('off')}; on/off {out.get('ratio_on_vs_off')}"
    )
    print(
        f"paired on/off ratios {out.get('paired_ratios')}, median {out.get('paired_ratio_median')}"
    )
    print(f"cpu ms per get (median): {out.get('cpu_ms_per_get')}")
    print(f"group commit: {out.get('group_commit')}")


async def main() -> dict[str, Any]:
    config = {"clients": CLIENTS, "secrets": SECRETS, "rounds": ROUNDS, "duration_s": DURATION_S}
    return await measured(NAME, _measure, config=config, targets=_targets, summary=_summary)


if __name__ == "__main__":
    run_standalone(NAME, main)
