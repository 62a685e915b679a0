"""The replication worker: delivers committed events to the target stores.

It claims due deliveries with leases (``FOR UPDATE SKIP LOCKED``, so any
number of processes share the work), applies each to its store with a fenced,
idempotent write, and records the outcome. It waits on ``LISTEN`` wake-ups,
the in-process wake event, the poll timer or the stop event, so a lost
notification costs latency, never work. A store that is down gets one probe
delivery per poll instead of a storm of failing attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from secretmirror import deliveries, metrics
from secretmirror.crypto import secret_aad
from secretmirror.deliveries import Claim, Event
from secretmirror.errors import (
    DecryptionError,
    StoreContended,
    StoreError,
    StoreRejected,
    StoreThrottled,
    Unavailable,
    may_have_landed,
)
from secretmirror.leased import Lease, LeasedStore
from secretmirror.mirrors import Mirror, Version, plan
from secretmirror.queries import Q
from secretmirror.retry import RetryPolicy
from secretmirror.runtime import Runtime
from secretmirror.stores.instrumented import RoleStore

log = structlog.get_logger("secretmirror.replication")


class Replicator:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.settings.replication
        self.cfg = cfg
        self.policy = RetryPolicy(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.max_attempts)
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: The claims of the deliveries in flight (their lease tokens), released at shutdown.
        self._claims: dict[tuple[str, str], Claim] = {}
        self._done: list[tuple[Claim, datetime]] = []
        #: Targets seen down: when one is up again its backlog is made due at once.
        self._down: set[str] = set()
        #: Delivery key -> when its last probe started (``time.monotonic``), for stores down.
        self._probed: dict[str, float] = {}
        self._slot_freed = asyncio.Event()

    # -- main loop ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not self.rt.targets:
            await stop.wait()
            return
        async with self.rt.changes.subscribed(self.rt.dsn):
            listener = asyncio.create_task(self._forward_changes(), name="replication.listen")
            try:
                while not stop.is_set():
                    # Cleared before looking for work, never after: a wake-up that lands
                    # while the claim runs (a commit it did not see yet) must end the wait.
                    self.rt.wake.clear()
                    self._slot_freed.clear()
                    await self._flush_done()
                    claimed = await self._claim_and_start()
                    if claimed and self._free():
                        continue
                    await self._wait(stop)
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
                await self._drain()

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(self.rt.wake.wait()),
            asyncio.create_task(self._slot_freed.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=self.cfg.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _recovered(self) -> None:
        """Cut short the backoff of a store that is up again.

        While a store is down its deliveries collect backoff (up to
        ``backoff_max_s``); once a probe or a delivery finds it up, waiting
        that out would leave the backlog pending for minutes for nothing.
        """
        for target, key in self.rt.target_keys.items():
            if not self.rt.store_for(target).up:
                self._down.add(target)
            elif target in self._down:
                try:
                    moved = await deliveries.due_now(self.rt.worker_pool, key)
                except Unavailable:
                    return  # tried again on the next round
                self._down.discard(target)
                log.info("replication.store_recovered", target=target, made_due=moved)

    def _free(self) -> dict[str, int]:
        """Delivery key -> how many more deliveries of it may start now.

        Each target has its own ``concurrency`` slots, so a store that is slow
        or down never holds the slots of another; a store that is down gets
        one probe delivery per poll interval (one that fails at once, a refused
        connection, must not walk its whole backlog back to back).
        """
        busy: dict[str, int] = {}
        for key, _ in self._in_flight:
            busy[key] = busy.get(key, 0) + 1
        free: dict[str, int] = {}
        now = time.monotonic()
        for target, key in self.rt.target_keys.items():
            if self.rt.store_for(target).up:
                slots = self.cfg.concurrency
            else:
                probed = self._probed.get(key)
                slots = int(probed is None or now - probed >= self.cfg.poll_interval_s)
            left = min(slots - busy.get(key, 0), self.cfg.batch_size)
            if left > 0:
                free[key] = left
        return free

    async def _claim_and_start(self) -> int:
        await self._recovered()
        free = self._free()
        if not free:
            return 0
        # Before the claim: its leases end no sooner than lease_s from here.
        lease_ends = time.monotonic() + self.cfg.lease_s
        try:
            claims = await deliveries.claim(
                self.rt.worker_pool,
                self.rt.node,
                list(free.values()),
                list(free),
                self.cfg.lease_s,
            )
            if not claims:
                return 0
            events = await deliveries.events_for(self.rt.worker_pool, claims)
        except Unavailable as exc:
            log.warning("replication.db_unavailable", error=type(exc.__cause__).__name__)
            await asyncio.sleep(min(self.cfg.poll_interval_s, 1.0))
            return 0
        now = time.monotonic()
        for claim in claims:
            if not self.rt.store_for(self.rt.role_of(claim.target)).up:
                self._probed[claim.target] = now
            key = (claim.target, claim.secret_id)
            event = events.get((claim.secret_id, claim.version))
            task = asyncio.create_task(self._deliver(claim, event, lease_ends))
            self._in_flight[key] = task
            self._claims[key] = claim
            task.add_done_callback(functools.partial(self._finished, key))
        return len(claims)

    def _finished(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._claims.pop(key, None)
        self._slot_freed.set()

    # -- one delivery -------------------------------------------------------

    async def _deliver(self, claim: Claim, event: Event | None, lease_ends: float) -> None:
        role = self.rt.role_of(claim.target)
        store = LeasedStore(self.rt.store_for(role), Lease(claim.token, lease_ends))
        bound = log.bind(secret_id=claim.secret_id, target=role, version=claim.version)
        try:
            if event is None:
                raise StoreRejected("the event for this version is missing from the log")
            rule = self.rt.rules.get(role)
            if rule is not None:
                await self._mirror(rule, store, claim, event)
            elif event.kind == "delete":
                await store.delete(claim.secret_id, claim.version)
            else:
                await store.put(claim.secret_id, claim.version, *self._payload(event))
        except (StoreError, DecryptionError) as exc:
            await self._failed(claim, exc, bound)
            return
        except Exception as exc:
            bound.error("replication.unexpected_error", error=type(exc).__name__, exc_info=True)
            await self._failed(claim, StoreError(f"unexpected {type(exc).__name__}"), bound)
            return
        self._done.append((claim, event.recorded_at))
        self.rt.wake.set()

    def _payload(self, event: Event) -> tuple[dict[str, str], str]:
        """The event's values and content hash."""
        if event.snapshot is None or event.hash is None:
            raise StoreRejected("the event's snapshot was purged before delivery")
        plain = self.rt.keyring.decrypt(event.snapshot, secret_aad(event.secret_id, event.version))
        values: dict[str, str] = json.loads(plain)
        return values, event.hash

    async def _payload_of(self, event: Event, version: int) -> tuple[dict[str, str], str]:
        """The values and content hash of an earlier version of the event's secret."""
        row = await self.rt.worker_pool.fetchrow(
            Q.event_snapshot, uuid.UUID(event.secret_id), version
        )
        if row is None:
            raise StoreRejected("an event a retained entry needs is missing from the log")
        return self._payload(
            replace(event, version=version, hash=row["hash"], snapshot=row["snapshot"])
        )

    async def _mirror(self, rule: Mirror, store: LeasedStore, claim: Claim, event: Event) -> None:
        """Deliver to a mirror: the writes ``mirrors.plan`` makes of the secret's events
        since the version the mirror applied (a rename writes the new name first)."""
        now = Version(event.version, event.seq, event.kind, event.name, event.private)
        history = [now]
        if (rule.by_name or rule.retain) and claim.applied_version < event.version:
            rows = await self.rt.worker_pool.fetch(
                Q.delivery_history,
                uuid.UUID(claim.secret_id),
                max(claim.applied_version, 1),
                event.version,
            )
            history = [
                Version(r["version"], r["seq"], r["kind"], r["name"], r["private"]) for r in rows
            ] or history
        steps = plan(rule, claim.secret_id, history, claim.applied_version)
        names: list[str] = [step.key for step in steps] if rule.by_name else []
        async with deliveries.names_held(
            self.rt.worker_pool, claim.target, claim.token, names, self.cfg.lease_s
        ):
            for step in steps:
                if step.op == "put" and step.source not in (0, event.version):
                    payload = await self._payload_of(event, step.source)
                    await store.put(step.key, step.fence, *payload)
                elif step.op == "put":
                    await store.put(step.key, step.fence, *self._payload(event))
                else:
                    await store.delete(step.key, step.fence)

    async def _failed(self, claim: Claim, exc: Exception, bound: structlog.BoundLogger) -> None:
        reason = exc.reason if isinstance(exc, StoreError) else "decryption"
        metrics.replication_errors.labels(self.rt.role_of(claim.target), reason).inc()
        decision = self.policy.decide(claim.attempts, exc)
        message = (
            exc.message if isinstance(exc, StoreError | DecryptionError) else type(exc).__name__
        )
        if decision.dead:
            bound.error(
                "replication.dead_lettered", reason=reason, attempts=claim.attempts, message=message
            )
        else:
            bound.warning(
                "replication.retry",
                reason=reason,
                attempts=claim.attempts,
                retry_in_s=round(decision.retry_in_s, 3),
            )
        # A write cut off mid-request may still land: keep the lease until it must have.
        store = self.rt.store_for(self.rt.role_of(claim.target))
        hold_s = store.timeout_s if may_have_landed(exc) else 0.0
        for attempt in range(5):
            try:
                await deliveries.fail(
                    self.rt.worker_pool,
                    claim,
                    reason=f"{reason}: {message}"[:500],
                    retry_in_s=decision.retry_in_s,
                    dead=decision.dead,
                    hold_s=hold_s,
                    counted=not (isinstance(exc, StoreThrottled | StoreContended) and exc.local),
                )
                return
            except Unavailable:
                # The lease expires by itself; retrying the bookkeeping is a courtesy.
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _flush_done(self) -> None:
        if not self._done:
            return
        batch, self._done = self._done, []
        try:
            recorded = await deliveries.complete(
                self.rt.worker_pool,
                [(c.target, c.secret_id, c.version, c.token) for c, _ in batch],
            )
        except Unavailable:
            # Not recorded: the lease expires and the fenced store write repeats as a no-op.
            log.warning("replication.complete_failed", count=len(batch))
            return
        now = datetime.now(UTC)
        for claim, recorded_at in batch:
            target = self.rt.role_of(claim.target)
            if (claim.target, claim.secret_id) not in recorded:
                # The lease expired during the write and someone else holds it now.
                log.warning(
                    "replication.lease_lost",
                    secret_id=claim.secret_id,
                    target=target,
                    version=claim.version,
                )
                continue
            metrics.replication_applied.labels(target).inc()
            metrics.replication_latency.labels(target).observe(
                max((now - recorded_at).total_seconds(), 0.0)
            )

    async def _drain(self) -> None:
        """At shutdown: let in-flight writes finish briefly, record them, release the rest."""
        unfinished: list[Claim] = []
        if self._in_flight:
            claims = dict(self._claims)
            _, pending = await asyncio.wait(list(self._in_flight.values()), timeout=3.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            finished = {(c.target, c.secret_id) for c, _ in self._done}
            unfinished = [c for key, c in claims.items() if key not in finished]
        with contextlib.suppress(Unavailable):
            await self._flush_done()
            # A failed attempt already released its own lease (a no-op here, its token
            # no longer holds the row); a cancelled one gives its lease back now.
            await deliveries.release(
                self.rt.worker_pool, [(c.target, c.secret_id, c.token) for c in unfinished]
            )

    # -- wake-ups -------------------------------------------------------------

    async def _forward_changes(self) -> None:
        """Wake the worker on every notification the process's one LISTEN connection gets
        (``feed.ChangeHub``; it also wakes it when it reconnects). Polling covers the gaps."""
        while True:
            woken, _ = self.rt.changes.waiter()
            await woken.wait()
            self.rt.wake.set()


async def notify_others(rt: Runtime, stop: asyncio.Event, coalesce_s: float = 0.02) -> None:
    """Send one NOTIFY per burst of commits, outside the write transactions.

    A NOTIFY inside a write takes PostgreSQL's notify lock until that commit
    is flushed, serializing every writer. Sent here instead, it costs one
    statement per ``coalesce_s`` at most; a lost one costs the other processes
    a poll interval, never work.
    """
    while not stop.is_set():
        waiter = asyncio.create_task(rt.notify.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if stop.is_set():
            return
        rt.notify.clear()
        with contextlib.suppress(Unavailable):
            await rt.pool.execute(Q.notify_deliveries)
        await asyncio.sleep(coalesce_s)


async def probe_stores(rt: Runtime, stop: asyncio.Event) -> None:
    """Health-check each store periodically so ``store_up`` recovers without traffic."""
    while not stop.is_set():
        await probe_once(rt)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)


async def probe_once(rt: Runtime) -> None:
    """One health check of each store, all at once (a store that hangs until its timeout
    never delays another's). A store found up again gets its backlog due at once: its
    deliveries stop waiting out the backoff collected while it was down."""
    await asyncio.gather(*(_probe(rt, role) for role in rt.stores))


async def _probe(rt: Runtime, role: RoleStore) -> None:
    started = time.monotonic()
    was_up = role.up
    with contextlib.suppress(StoreError):
        await role.health()
    if role.up and not was_up and role.role in rt.targets:
        with contextlib.suppress(Unavailable):  # else the worker does it (``_recovered``)
            moved = await deliveries.due_now(rt.worker_pool, rt.key_of(role.role))
            log.info("replication.store_recovered", target=role.role, made_due=moved)
        rt.wake.set()
    if not role.up:
        log.debug(
            "store.probe_failed",
            store=role.role,
            seconds=round(time.monotonic() - started, 3),
        )
