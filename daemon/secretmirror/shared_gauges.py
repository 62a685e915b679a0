"""The gauges of shared state, read from PostgreSQL at scrape time.

Pending, dead, lag, divergence, the last successful reconcile per mode and
the number of secrets describe the deployment, not one process: every replica
reads them from the database, so any replica a scrape lands on reports the
same truth. A reading is cached for ``ttl_s`` so several scrapers (or a
dashboard refresh storm) cost one round of queries, and when PostgreSQL is
down a scrape serves the last reading instead of failing;
``secretmirror_shared_state_age_seconds`` then shows how old it is.

The reading has a connection of its own. On the API's pool it queued behind
every request in flight, so a busy API made scrapes time out and serve the
reading from before the load (a lag of seconds after the drain): its five
queries are cheap (they read pending and dead rows through partial indexes),
the wait for a pool connection was not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import asyncpg
import structlog

from secretmirror import db, deliveries, metrics
from secretmirror.metrics import DIVERGENCE_KINDS, SharedState, SharedStateCollector
from secretmirror.queries import Q
from secretmirror.runtime import Runtime

log = structlog.get_logger("secretmirror.metrics")

#: How long one reading serves scrapes.
TTL_S = 1.0
#: A scrape waits at most this long for PostgreSQL before serving the last reading.
READ_TIMEOUT_S = 2.0


async def read_shared_state(pool: asyncpg.Pool, targets: Mapping[str, str]) -> SharedState:
    """One reading of every shared-state gauge."""
    per_target = await deliveries.status(pool, targets)
    reasons = await deliveries.dead_reasons(pool, targets)
    async with pool.acquire() as conn:
        verify = await conn.fetchrow(Q.metrics_last_verify)
        successes = await conn.fetch(Q.metrics_reconcile_last_success)
        secrets = await conn.fetchval(Q.metrics_secret_count)
    return SharedState(
        pending={t: s.pending for t, s in per_target.items()},
        dead={t: s.dead for t, s in per_target.items()},
        lag_s={t: s.oldest_pending_age_s for t, s in per_target.items()},
        dead_reasons={(t, r): n for t, found in reasons.items() for r, n in found.items()},
        divergent=divergence(verify),
        last_success={r["mode"]: r["finished"] for r in successes},
        secrets=int(secrets) if secrets is not None else None,
    )


def divergence(job: Any) -> dict[tuple[str, str], int]:
    """(store, kind) counts from the newest successful verify or repair job.

    A verify (or a dry-run repair) reports what it found. A repair that
    succeeded wrote everything it found (a job with failures ends ``failed``
    and is not read here), so every kind is 0 after it.
    """
    if job is None:
        return {}
    counts = job["counts"] if isinstance(job["counts"], dict) else {}
    stores = counts.get("stores")
    if not isinstance(stores, dict):
        return {}
    repaired = job["mode"] == "repair" and not job["dry_run"] and not counts.get("failed")
    found: dict[tuple[str, str], int] = {}
    for store, classes in stores.items():
        if not isinstance(classes, dict):
            continue
        for kind in DIVERGENCE_KINDS:
            value = classes.get(kind, 0)
            found[(str(store), kind)] = 0 if repaired or not isinstance(value, int) else value
    return found


class Refresher:
    """Reads the shared state at most once per ``ttl_s``; the metrics handler awaits it."""

    def __init__(
        self,
        rt: Runtime,
        collector: SharedStateCollector = metrics.shared_state,
        ttl_s: float = TTL_S,
        pool: Any = None,
    ) -> None:
        self.rt = rt
        self.collector = collector
        self.ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._tried_at = float("-inf")
        self._failing = False
        #: The connection of the readings: by default a pool of one of its own, made on
        #: first use, that reconnects by itself.
        self.pool: Any = pool
        self._own_pool = pool is None

    async def __call__(self) -> None:
        async with self._lock:
            if time.monotonic() - self._tried_at < self.ttl_s:
                return
            try:
                reading = await asyncio.wait_for(self._read(), READ_TIMEOUT_S)
            except (*db.DB_DOWN, asyncpg.PostgresError) as exc:
                # Serve the last reading; try again on a scrape after the TTL.
                self._failed(exc, unexpected=False)
                return
            except Exception as exc:
                # A bug here must not take the per-process metrics down with it.
                self._failed(exc, unexpected=True)
                return
            self.collector.update(reading)
            self._tried_at = time.monotonic()
            if self._failing:
                log.info("metrics.shared_state_recovered")
            self._failing = False

    async def _read(self) -> SharedState:
        if self.pool is None:
            # Connects on first use (and again after an outage), not at start-up.
            self.pool = await db.create_pool(self.rt.dsn, min_size=0, max_size=1)
        return await read_shared_state(self.pool, self.rt.target_keys)

    async def close(self) -> None:
        if self._own_pool and self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 1.0)
            except TimeoutError:
                self.pool.terminate()

    def _failed(self, exc: Exception, *, unexpected: bool) -> None:
        self._tried_at = time.monotonic()
        if unexpected:
            log.error("metrics.shared_state_failed", error=type(exc).__name__, exc_info=True)
        elif not self._failing:
            log.warning("metrics.shared_state_unavailable", error=type(exc).__name__)
        self._failing = True


def refresher(rt: Runtime) -> Refresher:
    """The callable the daemon sets as ``app[SHARED_GAUGES]`` (closed on app cleanup)."""
    return Refresher(rt)
