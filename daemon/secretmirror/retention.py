"""Snapshot retention: purge encrypted snapshots every target has applied.

The newest ``history.keep_versions`` per secret stay for ``?version=N`` and the
read fallback; the event rows themselves stay as the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from secretmirror.queries import Q
from secretmirror.runtime import Runtime
from secretmirror.stores.sql import DB_DOWN

log = structlog.get_logger("secretmirror.retention")

_BATCH = 5000


async def purge_once(rt: Runtime) -> int:
    """Purge one batch; returns how many snapshots were dropped."""
    result: str = await rt.pool.execute(
        Q.events_purge_snapshots, rt.settings.history.keep_versions, _BATCH
    )
    return int(result.split()[-1])


async def run(rt: Runtime, stop: asyncio.Event, interval_s: float = 30.0) -> None:
    while not stop.is_set():
        try:
            purged = await purge_once(rt)
            if purged:
                log.info("retention.purged", snapshots=purged)
                continue
        except DB_DOWN:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
