"""Helpers shared by the bench modules: results, machine facts, statistics, the run wrapper."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.load import quantile

#: ``--quick`` on the command line (or SECRETMIRROR_BENCH_QUICK=1): every module at a size
#: that proves it runs (a minute or so each), not one whose figures mean much.
QUICK = "--quick" in sys.argv[1:] or os.environ.get("SECRETMIRROR_BENCH_QUICK") == "1"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BASELINE_DIR = BENCH_DIR / "baseline"


def knob(variable: str | None, default: float, quick: float) -> Any:
    """A size or duration: the environment's ``variable``, else ``quick`` under ``--quick``,
    else ``default`` (of the default's type)."""
    value = os.environ.get(variable) if variable else None
    return type(default)(value if value is not None else quick if QUICK else default)


def write_results(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    return path


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def machine_load() -> dict[str, Any]:
    """What else the machine is doing: ``uptime`` and the load averages."""
    uptime = None
    if exe := shutil.which("uptime"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            uptime = subprocess.run(
                [exe], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
    load1, load5, load15 = os.getloadavg()
    return {
        "at": now_iso(),
        "uptime": uptime,
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
    }


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99 (nearest rank)/max/mean in milliseconds; None of no latencies."""
    values = sorted(latencies_s)
    if not values:
        return dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"))
    return {
        "p50_ms": round(quantile(values, 0.50) * 1000, 3),
        "p90_ms": round(quantile(values, 0.90) * 1000, 3),
        "p99_ms": round(quantile(values, 0.99) * 1000, 3),
        "max_ms": round(values[-1] * 1000, 3),
        "mean_ms": round(sum(values) / len(values) * 1000, 3),
    }


def mean(values: list[float | None]) -> float | None:
    """The mean of the figures that were measured (not None, not 0), to 0.1; None of none."""
    found = [v for v in values if v]
    return round(sum(found) / len(found), 1) if found else None


def ratio(value: float | None, limit: float | None, digits: int = 3) -> float | None:
    """``value / limit`` rounded, None when either is missing or zero."""
    return round(value / limit, digits) if value and limit else None


def rounded(value: float | None, digits: int = 1) -> float | None:
    """``value`` rounded, None for None."""
    return None if value is None else round(value, digits)


def check(op: str, target: float, measured: float | None, what: str = "") -> dict[str, Any]:
    """One entry of ``"targets"``: ``op`` is ``">="`` or ``"<="``."""
    ok = measured is not None and (measured >= target if op == ">=" else measured <= target)
    found: dict[str, Any] = {"target": f"{op} {target:g}", "measured": measured, "pass": ok}
    if what:
        found["what"] = what
    return found


def print_targets(out: dict[str, Any]) -> None:
    """The closing table every bench prints: each target, pass or MISS, and the figure."""
    targets = out.get("targets", {})
    width = max((len(name) for name in targets), default=0)
    print("targets:")
    for name, found in targets.items():
        verdict = "pass" if found["pass"] else "MISS"
        print(f"  {verdict:<5} {name:<{width}} {found['target']:<10} measured {found['measured']}")
        if found.get("what"):
            print(f"        {found['what']}")


def print_load(out: dict[str, Any]) -> None:
    print(
        f"load: start {out['load_start']['loadavg']}  end {out['load_end']['loadavg']}"
        f"  ({out['load_end']['uptime']})"
    )


async def measured(
    name: str,
    measure: Callable[[dict[str, Any], Path], Awaitable[None]],
    *,
    config: dict[str, Any] | None = None,
    targets: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    summary: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """A module's ``main()``: ``measure(out, workdir)`` between the machine facts, a failure
    recorded as ``"error"``; then the targets and the summary of whatever it measured."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    out: dict[str, Any] = {
        "benchmark": name,
        "started": now_iso(),
        "machine": machine_info(),
        "load_start": machine_load(),
    }
    if config is not None:
        out["config"] = config
    workdir = Path(tempfile.mkdtemp(prefix=f"sm-bench-{name}-"))
    try:
        await measure(out, workdir)
    except (Exception, pytest.fail.Exception) as exc:  # tests' helpers fail with pytest.fail
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"{name} bench failed: {out['error']}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = machine_load()
    out["finished"] = now_iso()
    if targets is not None:
        try:
            out["targets"] = targets(out)
        except (KeyError, TypeError, ZeroDivisionError) as exc:  # a phase did not measure
            out["targets"] = {}
            out.setdefault("error", f"targets: {type(exc).__name__}: {exc}")
    if summary is not None:
        with_error = out.get("error")
        try:
            summary(out)
        except (KeyError, TypeError) as exc:
            print(f"(summary incomplete: {type(exc).__name__}: {exc}; error: {with_error})")
    print_load(out)
    print_targets(out)
    return out


def run_standalone(name: str, main: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """``python -m bench.<name>``: run one module's ``main``, write its results, compare."""
    from bench._compare import compare

    started = time.monotonic()
    result = asyncio.run(main())
    path = write_results(name, result)
    compare(name, result)
    print(f"\n{name}: wrote {path} in {time.monotonic() - started:.1f} s")
