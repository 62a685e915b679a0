"""bench/api.py's raw limit (``RawOps``) runs the daemon's own statements with the parameters
they take. A parameter added to a statement and not to the benchmark left its comparison
empty once, and no test saw it: the benchmarks are not part of ``make test``."""

from __future__ import annotations

import asyncpg
from bench.api import RAW_OPS, RawOps

from secretmirror.runtime import Runtime


async def test_every_raw_operation_runs_against_the_migrated_schema(
    runtime: Runtime, database: str
) -> None:
    """Each operation the raw phase times, once: creates, reads, an update, a list."""
    conn = await asyncpg.connect(database)
    try:
        raw = RawOps([conn], runtime.keyring, runtime.hash_key, runtime.deployment_id, [], "t")
        await raw.create(0, 0)
        # What the reads and the update pick from: a secret with its own ciphertext (not
        # create_sql's, whose ciphertext is one fixed blob that no secret id decrypts).
        raw.ids = [str(r["id"]) for r in await conn.fetch("SELECT id FROM secrets")]
        for op in RAW_OPS:
            await getattr(raw, op)(0, 0)
        versions = sorted(r["version"] for r in await conn.fetch("SELECT version FROM secrets"))
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_records WHERE action IN ('secret.create', 'secret.update')"
        )
    finally:
        await conn.close()
    created = 1 + sum(op.startswith("create") for op in RAW_OPS)
    assert len(versions) == created
    assert versions[-1] == 2  # the update
    assert audited == len(versions) + 1  # every create and the update, as through the API
