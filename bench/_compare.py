"""Each run's figures against the committed baseline (``bench/baseline/<name>.json``)."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from bench._common import BASELINE_DIR, RESULTS_DIR

#: A figure further than this from the baseline, the wrong way, is marked.
NOISE = 0.25
_RATE_HINTS = ("per_s", "ops_s", "_median", "_ratio", "ratio_", "speedup")
_LATENCY_KEYS = ("p50_ms", "p99_ms")
_SKIPPED = ("cpu", "samples", "buckets", "error_samples", "machine", "load_", "config")


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The figures of one result, by dotted path."""
    found: dict[str, float] = {}
    for name, target in (result.get("targets") or {}).items():
        if isinstance(target.get("measured"), int | float):
            found[f"targets.{name}"] = float(target["measured"])

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not any(key.startswith(s) for s in _SKIPPED) and key != "targets":
                    walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")
        elif isinstance(node, int | float) and not isinstance(node, bool):
            leaf = path.rpartition(".")[2].partition("[")[0]
            if leaf in _LATENCY_KEYS or any(h in leaf for h in _RATE_HINTS):
                found[path] = float(node)

    walk(result, "")
    return found


def _worse(path: str, now: float, then: float) -> bool:
    if then == 0 or path.startswith("targets."):
        return False  # a target's direction is in its own "target" text
    leaf = path.rpartition(".")[2]
    rate = "per_s" in leaf or leaf.endswith("ops_s")
    if not rate and (leaf.endswith(("_ms", "_s")) or "seconds" in leaf):
        return now / then > 1 + NOISE  # a latency or a duration: lower is better
    return now / then < 1 - NOISE


def compare(name: str, result: dict[str, Any]) -> None:
    """Print ``result``'s figures beside ``bench/baseline/<name>.json``'s."""
    path = BASELINE_DIR / f"{name}.json"
    if not path.exists():
        print(f"baseline: none for {name} (bench/baseline/{name}.json)")
        return
    baseline = json.loads(path.read_text())
    then, now = figures(baseline), figures(result)
    shared = [p for p in now if p in then]
    load = (baseline.get("load_start") or {}).get("loadavg")
    print(
        f"baseline: {name} from {baseline.get('started') or baseline.get('at')} (load {load});"
        f" this run load {(result.get('load_start') or {}).get('loadavg')}"
    )
    if baseline.get("config") != result.get("config"):
        print(f"  (configs differ: baseline {baseline.get('config')})")
    width = max((len(p) for p in shared), default=0)
    for key in shared:
        mark = "<<" if _worse(key, now[key], then[key]) else ""
        change = f"{now[key] / then[key]:6.2f}x" if then[key] else "     -"
        print(f"  {key:<{width}} {now[key]:>12g} vs {then[key]:>12g} {change} {mark}")
    missing = [p for p in then if p.startswith("targets.") and p not in now]
    if missing:
        print(f"  not measured this run: {', '.join(missing)}")


def main(args: list[str]) -> int:
    update = args[:1] == ["--update"]
    for name in args[1:] if update else args:
        result = RESULTS_DIR / f"{name}.json"
        if update:
            BASELINE_DIR.mkdir(exist_ok=True)
            shutil.copyfile(result, BASELINE_DIR / f"{name}.json")
            print(f"bench/baseline/{name}.json <- {result}")
        else:
            compare(name, json.loads(result.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
