"""Snapshot retention: purge encrypted snapshots every target has applied.

The newest ``history.keep_versions`` per secret stay for ``?version=N`` and the
read fallback; the event rows themselves stay as the audit trail. One process
purges at a time (an advisory lock; the others skip the round), in batches
back to back while there is work, and idle rounds back off from ``interval_s``
to ``MAX_INTERVAL_S``: a round that finds nothing still scans every retained
snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from secretmirror.errors import Unavailable
from secretmirror.queries import Q
from secretmirror.runtime import Runtime

log = structlog.get_logger("secretmirror.retention")

_BATCH = 5000
#: Idle rounds wait from ``interval_s`` up to this, doubling: a scan of every retained
#: snapshot costs about 2 s of PostgreSQL per million secrets, even when it finds nothing.
MAX_INTERVAL_S = 600.0


async def purge_once(rt: Runtime) -> int:
    """Purge one batch; how many snapshots were dropped (0 while another process purges)."""
    async with rt.pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(Q.retention_lock):
            return 0
        result: str = await conn.execute(
            Q.events_purge_snapshots,
            rt.settings.history.keep_versions,
            _BATCH,
            rt.keys_of(rt.targets),
        )
    return int(result.split()[-1])


async def purge_audit_once(rt: Runtime) -> int:
    """Delete one batch of audit records older than ``audit.keep_days``; how many went."""
    async with rt.pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(Q.retention_lock):
            return 0
        purged: int = await conn.fetchval(Q.audit_purge, rt.settings.audit.keep_days, _BATCH)
    return purged


def next_wait(wait_s: float, interval_s: float) -> float:
    """The wait after ``wait_s`` of an idle round: doubled, at most ``MAX_INTERVAL_S``."""
    return max(interval_s, min(wait_s * 2, MAX_INTERVAL_S))


async def run(rt: Runtime, stop: asyncio.Event, interval_s: float = 30.0) -> None:
    wait_s = interval_s
    while not stop.is_set():
        try:
            purged = await purge_once(rt)
            audit_purged = await purge_audit_once(rt)
            if purged or audit_purged:
                log.info("retention.purged", snapshots=purged, audit_records=audit_purged)
                wait_s = interval_s
                continue
        except Unavailable:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
        wait_s = next_wait(wait_s, interval_s)
