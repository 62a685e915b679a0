"""The rekey job (``keys rotate``): re-encryption throughput and the API beside it.

A real ``secretmirror serve`` subprocess configured with ``B,A`` and 100,000
stored ciphertexts under the old key A (50,000 event snapshots and 50,000 sql
store values, written straight into PostgreSQL: filling through the API would
take minutes and measure the API, not the job).

In the same run:

* **raw limit**: a bare loop in this process over a sample of the same rows:
  SELECT, decrypt, encrypt (under A again, so the job still finds them) and one
  ``UPDATE`` per row, over one connection. Also reported: the same loop with
  one batched ``UPDATE`` per 200 rows (the job's shape, without its pacing).
* **idle**: API write latency (PATCH, 4 clients) with no job running.
* **job**: ``POST /admin/v1/keys/rotate`` while the same 4 clients write; the
  rekey rate is ciphertexts re-encrypted / the job's own duration.

Targets (issue #13): job rate >= 0.5 x the bare loop; write p99 during the
job <= 2 x idle. ``SECRETMIRROR_BENCH_REKEY_N`` changes the 100,000.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench._common import (
    latency_summary,
    machine_info,
    machine_load,
    now_iso,
    print_load,
    print_targets,
    run_standalone,
)
from bench.api import ADMIN_TOKEN, BenchPostgres, Daemon
from secretmirror.crypto import Keyring, secret_aad

N = int(os.environ.get("SECRETMIRROR_BENCH_REKEY_N", "100000"))
#: Rows the bare loop re-encrypts (its rate is steady; all 100,000 would take minutes).
RAW_SAMPLE = min(N // 2, 10_000)
WRITERS = 4
IDLE_WRITES = 400
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _key() -> bytes:
    return secrets.token_bytes(32)


async def _fill(dsn: str, key_a: Keyring, deployment_id: str) -> None:
    """N/2 event snapshots and N/2 sql values under A, by COPY."""
    half = N // 2
    events, values = [], []
    for i in range(half):
        sid = uuid.uuid4()
        blob = b'{"password":"' + secrets.token_hex(16).encode() + b'","user":"u%d"}' % i
        sealed = key_a.encrypt(blob, secret_aad(str(sid), 1))
        events.append((sid, 1, "create", "bench", "h", sealed))
        values.append(
            (uuid.UUID(deployment_id), sid, 1, "h", key_a.encrypt(blob, secret_aad(str(sid), 1)))
        )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "events",
            records=events,
            columns=["secret_id", "version", "kind", "actor", "hash", "snapshot"],
        )
        await conn.copy_records_to_table(
            "secretmirror_values",
            records=values,
            columns=["deployment_id", "secret_id", "version", "hash", "ciphertext"],
        )
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE secretmirror_values")
    finally:
        await conn.close()


async def _raw_loop(dsn: str, key_a: Keyring, kid: bytes, batched: bool) -> dict[str, Any]:
    """SELECT + decrypt + encrypt + UPDATE over RAW_SAMPLE event snapshots."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT seq, secret_id::text, version, snapshot FROM events "
            "WHERE key_id = $1 ORDER BY seq LIMIT $2",
            kid,
            RAW_SAMPLE,
        )
        started = time.perf_counter()
        pending: list[tuple[int, bytes]] = []
        for row in rows:
            aad = secret_aad(row["secret_id"], row["version"])
            sealed = key_a.encrypt(key_a.decrypt(row["snapshot"], aad), aad)
            if not batched:
                await conn.execute(
                    "UPDATE events SET snapshot = $1 WHERE seq = $2", sealed, row["seq"]
                )
                continue
            pending.append((row["seq"], sealed))
            if len(pending) == 200:
                await _update_many(conn, pending)
                pending = []
        if pending:
            await _update_many(conn, pending)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    # The SELECT is left out of the clock: the loop's floor is the per-row work.
    return {"rows": len(rows), "seconds": round(seconds, 3), "per_s": round(len(rows) / seconds, 1)}


async def _update_many(conn: asyncpg.Connection, pending: list[tuple[int, bytes]]) -> None:
    await conn.execute(
        "UPDATE events e SET snapshot = c.s FROM unnest($1::bigint[], $2::bytea[]) AS c(q, s) "
        "WHERE e.seq = c.q",
        [p[0] for p in pending],
        [p[1] for p in pending],
    )


async def _writers(url: str, ids: list[str], stop: asyncio.Event, limit: int | None) -> list[float]:
    """WRITERS clients PATCHing their own secrets until ``stop`` (or ``limit`` writes)."""
    latencies: list[float] = []
    count = [0]
    async with aiohttp.ClientSession(headers=HEADERS) as session:

        async def client(mine: list[str]) -> None:
            i = 0
            while not stop.is_set() and (limit is None or count[0] < limit):
                sid = mine[i % len(mine)]
                i += 1
                count[0] += 1
                started = time.perf_counter()
                async with session.patch(
                    f"{url}/api/v1/secrets/{sid}", json={"values": {"v": secrets.token_hex(8)}}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(ids[w::WRITERS]) for w in range(WRITERS)))
    return latencies


async def _api_secrets(url: str, n: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        for i in range(n):
            async with session.post(
                f"{url}/api/v1/secrets", json={"name": f"w{i}", "values": {"v": "0"}}
            ) as resp:
                ids.append((await resp.json())["id"])
    return ids


async def _run_job(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        async with session.post(f"{url}/admin/v1/keys/rotate") as resp:
            job = await resp.json()
            assert resp.status == 202, job
        while job["status"] in ("queued", "running"):
            await asyncio.sleep(0.2)
            async with session.get(f"{url}/admin/v1/jobs/{job['id']}") as resp:
                job = await resp.json()
    return dict(job)


def _seconds(job: dict[str, Any]) -> float:
    from datetime import datetime

    started = datetime.fromisoformat(job["started"])
    finished = datetime.fromisoformat(job["finished"])
    return (finished - started).total_seconds()


async def _measure(pg: BenchPostgres, out: dict[str, Any], workdir: Path) -> None:
    dsn = pg.start()
    await pg.create_database()
    raw_a, raw_b = _key(), _key()
    key_a = Keyring([raw_a])
    daemon = Daemon(dsn, workdir)
    daemon.key = f"{base64.b64encode(raw_b).decode()},{base64.b64encode(raw_a).decode()}"
    daemon.start()
    try:
        await daemon.wait_ready()
        conn = await asyncpg.connect(dsn)
        deployment_id = str(await conn.fetchval("SELECT id FROM deployment"))
        await conn.close()
        started = time.monotonic()
        await _fill(dsn, key_a, deployment_id)
        out["fill_s"] = round(time.monotonic() - started, 1)
        kid = key_a.primary_key_id
        out["raw"] = {
            "per_row_update": await _raw_loop(dsn, key_a, kid, batched=False),
            "batched_update": await _raw_loop(dsn, key_a, kid, batched=True),
        }
        ids = await _api_secrets(daemon.base_url, 40)
        idle = await _writers(daemon.base_url, ids, asyncio.Event(), IDLE_WRITES)
        out["idle_writes"] = {"n": len(idle), **latency_summary(idle)}
        stop = asyncio.Event()
        writers = asyncio.create_task(_writers(daemon.base_url, ids, stop, None))
        job = await _run_job(daemon.base_url)
        stop.set()
        during = await writers
        out["job"] = {
            "status": job["status"],
            "counts": {k: v for k, v in job["counts"].items() if k != "stores"},
            "seconds": round(_seconds(job), 3),
        }
        out["job"]["per_s"] = round(job["counts"]["rekeyed"] / out["job"]["seconds"], 1)
        out["job_writes"] = {"n": len(during), **latency_summary(during)}
    finally:
        daemon.stop()


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    raw = out["raw"]["per_row_update"]["per_s"]
    ratio = round(out["job"]["per_s"] / raw, 2)
    idle_p99 = out["idle_writes"]["p99_ms"]
    p99_ratio = round(out["job_writes"]["p99_ms"] / idle_p99, 2)
    return {
        "rekey_vs_bare_loop": {"target": ">= 0.5", "measured": ratio, "pass": ratio >= 0.5},
        "write_p99_during_vs_idle": {
            "target": "<= 2.0",
            "measured": p99_ratio,
            "pass": p99_ratio <= 2.0,
        },
    }


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "rekey",
        "at": now_iso(),
        "machine": machine_info(),
        "ciphertexts": N,
        "load_start": machine_load(),
    }
    pg = BenchPostgres()
    with tempfile.TemporaryDirectory(prefix="sm-bench-rekey-") as tmp:
        try:
            await _measure(pg, out, Path(tmp))
            out["targets"] = _targets(out)
        except Exception as exc:  # a measurement: report, clean up, never hang
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await pg.drop_database()
            pg.stop()
    out["load_end"] = machine_load()
    if "targets" in out:
        raw = out["raw"]
        print(
            f"bare loop: {raw['per_row_update']['per_s']}/s per-row UPDATE, "
            f"{raw['batched_update']['per_s']}/s batched; job: {out['job']['per_s']}/s "
            f"({out['job']['counts'].get('rekeyed')} in {out['job']['seconds']} s)"
        )
        print(
            f"write p99: idle {out['idle_writes']['p99_ms']} ms, "
            f"during the job {out['job_writes']['p99_ms']} ms"
        )
        print_targets(out)
    print_load(out)
    return out


if __name__ == "__main__":
    run_standalone("rekey", main)
