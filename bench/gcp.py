"""The GCP benchmark: a real daemon replicating to the Secret Manager fake, beside the SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon_proc import store_env
from tests.gcpfake import gcp_settings, sdk_client
from tests.net import LineServer

from bench._common import check, knob, mean, measured, rounded, run_standalone
from bench._harness import (
    VERIFY_OFF,
    Api,
    Daemon,
    Postgres,
    Progress,
    postgres,
    run_ops,
    running,
    serving,
    values_for,
    write_limit,
)
from secretmirror.model import canonical

NAME = "gcp"
SECRETS = knob("SECRETMIRROR_BENCH_GCP_SECRETS", 1500, 150)
LIMITED_SECRETS = knob("SECRETMIRROR_BENCH_GCP_LIMITED_SECRETS", 100, 40)
CONCURRENCY = 16
API_CLIENTS = 32
RAW_S = knob("SECRETMIRROR_BENCH_GCP_RAW_S", 6.0, 2.0)
DEFAULT_WRITES_PER_S = 8.0
UNLIMITED_WRITES_PER_S = 100_000.0
DRAIN_TIMEOUT_S = 300.0
PROJECT = "smbench-project"


class FakeProcess(LineServer):
    """``python -m tests.gcpfake`` in a subprocess: its URL, a key file, its call statistics."""

    def __init__(self, workdir: Path) -> None:
        super().__init__("tests.gcpfake", "--key-dir", str(workdir))
        started = json.loads(self.first_line)
        self.url: str = started["url"]
        self.key_file = Path(started["key_file"])

    async def stats(self, since: int = 0) -> dict[str, Any]:
        async with Api(self.url, 1, {}) as api:
            found: dict[str, Any] = await api.call("GET", f"/_fake/stats?since={since}")
            return found


def gcp_env(
    fake: FakeProcess, writes_per_s: float | None, prefix: str = "", role: str = "backup"
) -> dict[str, str]:
    """A gcp store on the fake (``prefix`` or a fresh one), the verify schedule off."""
    prefix = prefix or f"b{uuid.uuid4().hex[:8]}-"
    fields = gcp_settings(
        fake.url, fake.key_file, prefix, project_id=PROJECT, **write_limit(writes_per_s)
    )
    return {**store_env(role, {"type": "gcp", **fields}), **VERIFY_OFF}


# -- the SDK's bare write loop ---------------------------------------------------------


def sdk_write_loop(
    url: str,
    key_file: Path | str,
    seconds: float,
    threads: int,
    ready: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """``add_secret_version`` from ``threads`` SDK clients for ``seconds``: calls per second.
    ``ready``, if given, is called between making the secrets and the loop."""
    payload = canonical(values_for(0))
    clients = [sdk_client(url, key_file) for _ in range(threads)]
    names = []
    for client in clients:
        created = client.create_secret(
            request={
                "parent": f"projects/{PROJECT}",
                "secret_id": f"raw-{uuid.uuid4().hex[:12]}",
                "secret": {"replication": {"automatic": {}}},
            }
        )
        names.append(created.name)
        client.add_secret_version(request={"parent": created.name, "payload": {"data": payload}})
    counts = [0] * threads
    errors = [0] * threads
    go = threading.Event()
    deadline = [0.0]

    def loop(i: int) -> None:
        go.wait()
        while time.monotonic() < deadline[0]:
            try:
                clients[i].add_secret_version(
                    request={"parent": names[i], "payload": {"data": payload}}
                )
                counts[i] += 1
            except Exception:
                errors[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    if ready is not None:
        ready()
    started = time.monotonic()
    deadline[0] = started + seconds
    go.set()
    for worker in workers:
        worker.join()
    took = time.monotonic() - started
    return {
        "threads": threads,
        "seconds": round(took, 3),
        "calls": sum(counts),
        "errors": sum(errors),
        "writes_per_s": round(sum(counts) / took, 1),
    }


# -- replication phases -----------------------------------------------------------------


def write_rate(times: list[float]) -> float | None:
    """Writes per second between the first and the last write the fake served."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


async def replication_phase(
    pg: Postgres,
    fake: FakeProcess,
    workdir: Path,
    writes_per_s: float | None,
    secrets_n: int,
    update: bool,
) -> dict[str, Any]:
    """One daemon on a fresh database; creates (and, if ``update``, one PATCH each)."""
    dsn = await pg.database()
    daemon = Daemon(dsn, workdir / dsn.rpartition("/")[2], gcp_env(fake, writes_per_s))
    out: dict[str, Any] = {
        "max_writes_per_s": writes_per_s or DEFAULT_WRITES_PER_S,
        "secrets": secrets_n,
    }
    async with serving(daemon, API_CLIENTS) as api:
        progress = Progress(api, DRAIN_TIMEOUT_S)
        ids = [""] * secrets_n

        async def create(_worker: int, n: int) -> None:
            ids[n] = await api.create(f"gcp-{n}", n)

        async def patch(_worker: int, n: int) -> None:
            # Never the values it was created with: a PATCH that changes nothing writes nothing.
            await api.update(ids[n], values_for(n + 1))

        steps = [("first_writes", create)] + ([("updates", patch)] if update else [])
        for applied, (step, op) in enumerate(steps, start=1):
            mark = (await fake.stats())["mark"]
            started = time.perf_counter()
            writes = await run_ops(op, API_CLIENTS, count=secrets_n)
            if writes["errors"]:
                raise RuntimeError(f"{step}: {writes['error_samples']}")
            done = await progress.drained(applied * secrets_n)
            out[step] = _summary(await fake.stats(mark), secrets_n, done - started)
    return out


def _summary(stats: dict[str, Any], changes: int, took_s: float) -> dict[str, Any]:
    rate = write_rate(stats["write_times"])
    writes = len(stats["write_times"])
    return {
        "changes": changes,
        "seconds": round(took_s, 3),
        "changes_per_s": round(changes / took_s, 1),
        "write_calls": writes,
        "writes_per_change": round(writes / changes, 2),
        "writes_per_s": rounded(rate),
        "calls": stats["ops"],
        "throttled": stats["throttled"],
    }


# -- results --------------------------------------------------------------------------


def targets(out: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    limited = out.get("limited", {}).get("first_writes", {}).get("writes_per_s")
    if limited is not None:
        found["limited_writes_vs_limit"] = {
            **check(">=", 0.9, round(limited / DEFAULT_WRITES_PER_S, 3), "of 8 writes/s"),
            "writes_per_s": limited,
            "limit_writes_per_s": DEFAULT_WRITES_PER_S,
        }
    unlimited = out.get("unlimited", {}).get("updates", {}).get("writes_per_s")
    raw = mean([r["writes_per_s"] for r in out.get("raw", [])])
    if unlimited is not None and raw:
        found["unlimited_writes_vs_sdk_loop"] = {
            **check(">=", 0.8, round(unlimited / raw, 3), "of the SDK's bare write loop"),
            "writes_per_s": unlimited,
            "sdk_writes_per_s": raw,
        }
    return found


def print_summary(out: dict[str, Any]) -> None:
    print(f"\n== {NAME} ==")
    for raw in out.get("raw", []):
        print(
            f"SDK bare add_secret_version loop ({raw['threads']} threads): "
            f"{raw['writes_per_s']} writes/s ({raw['errors']} errors)"
        )
    for phase in ("unlimited", "limited"):
        for step in ("first_writes", "updates"):
            if got := out.get(phase, {}).get(step):
                print(
                    f"{phase:9} {step:12}: {got['writes_per_s']} writes/s, "
                    f"{got['changes_per_s']} changes/s, {got['writes_per_change']} writes/change"
                )


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    out["raw"] = []
    async with running(FakeProcess, workdir) as fake, postgres() as pg:
        # The SDK loop right before and right after the unlimited phase.
        for phase, writes_per_s, count, update in (
            ("unlimited", UNLIMITED_WRITES_PER_S, SECRETS, True),
            ("limited", None, LIMITED_SECRETS, False),
        ):
            out["raw"].append(
                await asyncio.to_thread(sdk_write_loop, fake.url, fake.key_file, RAW_S, CONCURRENCY)
            )
            out[phase] = await replication_phase(pg, fake, workdir, writes_per_s, count, update)


async def main() -> dict[str, Any]:
    config = {
        "secrets": SECRETS,
        "limited_secrets": LIMITED_SECRETS,
        "replication_concurrency": CONCURRENCY,
        "api_clients": API_CLIENTS,
        "raw_s": RAW_S,
        "values_bytes": len(canonical(values_for(0))),
        "fake": "tests/gcpfake.py in its own process, response checking off",
    }
    return await measured(NAME, _measure, config=config, targets=targets, summary=print_summary)


if __name__ == "__main__":
    run_standalone(NAME, main)
