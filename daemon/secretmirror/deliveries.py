"""Delivery state per (target, secret): every statement the worker and the API run on it.

One row per (target, secret) holds the newest version to deliver and the
newest applied. Pending versions coalesce into that row, its lease serializes
writes to one (target, secret), and ``applied_version`` only moves forward.

A lease is exclusive: whoever takes it (a worker's claim, an API inline
write, a reconcile job's copy) gets a fresh random token, and complete, fail
and release change the row only for the token that holds it. A writer whose
lease expired and was taken over records nothing: the new holder's write is
the one that counts, and an older write never marks the row applied.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from secretmirror.errors import StoreContended, Unavailable
from secretmirror.queries import Q


@dataclass(frozen=True, slots=True)
class Claim:
    target: str
    secret_id: str
    version: int
    attempts: int
    pending_since: datetime | None
    #: The lease token this claim holds the row with.
    token: str
    #: The newest version the target applied (0: none yet).
    applied_version: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    secret_id: str
    version: int
    kind: str
    hash: str | None
    snapshot: bytes | None
    recorded_at: datetime
    seq: int = 0
    #: The secret's name and visibility at this version (None in events before 0006).
    name: str | None = None
    private: bool | None = None


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


def new_token(node: str) -> str:
    """A fresh lease token: the holder's name (for people reading the table) and a random part."""
    return f"{node}/{secrets.token_hex(16)}"


async def claim(
    pool: asyncpg.Pool,
    node: str,
    limit: int | Sequence[int],
    targets: list[str],
    lease_s: float,
) -> list[Claim]:
    """Lease due deliveries of ``targets``: up to ``limit`` of each (one number for all, or
    one per target); each claim holds its row with its own token."""
    limits = [limit] * len(targets) if isinstance(limit, int) else list(limit)
    rows = await pool.fetch(Q.delivery_claim, node, limits, targets, lease_s)
    return [
        Claim(
            r["target"],
            r["secret_id"],
            r["version"],
            r["attempts"],
            r["pending_since"],
            r["leased_by"],
            r["applied_version"],
        )
        for r in rows
    ]


@contextlib.asynccontextmanager
async def names_held(
    pool: Any, target: str, holder: str, names: Collection[str], lease_s: float
) -> AsyncIterator[None]:
    """Hold the entry ``names`` of ``target`` (a mirror by name) for the writes inside.

    Deliveries are leased per secret, but a by-name entry is written in turn by
    whichever secret holds the name: a writer holds the names it writes here
    with its lease token (``holder``) for as long as its lease, so two processes
    never write one name at once. A name held by someone else is
    ``StoreContended``: the delivery is tried again later. No names: no query.
    """
    wanted = sorted(set(names))
    rows = await pool.fetch(Q.name_lease_take, target, holder, wanted, lease_s) if wanted else []
    got = [r["name"] for r in rows]
    try:
        if len(got) < len(wanted):
            raise StoreContended(
                "another delivery is writing an entry of the same name", local=True
            )
        yield
    finally:
        if got:
            with contextlib.suppress(Unavailable):  # else the lease expires by itself
                await pool.execute(Q.name_lease_release, target, holder, got)


async def events_for(pool: asyncpg.Pool, claims: list[Claim]) -> dict[tuple[str, int], Event]:
    pairs = {(c.secret_id, c.version) for c in claims}
    rows = await pool.fetch(
        Q.delivery_events,
        [uuid.UUID(s) for s, _ in pairs],
        [v for _, v in pairs],
    )
    return {
        (r["secret_id"], r["version"]): Event(
            r["secret_id"],
            r["version"],
            r["kind"],
            r["hash"],
            r["snapshot"],
            r["recorded_at"],
            r["seq"],
            r["name"],
            r["private"],
        )
        for r in rows
    }


async def complete(pool: Any, done: list[tuple[str, str, int, str]]) -> set[tuple[str, str]]:
    """Mark (target, secret id, version, token) applied where the token still holds the lease.

    Returns the (target, secret id) pairs recorded; a pair missing from it lost its
    lease to someone else, whose write is the one that counts.
    """
    if not done:
        return set()
    rows = await pool.fetch(
        Q.delivery_complete,
        [t for t, _, _, _ in done],
        [uuid.UUID(s) for _, s, _, _ in done],
        [v for _, _, v, _ in done],
        [k for _, _, _, k in done],
    )
    return {(r["target"], r["secret_id"]) for r in rows}


async def fail(
    pool: Any,
    claim_: Claim,
    *,
    reason: str,
    retry_in_s: float,
    dead: bool,
    hold_s: float = 0.0,
    counted: bool = True,
) -> None:
    """Record a failed attempt. ``hold_s`` > 0: the write may still land (it timed out
    mid-request), so the claim keeps its lease that long before anyone writes again.
    ``counted`` False: held back before it was sent, so not an attempt."""
    args = Q.args(
        Q.delivery_fail,
        target=claim_.target,
        secret_id=uuid.UUID(claim_.secret_id),
        error=reason,
        retry_in_s=retry_in_s,
        dead=dead,
        version=claim_.version,
        token=claim_.token,
        hold_s=hold_s,
        counted=counted,
    )
    await pool.execute(Q.delivery_fail, *args)


async def release(pool: Any, leases: list[tuple[str, str, str]], *, uncount: bool = True) -> None:
    """Give back (target, secret id, token) leases without consuming an attempt."""
    if not leases:
        return
    await pool.execute(
        Q.delivery_release,
        [t for t, _, _ in leases],
        [uuid.UUID(s) for _, s, _ in leases],
        [k for _, _, k in leases],
        1 if uncount else 0,
    )


async def due_now(pool: asyncpg.Pool, key: str) -> int:
    """Make every pending delivery of the delivery ``key`` due now; how many moved."""
    done = await pool.execute(Q.delivery_due_now, key)
    return int(done.split()[-1])


async def status(pool: asyncpg.Pool, targets: Mapping[str, str]) -> dict[str, TargetStatus]:
    """Per role, from ``targets`` (role -> delivery key, ``Runtime.target_keys``)."""
    rows = await pool.fetch(Q.delivery_status, list(targets.values()))
    by_key = {
        r["target"]: TargetStatus(r["pending"], r["dead"], r["lag_s"], r["applied"]) for r in rows
    }
    return {role: by_key[key] for role, key in targets.items()}


async def dead_reasons(pool: Any, targets: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Per role, from ``targets`` (role -> delivery key): its dead deliveries counted by the
    reason their last error starts with (``{"foreign_entry": 1}``); {} for a role with none."""
    rows = await pool.fetch(Q.delivery_dead_reasons, list(targets.values()))
    by_key: dict[str, dict[str, int]] = {}
    for r in rows:
        by_key.setdefault(r["target"], {})[r["reason"]] = r["dead"]
    return {role: by_key.get(key, {}) for role, key in targets.items()}


async def retry_dead(conn: asyncpg.Connection, keys: list[str]) -> int:
    """Requeue the dead deliveries of the delivery ``keys``; how many."""
    rows = await conn.fetch(Q.delivery_retry_dead, keys)
    return len(rows)


async def finish_inline(
    rt: Any,
    secret_id: str,
    version: int,
    *,
    token: str,
    leased: list[str],
    done: list[str],
    unsure: Sequence[str] = (),
) -> None:
    """After the API's inline write: mark what it applied, give the rest to the worker.

    ``leased`` are the targets the write's commit leased with ``token``; a lease
    that expired during a slow write and was taken over records nothing.
    ``unsure`` are targets whose write timed out mid-request and may still land:
    they keep the lease for the store's timeout, so the worker's write of them
    (maybe of a newer version by then) cannot be overtaken by the late one.
    """
    if done:
        await complete(rt.pool, [(rt.key_of(t), secret_id, version, token) for t in done])
    for target in unsure:
        await rt.pool.execute(
            Q.delivery_hold,
            rt.key_of(target),
            uuid.UUID(secret_id),
            token,
            rt.store_for(target).timeout_s,
        )
    rest = [(rt.key_of(t), secret_id, token) for t in leased if t not in done + list(unsure)]
    await release(rt.pool, rest, uncount=False)
