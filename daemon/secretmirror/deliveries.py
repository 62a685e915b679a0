"""Delivery state per (target, secret): every statement the worker and the API run on it.

One row per (target, secret) holds the newest version to deliver and the
newest applied. Pending versions coalesce into that row, its lease serializes
writes to one (target, secret), and ``applied_version`` only moves forward.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from secretmirror.queries import Q


@dataclass(frozen=True, slots=True)
class Claim:
    target: str
    secret_id: str
    version: int
    attempts: int
    pending_since: datetime | None


@dataclass(frozen=True, slots=True)
class Event:
    secret_id: str
    version: int
    kind: str
    hash: str | None
    snapshot: bytes | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class TargetStatus:
    pending: int
    dead: int
    oldest_pending_age_s: float
    applied: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "dead": self.dead,
            "oldest_pending_age_s": round(self.oldest_pending_age_s, 3),
            "applied": self.applied,
        }


async def claim(
    pool: asyncpg.Pool, node: str, limit: int, targets: list[str], lease_s: float
) -> list[Claim]:
    rows = await pool.fetch(Q.delivery_claim, node, limit, targets, lease_s)
    return [
        Claim(r["target"], r["secret_id"], r["version"], r["attempts"], r["pending_since"])
        for r in rows
    ]


async def events_for(pool: asyncpg.Pool, claims: list[Claim]) -> dict[tuple[str, int], Event]:
    pairs = {(c.secret_id, c.version) for c in claims}
    rows = await pool.fetch(
        Q.delivery_events,
        [uuid.UUID(s) for s, _ in pairs],
        [v for _, v in pairs],
    )
    return {
        (r["secret_id"], r["version"]): Event(
            r["secret_id"], r["version"], r["kind"], r["hash"], r["snapshot"], r["recorded_at"]
        )
        for r in rows
    }


async def complete(pool: Any, done: list[tuple[str, str, int]]) -> int:
    """Mark (target, secret id, version) triples applied; returns how many rows moved."""
    if not done:
        return 0
    count: int = await pool.fetchval(
        Q.delivery_complete,
        [t for t, _, _ in done],
        [uuid.UUID(s) for _, s, _ in done],
        [v for _, _, v in done],
    )
    return count


async def fail(
    pool: asyncpg.Pool,
    claim_: Claim,
    reason: str,
    retry_in_s: float,
    dead: bool,
) -> None:
    await pool.execute(
        Q.delivery_fail,
        claim_.target,
        uuid.UUID(claim_.secret_id),
        reason,
        retry_in_s,
        dead,
        claim_.version,
    )


async def release(
    pool: Any, node: str, pairs: list[tuple[str, str]], *, uncount: bool = True
) -> None:
    """Give back leases of ``node`` without consuming an attempt."""
    if not pairs:
        return
    await pool.execute(
        Q.delivery_release,
        [t for t, _ in pairs],
        [uuid.UUID(s) for _, s in pairs],
        node,
        1 if uncount else 0,
    )


async def release_all(pool: asyncpg.Pool, node: str) -> None:
    await pool.execute(Q.delivery_release_all, node)


async def status(pool: asyncpg.Pool, targets: Mapping[str, str]) -> dict[str, TargetStatus]:
    """Per role, from ``targets`` (role -> delivery key, ``Runtime.target_keys``)."""
    rows = await pool.fetch(Q.delivery_status, list(targets.values()))
    by_key = {
        r["target"]: TargetStatus(r["pending"], r["dead"], r["lag_s"], r["applied"]) for r in rows
    }
    return {role: by_key[key] for role, key in targets.items()}


async def retry_dead(pool: asyncpg.Pool, keys: list[str]) -> int:
    """Requeue the dead deliveries of the delivery ``keys``; how many."""
    rows = await pool.fetch(Q.delivery_retry_dead, keys)
    return len(rows)


async def finish_inline(
    rt: Any, secret_id: str, version: int, leased: list[str], done: list[str]
) -> None:
    """After the API's inline write: mark what it applied, give the rest to the worker."""
    if done:
        await complete(rt.pool, [(rt.key_of(t), secret_id, version) for t in done])
    rest = [(rt.key_of(t), secret_id) for t in leased if t not in done]
    await release(rt.pool, rt.node, rest, uncount=False)
