"""The rekey job (``keys rotate``): re-encryption throughput and the API beside it."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench._common import check, knob, latency_summary, measured, ratio, run_standalone
from bench._harness import Api, Daemon, fetchval, postgres, run_ops, serving
from secretmirror.crypto import Keyring, secret_aad

N = knob("SECRETMIRROR_BENCH_REKEY_N", 100_000, 4000)
#: Rows the bare loop re-encrypts (its rate is steady; all 100,000 would take minutes).
RAW_SAMPLE = min(N // 2, 10_000)
WRITERS = 4
IDLE_WRITES = knob(None, 400, 100)


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


async def _writers(api: Api, ids: list[str], stop: asyncio.Event, limit: int | None) -> list[float]:
    """WRITERS clients PATCHing their own secrets until ``stop`` (or ``limit`` writes)."""
    latencies: list[float] = []

    async def write(worker: int, n: int) -> None:
        mine = ids[worker::WRITERS]
        started = time.perf_counter()
        await api.update(mine[n % len(mine)], {"v": secrets.token_hex(8)})
        latencies.append(time.perf_counter() - started)

    result = await run_ops(write, WRITERS, count=limit, stop=stop)
    if result["errors"]:
        raise RuntimeError(f"writes failed: {result.get('error_samples')}")
    return latencies


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    raw_a, raw_b = secrets.token_bytes(32), secrets.token_bytes(32)
    key_a = Keyring([raw_a])
    async with postgres() as pg:
        dsn = await pg.database()
        keys = f"{base64.b64encode(raw_b).decode()},{base64.b64encode(raw_a).decode()}"
        async with serving(Daemon(dsn, workdir, key=keys)) as api:
            deployment_id = str(await fetchval(dsn, "SELECT id FROM deployment"))
            started = time.monotonic()
            await _fill(dsn, key_a, deployment_id)
            out["fill_s"] = round(time.monotonic() - started, 1)
            kid = key_a.primary_key_id
            out["raw"] = {
                "per_row_update": await _raw_loop(dsn, key_a, kid, batched=False),
                "batched_update": await _raw_loop(dsn, key_a, kid, batched=True),
            }
            body = {"values": {"v": "0"}}
            ids = [
                (await api.call("POST", "/api/v1/secrets", {**body, "name": f"w{i}"}, ok=201))["id"]
                for i in range(40)
            ]
            idle = await _writers(api, ids, asyncio.Event(), IDLE_WRITES)
            out["idle_writes"] = {"n": len(idle), **latency_summary(idle)}
            stop = asyncio.Event()
            writers = asyncio.create_task(_writers(api, ids, stop, None))
            job = await api.job("/admin/v1/keys/rotate")
            stop.set()
            during = await writers
            seconds = job["seconds"]
            out["job"] = {
                "status": job["status"],
                "counts": {k: v for k, v in job["counts"].items() if k != "stores"},
                "seconds": round(seconds, 3),
                "per_s": round(job["counts"]["rekeyed"] / seconds, 1),
            }
            out["job_writes"] = {"n": len(during), **latency_summary(during)}


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    raw = out.get("raw", {}).get("per_row_update", {}).get("per_s")
    job = out.get("job", {}).get("per_s")
    idle, during = out.get("idle_writes", {}), out.get("job_writes", {})
    return {
        "rekey_vs_bare_loop": check(">=", 0.5, ratio(job, raw, 2)),
        "write_p99_during_vs_idle": check(
            "<=", 2.0, ratio(during.get("p99_ms"), idle.get("p99_ms"), 2)
        ),
    }


def _summary(out: dict[str, Any]) -> None:
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


async def main() -> dict[str, Any]:
    config = {"ciphertexts": N, "raw_sample": RAW_SAMPLE, "writers": WRITERS}
    return await measured("rekey", _measure, config=config, targets=_targets, summary=_summary)


if __name__ == "__main__":
    run_standalone("rekey", main)
