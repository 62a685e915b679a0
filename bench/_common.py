"""Helpers shared by the bench modules: results files, machine facts, statistics.

Modules whose name starts with ``_`` are helpers; ``run_all`` never runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
    exe = shutil.which("uptime")
    if exe:
        try:
            uptime = subprocess.run(
                [exe], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            uptime = None
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


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in milliseconds."""
    values = sorted(latencies_s)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "p50_ms": ms(percentile(values, 0.50)),
        "p90_ms": ms(percentile(values, 0.90)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(values[-1] if values else None),
        "mean_ms": ms(sum(values) / len(values) if values else None),
    }


def run_standalone(name: str, main: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """``python -m bench.<name>``: run one module's ``main`` and write its results."""
    started = time.monotonic()
    result = asyncio.run(main())
    path = write_results(name, result)
    print(f"\n{name}: wrote {path} in {time.monotonic() - started:.1f} s")
