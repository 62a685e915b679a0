"""The mirrors benchmark (issue 16): fan-out to four mirrors beside each store's raw write loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tests.daemon_proc import store_env
from tests.moto import REGION, MotoServer
from tests.openbao import OpenBao, start_bao
from tests.prometheus import Outage

from bench._common import check, knob, mean, measured, ratio, rounded, run_standalone
from bench._harness import (
    VERIFY_OFF,
    Api,
    Cpu,
    Daemon,
    aws_env,
    aws_raw_loop,
    cpu_seconds,
    every,
    fetch,
    machine_busy_s,
    postgres,
    run_ops,
    running,
    serving,
    steady_rate,
    values_for,
)
from bench.gcp import FakeProcess, gcp_env, sdk_write_loop
from bench.vault import raw_loop as vault_raw_loop
from bench.vault import vault_env

NAME = "mirrors"
SECRETS = knob("SECRETMIRROR_BENCH_MIRRORS_SECRETS", 1500, 150)
API_S = knob("SECRETMIRROR_BENCH_DURATION_S", 5.0, 2.0)
RAW_S = knob("SECRETMIRROR_BENCH_MIRRORS_RAW_S", 6.0, 2.0)
#: The four raw loops at once (each makes its entries first, then they start together).
TOGETHER_S = RAW_S
CONCURRENCY = 16
API_CLIENTS = 32
UNLIMITED = 100_000.0
DRAIN_TIMEOUT_S = 600.0
#: The stores' timeout at the default ``replication.lease_s`` (30): max(lease_s / 3, 1).
STORE_TIMEOUT_S = 10.0
MIRRORS = ("aws", "vault", "gcp", "files")
#: The raw loop each mirror's update rate is compared with.
RAW_OF = {"aws": "aws_put", "vault": "vault_write", "gcp": "gcp_add_version", "files": "file_write"}
#: ... and its create rate.
RAW_CREATE_OF = {**RAW_OF, "aws": "aws_create"}
RAW_SIDES = ("raw_before", "raw_after")


# -- configuration ------------------------------------------------------------------------


def mirrors_env(
    moto: MotoServer, bao: OpenBao, fake: FakeProcess, files: Path, tag: str
) -> dict[str, str]:
    return {
        **aws_env(moto.endpoint_url, f"smbench-{tag}/aws/", UNLIMITED, role="MIRRORS__AWS"),
        **vault_env(bao, f"smbench-{tag}/mirror/", "mirrors__vault"),
        **gcp_env(fake, UNLIMITED, f"m{tag}-", "mirrors__gcp"),
        **store_env("mirrors__files", {"type": "file", "path": files}),
    }


# -- raw loops ---------------------------------------------------------------------------


def _durable_write(directory: Path, name: str, body: bytes) -> None:
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def file_raw_loop(
    directory: Path, duration_s: float = RAW_S, ready: Callable[[], object] | None = None
) -> dict[str, Any]:
    """The file store's durable write, bare: 16 workers (threads), 25 files each
    (``ready``, if given, is called in a thread first)."""
    directory.mkdir(parents=True, exist_ok=True)
    body = b'{"d":false,"v":1}\n' + secrets.token_bytes(220)

    async def write(worker: int, n: int) -> None:
        await asyncio.to_thread(_durable_write, directory, f"w{worker}-{n % 25}.secret", body)

    if ready is not None:
        await asyncio.to_thread(ready)
    result = await run_ops(write, CONCURRENCY, duration_s=duration_s, label="raw file write")
    return {"operation": "durable file write", **result}


def locations(
    moto: MotoServer, bao: OpenBao, fake: FakeProcess, files: Path, prefix: str
) -> dict[str, str]:
    """What a raw loop needs to find its store (plain strings: it may run in another process)."""
    return {
        "aws": moto.endpoint_url,
        "bao": bao.url,
        "bao_token": bao.root_token,
        "gcp": fake.url,
        "gcp_key": str(fake.key_file),
        "files": str(files),
        "prefix": prefix,
    }


async def raw_loop(
    loop: str, where: dict[str, str], seconds: float, ready: Callable[[], object] | None = None
) -> dict[str, Any]:
    """One store's bare write loop (``RAW_CREATE_OF`` and ``RAW_OF`` name them) for
    ``seconds``; ``ready``, if given, is called between making its entries and the loop."""
    if loop.startswith("aws_"):
        return await aws_raw_loop(
            where["aws"],
            where["prefix"],
            CONCURRENCY,
            operation=loop[4:],
            duration_s=seconds,
            ready=ready,
        )
    if loop == "vault_write":
        bao = OpenBao(where["bao"], where["bao_token"])
        return await vault_raw_loop(bao, where["prefix"], "write", Cpu({}), seconds, ready)
    if loop == "gcp_add_version":
        gcp = await asyncio.to_thread(
            sdk_write_loop, where["gcp"], where["gcp_key"], seconds, CONCURRENCY, ready
        )
        return {**gcp, "ops_per_s": gcp["writes_per_s"]}
    return await file_raw_loop(Path(where["files"]), seconds, ready)


async def raw_phase(
    moto: MotoServer, bao: OpenBao, fake: FakeProcess, workdir: Path, tag: str, round_: int
) -> dict[str, Any]:
    """Each store's bare write loop, one store at a time."""
    found: dict[str, Any] = {}
    stores = locations(
        moto, bao, fake, workdir / f"raw-files-{round_}", f"smbench-{tag}/raw{round_}/"
    )
    for loop in ("aws_create", "aws_put", "vault_write", "gcp_add_version", "file_write"):
        found[loop] = await raw_loop(loop, stores, RAW_S)
        print(f"  raw {loop}: {found[loop]['ops_per_s']}/s")
    return found


# -- the machine's ceiling: the four raw loops at once ------------------------------------

#: The loop each mirror's deliveries stand for, and the process that serves it.
TOGETHER = {
    "aws_put": "moto",
    "vault_write": "bao",
    "gcp_add_version": "gcp_fake",
    "file_write": "",
}


def _one_raw_loop(loop: str, where: dict[str, str], start: Any, seconds: float) -> dict[str, Any]:
    """One raw loop in a process of its own (spawned): it makes its entries, waits at the
    ``start`` barrier for the other three, then runs: the four at once, each with its own
    interpreter, as if each store had a client of its own."""
    before = time.process_time()
    found = asyncio.run(raw_loop(loop, where, seconds, start.wait))
    found.setdefault("ops", found.get("calls"))  # the SDK loop counts calls
    found["client_cpu_s"] = round(time.process_time() - before, 3)
    ended = time.time()
    found["window"] = [round(ended - found["seconds"], 3), round(ended, 3)]
    return found


def _cpu_between(
    samples: list[tuple[float, dict[str, float | None]]], who: str, t0: float, t1: float
) -> float | None:
    """``who``'s CPU seconds between ``t0`` and ``t1``, read off ``samples`` (interpolated)."""

    def at(t: float) -> float | None:
        points = [(ts, got[who]) for ts, got in samples if got.get(who) is not None]
        if len(points) < 2 or not points[0][0] <= t <= points[-1][0]:
            return None
        for (ta, va), (tb, vb) in itertools.pairwise(points):
            if ta <= t <= tb:
                assert va is not None
                assert vb is not None
                return va + (vb - va) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
        return None

    start, end = at(t0), at(t1)
    return None if start is None or end is None else end - start


async def together_phase(
    moto: MotoServer,
    bao: OpenBao,
    fake: FakeProcess,
    workdir: Path,
    tag: str,
    pids: dict[str, int | None],
) -> dict[str, Any]:
    """The four raw loops at once, each in its own process, for ``TOGETHER_S``: what this
    machine gives four stores' writes at the same time with no worker in between (the
    ceiling of a fan-out here), and each store server's CPU per write in that window."""
    stores = locations(moto, bao, fake, workdir / "raw-files-together", f"smbench-{tag}/together/")
    samples: list[tuple[float, dict[str, float | None]]] = []

    def take() -> None:
        got = {who: cpu_seconds(pid) for who, pid in pids.items()}
        samples.append((time.time(), {**got, "machine_busy": machine_busy_s()}))

    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    async with every(0.2, take):
        with (
            spawn.Manager() as manager,
            ProcessPoolExecutor(len(TOGETHER), mp_context=spawn) as pool,
        ):
            start = manager.Barrier(len(TOGETHER))
            runs = [
                loop.run_in_executor(pool, _one_raw_loop, name, stores, start, TOGETHER_S)
                for name in TOGETHER
            ]
            results = await asyncio.gather(*runs)
    take()
    found: dict[str, Any] = {"seconds": TOGETHER_S}
    for name, result in zip(TOGETHER, results, strict=True):
        t0, t1 = result["window"]
        server = TOGETHER[name]
        used = _cpu_between(samples, server, t0, t1) if server else result["client_cpu_s"]
        result["server"] = server or "the kernel, from the loop's own process"
        result["server_cpu_ms_per_write"] = (
            None if used is None or not result["ops"] else round(used * 1000 / result["ops"], 3)
        )
        found[name] = result
        print(
            f"  together {name}: {result['ops_per_s']}/s,"
            f" server {result['server_cpu_ms_per_write']} ms CPU per write"
        )
    starts = [r["window"][0] for r in results]
    ends = [r["window"][1] for r in results]
    overlap = max(min(ends) - max(starts), 0.0)
    found["overlap_s"] = round(overlap, 3)
    shortest = min(r["window"][1] - r["window"][0] for r in results)
    found["overlap_of_shortest"] = round(overlap / shortest, 3)
    first, last = min(starts), max(ends)
    busy = _cpu_between(samples, "machine_busy", first, last)
    found["machine_busy_fraction"] = (
        None if busy is None else round(busy / ((last - first) * (os.cpu_count() or 1)), 3)
    )
    return found


# -- pausing the stores ------------------------------------------------------------------


class Paused:
    """Every mirror's store stops answering (SIGSTOP; the file directory swapped for a
    plain file: ``tests/prometheus.py``'s ``Outage``) until ``resume``."""

    def __init__(self, pids: list[int], files: Path) -> None:
        self.pids = pids
        self.files = Outage(files)
        self.paused = False

    def pause(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        self.files.begin()
        self.paused = True

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.files.end()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def drain(api: Api, backlog: int, paused: Paused) -> dict[str, Any]:
    """Resume the stores and sample until no mirror has anything pending."""
    start = await api.replication()
    samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
    paused.resume()
    resumed = time.perf_counter()
    while time.perf_counter() < resumed + DRAIN_TIMEOUT_S:
        found = await api.replication()
        samples.append((time.perf_counter() - resumed, found))
        if all(found[n]["pending"] == 0 for n in MIRRORS):
            break
        await asyncio.sleep(0.1)
    result: dict[str, Any] = {"backlog": backlog}
    for name in MIRRORS:
        applied = [(at, found[name]["applied"] - start[name]["applied"]) for at, found in samples]
        first = next((at for at, done in applied if done > 0), None)
        done = next((at for at, found in samples if not found[name]["pending"]), None)
        steady = steady_rate(applied, backlog)
        result[name] = {
            "drained": done is not None,
            "applied": applied[-1][1] if applied else 0,
            "first_applied_after_s": rounded(first, 2),
            "drained_after_s": rounded(done, 2),
            "applied_per_s_10_90": rounded(steady),
            "applied_per_s_whole": None
            if done is None or first is None or done <= first
            else round(backlog / (done - first), 1),
        }
    result["dead"] = {n: int(samples[-1][1][n]["dead"]) for n in MIRRORS}
    return result


# -- the run ------------------------------------------------------------------------------


async def api_creates(api: Api, tag: str, label: str, cpu: Cpu | None = None) -> dict[str, Any]:
    create = api.creates(f"{tag}-{label.replace(' ', '-')}")
    return await run_ops(
        create, API_CLIENTS, duration_s=API_S, cpu=cpu, label=f"API creates ({label})"
    )


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    tag = secrets.token_hex(3)
    files = workdir / "mirror-files"
    async with (
        postgres() as pg,
        running(MotoServer, record=False) as moto,
        running(start_bao) as server,
        running(FakeProcess, workdir) as fake,
    ):
        try:
            bao = OpenBao(server.url, server.root_token)
            servers = {"moto": moto.pid, "bao": server.process.pid, "gcp_fake": fake.pid}
            print("raw (before): each store's bare write loop, alone")
            out["raw_before"] = await raw_phase(moto, bao, fake, workdir, tag, 1)
            # Right after, at the same fill of moto's region (it slows as the region fills).
            print("raw, the four loops at once, each in its own process")
            out["raw_together"] = await together_phase(moto, bao, fake, workdir, tag, servers)

            daemon = Daemon(await pg.database(), workdir / "none", {**VERIFY_OFF})
            async with serving(daemon, API_CLIENTS) as api:
                cpu = Cpu({"daemon": daemon.pid}, pg.postmaster_pid)
                out["api_no_mirrors"] = await api_creates(api, tag, "no mirrors", cpu)

            env = {**mirrors_env(moto, bao, fake, files, tag), **VERIFY_OFF}
            dsn = await pg.database()
            daemon = Daemon(dsn, workdir / "four", env)
            async with serving(daemon, API_CLIENTS) as api:
                cpu = Cpu({"daemon": daemon.pid, **servers}, pg.postmaster_pid)
                out["api_four_mirrors"] = await api_creates(api, tag, "4 mirrors", cpu)
                drained_s = await api.until_drained(DRAIN_TIMEOUT_S, MIRRORS)
                out["api_four_mirrors"]["then_drained_in_s"] = round(drained_s, 2)
                paused = Paused([p for p in servers.values() if p is not None], files)
                try:
                    await _fan_out(out, api, dsn, cpu, paused, tag)
                finally:
                    paused.resume()
                out["status_at_end"] = {
                    n: t for n, t in (await api.replication()).items() if n in MIRRORS
                }
            out["daemon"] = daemon.stopped()
            print("raw (after)")
            out["raw_after"] = await raw_phase(moto, bao, fake, workdir, tag, 2)
        finally:
            out["moto_500_answers"] = moto.server_errors()


async def _fan_out(
    out: dict[str, Any], api: Api, dsn: str, cpu: Cpu, paused: Paused, tag: str
) -> None:
    """The backlogs built with the stores paused (creates, then updates), and their drains."""
    ids: list[str] = []
    create = api.creates(f"{tag}-fan", ids)

    async def update(_worker: int, n: int) -> None:
        # A new password every time: a PATCH that changes nothing writes nothing.
        await api.update(ids[n], {**values_for(n), "password": secrets.token_hex(12)})

    for step in ("creates", "updates"):
        paused.pause()
        paused_at = time.perf_counter()
        op = create if step == "creates" else update
        writes = await run_ops(op, API_CLIENTS, count=SECRETS if step == "creates" else len(ids))
        print(
            f"  {step} with the stores paused: API {writes['ops_per_s']}/s"
            f" ({writes['errors']} errors)"
        )
        # The deliveries claimed before the worker saw a store down wait out the
        # store timeout and then keep their lease as long again (a write cut off
        # may still land): the pause outlasts both, so the drain starts with
        # every row claimable but the probes'.
        resume_at = paused_at + 2 * STORE_TIMEOUT_S + 1
        await asyncio.sleep(max(resume_at - time.perf_counter(), 0))
        # Deliveries under lease per target (a paused store's probes hold theirs).
        held = await fetch(
            dsn,
            "SELECT target, count(*) AS n FROM deliveries"
            " WHERE leased_until > now() GROUP BY target",
        )
        cpu.start()
        found = await drain(api, writes["ops"], paused)
        found["leased_at_resume"] = {r["target"]: int(r["n"]) for r in held}
        found["cpu"] = cpu.stop(writes["ops"] * len(MIRRORS))
        found["api_writes_while_paused"] = writes
        out[f"drain_{step}"] = found
        print(
            f"  {step} drained: "
            + ", ".join(f"{n} {found[n]['applied_per_s_10_90']}/s" for n in MIRRORS)
        )


# -- results ------------------------------------------------------------------------------


def raw_mean(out: dict[str, Any], loop: str) -> float | None:
    return mean([out.get(side, {}).get(loop, {}).get("ops_per_s") for side in RAW_SIDES])


def targets(out: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in MIRRORS:
        rate = out.get("drain_updates", {}).get(name, {}).get("applied_per_s_10_90")
        raw = raw_mean(out, RAW_OF[name])
        found[f"{name}_updates_vs_raw"] = check(
            ">=",
            0.8,
            ratio(rate, raw),
            f"{name} mirror applied {rate}/s (10-90% of the drain, 4 mirrors draining)"
            f" / raw {RAW_OF[name]} {raw}/s (mean of before and after)",
        )
    none = out.get("api_no_mirrors", {}).get("ops_per_s")
    four = out.get("api_four_mirrors", {}).get("ops_per_s")
    found["api_creates_four_mirrors_vs_none"] = check(
        ">=",
        0.8,
        ratio(four, none),
        f"API creates/s at 32 clients: {four} with 4 mirrors, {none} without",
    )
    return found


def analysis(out: dict[str, Any]) -> dict[str, Any]:
    """Ratios beside the targets: creates against the raw loops, the API with the worker idle."""
    found: dict[str, Any] = {}
    for name in MIRRORS:
        rate = out.get("drain_creates", {}).get(name, {}).get("applied_per_s_10_90")
        found[f"{name}_creates_vs_raw_{RAW_CREATE_OF[name]}"] = ratio(
            rate, raw_mean(out, RAW_CREATE_OF[name])
        )
    paused = out.get("drain_creates", {}).get("api_writes_while_paused", {}).get("ops_per_s")
    found["api_creates_four_paused_mirrors_vs_none"] = ratio(
        paused, out.get("api_no_mirrors", {}).get("ops_per_s")
    )
    together = out.get("raw_together", {})
    for name in MIRRORS:
        loop = RAW_OF[name]
        rate = together.get(loop, {}).get("ops_per_s")
        # What the machine gives this store's writes while the other three stores are
        # written too: the ceiling a fan-out to these four can reach here (against the
        # loop alone just before it, at the same fill of moto's region).
        alone = out.get("raw_before", {}).get(loop, {}).get("ops_per_s")
        found[f"{name}_raw_together_vs_alone"] = ratio(rate, alone)
        applied = out.get("drain_updates", {}).get(name, {}).get("applied_per_s_10_90")
        found[f"{name}_updates_vs_raw_together"] = ratio(applied, rate)
    found["api_ceiling"] = api_ceiling(out)
    return found


def api_ceiling(out: dict[str, Any]) -> dict[str, Any] | None:
    """The most creates/s this machine could take with four mirrors (bench/README.md): its
    cores over a create's CPU with none (client, daemon, PostgreSQL) plus the store servers'
    CPU per write, from the loops run together."""
    per_create = out.get("api_no_mirrors", {}).get("cpu_ms_per_op", {})
    together = out.get("raw_together", {})
    stores = [together.get(RAW_OF[n], {}).get("server_cpu_ms_per_write") for n in MIRRORS]
    if not per_create or any(ms is None for ms in stores):
        return None
    api_ms = sum(per_create.get(who, 0.0) for who in ("client", "daemon", "postgres"))
    stores_ms = sum(ms for ms in stores if ms is not None)
    ceiling = (os.cpu_count() or 1) * 1000 / (api_ms + stores_ms)
    none = out.get("api_no_mirrors", {}).get("ops_per_s")
    return {
        "create_cpu_ms_no_mirrors": round(api_ms, 3),
        "store_servers_cpu_ms_per_create": round(stores_ms, 3),
        "creates_per_s": round(ceiling, 1),
        "vs_no_mirrors": ratio(ceiling, none),
        "api_four_mirrors_vs_ceiling": ratio(
            out.get("api_four_mirrors", {}).get("ops_per_s"), ceiling
        ),
    }


def print_summary(out: dict[str, Any]) -> None:
    out["ratios"] = analysis(out)
    print(f"\n== {NAME} ==")
    together = out.get("raw_together", {})
    for loop in ("aws_create", "aws_put", "vault_write", "gcp_add_version", "file_write"):
        at_once = together.get(loop, {}).get("ops_per_s")
        print(
            f"raw {loop:<16} {raw_mean(out, loop)}/s (mean of before and after);"
            f" {at_once}/s with the four loops at once"
        )
    for step in ("creates", "updates"):
        got = out.get(f"drain_{step}", {})
        for name in MIRRORS:
            if name in got:
                d = got[name]
                print(
                    f"{step:<8} {name:<6} {d['applied_per_s_10_90']}/s (10-90%),"
                    f" {d['applied_per_s_whole']}/s whole, first after"
                    f" {d['first_applied_after_s']} s, drained after {d['drained_after_s']} s"
                )
    for key, value in out["ratios"].items():
        print(f"{key}: {value}")


async def main() -> dict[str, Any]:
    config = {
        "secrets": SECRETS,
        "api_s": API_S,
        "raw_s": RAW_S,
        "replication_concurrency": CONCURRENCY,
        "api_clients": API_CLIENTS,
        "max_writes_per_s": f"aws and gcp mirrors {UNLIMITED:g} (lifted); hashicorp, file: none",
        "region": REGION,
        "mirrors": list(MIRRORS),
    }
    return await measured(NAME, _measure, config=config, targets=targets, summary=print_summary)


if __name__ == "__main__":
    run_standalone(NAME, main)
