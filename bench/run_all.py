"""``make bench``: run every bench module and write ``bench/results/<module>.json``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from bench._common import BENCH_DIR, write_results
from bench._compare import compare

Main = Callable[[], Coroutine[Any, Any, dict[str, Any]]]


def discover() -> dict[str, Main]:
    """Every ``bench/<name>.py`` with an ``async def main()``, by name."""
    found: dict[str, Main] = {}
    for info in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "run_all" or info.ispkg:
            continue
        module = importlib.import_module(f"bench.{info.name}")
        main = getattr(module, "main", None)
        if main is not None and inspect.iscoroutinefunction(main):
            found[info.name] = main
    return found


def run(names: list[str]) -> int:
    modules = discover()
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"no bench module named {', '.join(unknown)}; found: {', '.join(modules)}")
        return 2
    selected = names or list(modules)
    failed: list[str] = []
    for name in selected:
        print(f"=== bench.{name}", flush=True)
        started = time.monotonic()
        try:
            result = asyncio.run(modules[name]())
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        if not isinstance(result, dict):
            print(f"bench.{name}: main() returned {type(result).__name__}, not a dict")
            failed.append(name)
            continue
        path = write_results(name, result)
        compare(name, result)
        if result.get("error"):
            failed.append(name)
        seconds = time.monotonic() - started
        print(f"=== bench.{name}: wrote {path.relative_to(BENCH_DIR.parent)} in {seconds:.1f} s")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run([a for a in sys.argv[1:] if a != "--quick"]))
