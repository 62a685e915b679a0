"""Reconcile jobs: verify, repair, backup and restore, streamed and bounded.

A scan lists one store's entries page by page (listing metadata only: tags,
custom metadata, versions) and compares each page with the expected state
in PostgreSQL; the ids it saw go to a temporary table so the live secrets the
store lacks are found by one anti-join, also in pages. Memory does not grow
with the number of secrets.

Classes per store: ``in_sync``, ``missing``, ``stale`` (older version),
``mismatch`` (same version, other content, or a value written behind our
back), ``unreadable`` (the entry's ciphertext does not decrypt: corrupted, or
copied from another entry; spec section 14), ``orphan`` (an entry of this
deployment with no live secret), and ``moved`` (a tombstone left on purpose
by ``delete_secrets``). A secret whose
delivery to that store is still in flight is not drift: replication is about
to write it, so it counts as ``in_sync``.

Repairs: missing and stale entries get the current version written directly
(fenced, so racing the worker is harmless); a mismatch or an unreadable entry
is re-issued through the outbox as new versions with the same values until one
passes what the entry holds, which every store then accepts; orphans are
deleted. Backup and restore copy the same way, and re-issue where the
destination differs at (or above) the current version or holds a tombstone
there (``moved``: a restore after a backup with ``delete_secrets``). A job's
write, like a delivery's, must end the store's timeout before its lease does.

Mirrors (spec section 16) are scanned the same way against their own expected
state: the live secrets the mirror's rule selects, keyed by secret id (fence:
the version) or, with ``naming = "name"``, by name (fence: the ``events.seq``
of the current version's event). An entry whose key maps to no live selected
secret is an ``orphan``, including a secret that left the selection (renamed
out, made private, excluded) whose removal never reached the mirror; a
tombstone never is. A mirror with ``on_delete = "retain"`` keeps such entries
on purpose: they are its expected state and count as ``in_sync``, and repair
never deletes from it. A tombstone under the key of a live selected secret
that is fenced at or above the expected version (removed by an earlier repair,
then selected again) is ``missing``, repaired through the outbox like a
mismatch (a write at the current fence would be a no-op). Mirror values come
from the event log (else the primary or backup); mirrors are never read from
for values. A job covers the stores it was started for (``stores``; default
every store); backup and restore are primary <-> backup only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import structlog

from secretmirror import audit, db, deliveries, metrics
from secretmirror.access import Principal
from secretmirror.crypto import secret_aad
from secretmirror.errors import (
    DecryptionError,
    Invalid,
    JobRunning,
    NotFound,
    StoreContended,
    StoreError,
    StoreRejected,
    Unavailable,
    echoed,
)
from secretmirror.leased import Lease, LeasedStore
from secretmirror.mirrors import Mirror
from secretmirror.model import canonical
from secretmirror.queries import Q
from secretmirror.retry import asked_again
from secretmirror.runtime import Runtime
from secretmirror.stores.base import Entry, StoredValue
from secretmirror.stores.instrumented import RoleStore

log = structlog.get_logger("secretmirror.reconcile")

MODES = ("verify", "repair", "backup", "restore")
CLASSES = ("in_sync", "missing", "stale", "mismatch", "unreadable", "orphan", "moved")
_PAGE = 500
_SAMPLES = 100
_FAILURES = 1000
_PROGRESS_S = 0.5
_ABANDONED_S = 15.0
#: Pauses between tries for a delivery lease held by a worker (its write takes milliseconds).
_LEASE_WAITS_S = (0.05, 0.1, 0.2, 0.4, 0.8)


@dataclass
class Report:
    """Counts, samples and failures of one job, as the job JSON shows them."""

    counts: dict[str, Any] = field(
        default_factory=lambda: {
            "total": 0,
            "scanned": 0,
            "copied": 0,
            "skipped": 0,
            "deleted": 0,
            "failed": 0,
        }
    )
    samples: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    def classify(self, store: str, cls: str, secret_id: str) -> None:
        stores = self.counts.setdefault("stores", {})
        per = stores.setdefault(store, dict.fromkeys(CLASSES, 0))
        per[cls] += 1
        if cls != "in_sync":
            sample = self.samples.setdefault(store, {}).setdefault(cls, [])
            if len(sample) < _SAMPLES:
                sample.append(secret_id)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def fail(self, secret_id: str, store: str, reason: str) -> None:
        self.counts["failed"] += 1
        if len(self.failures) < _FAILURES:
            self.failures.append({"secret_id": secret_id, "store": store, "reason": reason})


@dataclass(frozen=True, slots=True)
class Finding:
    store: str
    cls: str
    #: The entry's key: the secret id, or the secret's name in a mirror keyed by name.
    secret_id: str
    #: The expected fence: the version, or the event seq in a mirror keyed by name.
    expected_version: int | None
    entry: Entry | None
    #: A mirror's finding: the live selected secret the key maps to (None: none).
    holder: str | None = None


Action = Callable[[Finding], Awaitable[None]]


def job_json(row: Any) -> dict[str, Any]:
    def ts(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(row["id"]),
        "mode": row["mode"],
        "status": row["status"],
        "dry_run": row["dry_run"],
        "delete_secrets": row["delete_secrets"],
        "created": ts(row["created"]),
        "started": ts(row["started"]),
        "finished": ts(row["finished"]),
        #: The stores a verify or repair covers (null: every store when it ran).
        "stores": row["stores"],
        "counts": row["counts"],
        "samples": row["samples"],
        "failures": row["failures"],
        "error": row["error"],
    }


class Scanner:
    """Classifies one store's entries against the expected state, streaming."""

    def __init__(
        self, rt: Runtime, conn: asyncpg.Connection, report: Report, cancelled: asyncio.Event
    ) -> None:
        self.rt = rt
        self.conn = conn
        self.report = report
        self.cancelled = cancelled
        #: verify counts an in-flight delivery as in sync; backup and restore copy it.
        self.in_flight_is_sync = True
        #: The rule of the mirror being scanned (None: the primary or the backup).
        self._rule: Mirror | None = None

    async def scan(self, role: RoleStore, act: Action | None) -> None:
        self._role = role
        self._rule = None
        await self.conn.execute(Q.scan_seen_create)
        await self.conn.execute(Q.scan_seen_clear)
        async for page in _pages(role.list(), _PAGE):
            if self.cancelled.is_set():
                return
            await self._listed(role.role, page, act)
        after: str | None = None
        while not self.cancelled.is_set():
            rows = await self.conn.fetch(Q.scan_unseen, after, _PAGE, self.rt.key_of(role.role))
            for row in rows:
                cls = "in_sync" if row["in_flight"] and self.in_flight_is_sync else "missing"
                await self._found(
                    Finding(role.role, cls, row["secret_id"], row["version"], None), act
                )
            if len(rows) < _PAGE:
                return
            after = rows[-1]["secret_id"]

    async def scan_mirror(self, role: RoleStore, rule: Mirror, act: Action | None) -> None:
        """As ``scan``, for a mirror: its entries against the live secrets ``rule`` selects."""
        self._role = role
        self._rule = rule
        target = self.rt.key_of(role.role)
        await self.conn.execute(Q.scan_keys_create)
        await self.conn.execute(Q.scan_keys_clear)
        async for page in _pages(role.list(), _PAGE):
            if self.cancelled.is_set():
                return
            await self.conn.execute(Q.scan_keys_add, [e.secret_id for e in page])
            expected = await self._mirror_expected(rule, [e.secret_id for e in page], target)
            for entry in page:
                row = expected.get(entry.secret_id)
                cls = _classify_mirror(entry, row, rule)
                if cls is None:
                    continue
                held = (
                    row if row is not None and rule.selects(row["name"], row["private"]) else None
                )
                await self._found(
                    Finding(
                        role.role,
                        cls,
                        entry.secret_id,
                        held["fence"] if held is not None else None,
                        entry,
                        held["secret_id"] if held is not None else None,
                    ),
                    act,
                )
        after: uuid.UUID | None = None
        while not self.cancelled.is_set():
            rows = await self.conn.fetch(Q.mirror_unseen, after, _PAGE, target, rule.by_name)
            for row in rows:
                if not rule.selects(row["name"], row["private"]):
                    continue
                cls = "in_sync" if row["in_flight"] else "missing"
                await self._found(
                    Finding(role.role, cls, row["key"], row["fence"], None, row["secret_id"]),
                    act,
                )
            if len(rows) < _PAGE:
                return
            after = uuid.UUID(rows[-1]["secret_id"])

    async def _mirror_expected(self, rule: Mirror, keys: list[str], target: str) -> dict[str, Any]:
        """Key -> the live secret each listed key maps to (selected or not)."""
        if rule.by_name:
            rows = await self.conn.fetch(Q.mirror_expected_by_name, keys, target)
        else:
            ids = [u for u in map(_uuid_or_none, keys) if u is not None]
            rows = await self.conn.fetch(Q.mirror_expected_by_id, ids, target)
        return {r["key"]: r for r in rows}

    async def _listed(self, store: str, page: list[Entry], act: Action | None) -> None:
        ids = [uuid.UUID(e.secret_id) for e in page]
        await self.conn.execute(Q.scan_seen_add, ids)
        rows = await self.conn.fetch(Q.scan_expected, ids, self.rt.key_of(store))
        expected = {r["secret_id"]: r for r in rows}
        for entry in page:
            row = expected.get(entry.secret_id)
            cls = _classify(entry, row, self.in_flight_is_sync)
            if cls is None:
                continue
            version = row["version"] if row is not None else None
            await self._found(Finding(store, cls, entry.secret_id, version, entry), act)

    async def _found(self, finding: Finding, act: Action | None) -> None:
        if finding.cls in _DRIFT and self.in_flight_is_sync:
            if self._rule is not None:
                confirmed = await self._confirm_mirror(finding, self._rule)
            else:
                confirmed = await self._confirm(finding)
            if confirmed is None:
                return
            finding = confirmed
        self.report.classify(finding.store, finding.cls, finding.secret_id)
        self.report.add("scanned")
        if act is not None:
            await act(finding)

    async def _confirm(self, finding: Finding) -> Finding | None:
        """Look again at one drifting entry: writes during the scan make listings stale.

        The listing page and the expected state were read moments apart, and
        secrets keep changing meanwhile. A second look (the expected state now,
        and one read of the entry) can only clear a finding, never change its
        class: an entry that now holds the expected version, or whose delivery
        is in flight, is in sync; an orphan whose secret or entry is gone is
        dropped. Costs one read per drifting entry, none per entry in sync; a read
        that fails in a way that may pass is asked again (``asked_again``).
        """
        rows = await self.conn.fetch(
            Q.scan_expected, [uuid.UUID(finding.secret_id)], self.rt.key_of(finding.store)
        )
        row = rows[0] if rows else None
        live = row is not None and row["version"] is not None
        in_flight = row is not None and bool(row["in_flight"])
        try:
            stored = await asked_again(lambda: self._role.get(finding.secret_id))
        except (StoreError, DecryptionError):
            return finding  # cannot look again (or cannot read it): report what was listed
        if not live:
            # A foreign current value reads as None too: only a plain entry can be gone.
            vanished = stored is None and not (finding.entry and finding.entry.foreign_write)
            return None if in_flight or vanished else finding
        assert row is not None
        # A store may serve the version it recorded over a foreign write (hashicorp
        # does), so a matching read cannot clear a foreign write the listing showed.
        foreign = finding.entry is not None and finding.entry.foreign_write
        if in_flight or (
            not foreign
            and stored is not None
            and stored.version == row["version"]
            and stored.hash == row["hash"]
        ):
            return replace(finding, cls="in_sync", expected_version=row["version"])
        return replace(finding, expected_version=row["version"])

    async def _confirm_mirror(self, finding: Finding, rule: Mirror) -> Finding | None:
        """``_confirm`` for a mirror's entry: the secret its key maps to now, one read."""
        target = self.rt.key_of(finding.store)
        row = (await self._mirror_expected(rule, [finding.secret_id], target)).get(
            finding.secret_id
        )
        selected = row is not None and rule.selects(row["name"], row["private"])
        in_flight = row is not None and bool(row["in_flight"])
        if rule.by_name and not selected and not in_flight:
            # The name of a secret that left it (renamed, deleted): a delivery about to
            # remove it is no drift either.
            in_flight = bool(
                await self.conn.fetchval(Q.mirror_name_in_flight, finding.secret_id, target)
            )
        try:
            stored = await asked_again(lambda: self._role.get(finding.secret_id))
        except (StoreError, DecryptionError):
            return finding
        if not selected:
            if finding.cls != "orphan":
                return None  # the secret left the selection or went meanwhile
            vanished = stored is None and not (finding.entry and finding.entry.foreign_write)
            return None if in_flight or vanished else finding
        assert row is not None
        foreign = finding.entry is not None and finding.entry.foreign_write
        now = replace(finding, expected_version=row["fence"], holder=row["secret_id"])
        if in_flight or (
            not foreign
            and stored is not None
            and stored.version == row["fence"]
            and stored.hash == row["hash"]
        ):
            return replace(now, cls="in_sync")
        if finding.cls == "orphan" and finding.entry is not None:
            # A secret took the key meanwhile: the entry is judged against it.
            cls = _classify_mirror(finding.entry, row, rule)
            return None if cls is None else replace(now, cls=cls)
        return now


_DRIFT = frozenset({"missing", "stale", "mismatch", "unreadable", "orphan"})
#: At most this many new versions re-issued to pass one mirror entry's fence.
_REISSUES = 5
#: Classes a write at the current version cannot fix (the store holds that version
#: already): the secret is re-issued as a new version through the outbox.
_REISSUE = frozenset({"mismatch", "unreadable"})


def _classify(entry: Entry, row: Any, in_flight_is_sync: bool) -> str | None:
    live = row is not None and row["version"] is not None
    in_flight = live and in_flight_is_sync and bool(row["in_flight"])
    if not live:
        # A tombstone with something readable on it (GCP: a version added by hand after
        # the delete) is an entry with no live secret like any other.
        return None if entry.deleted and not entry.foreign_write else "orphan"
    expected = row["version"]
    if entry.deleted:
        if entry.version >= expected:
            return "moved"
        return "in_sync" if in_flight else "missing"
    if entry.version < expected:
        return "in_sync" if in_flight else "stale"
    if entry.unreadable:
        return "unreadable"  # its version and hash are not to be trusted either
    if entry.version > expected or entry.foreign_write:
        return "mismatch"
    if entry.hash is not None and entry.hash != row["hash"]:
        return "mismatch"
    return "in_sync"


def _classify_mirror(entry: Entry, row: Any, rule: Mirror) -> str | None:
    """A mirror's entry against the live secret its key maps to (``row``, or None)."""
    if row is None or not rule.selects(row["name"], row["private"]):
        if entry.deleted and not entry.foreign_write:
            return None  # a tombstone is never an orphan
        if rule.retain:
            return "in_sync"  # kept on purpose: deleted, renamed or left the selection
        if row is not None and row["in_flight"]:
            return "in_sync"  # a delivery is about to remove it
        return "orphan"
    in_flight = bool(row["in_flight"])
    expected = row["fence"]
    if entry.deleted:
        return "in_sync" if in_flight else "missing"
    if entry.version < expected:
        return "in_sync" if in_flight else "stale"
    if entry.unreadable:
        return "unreadable"
    if entry.version > expected or entry.foreign_write:
        return "mismatch"
    if entry.hash is not None and entry.hash != row["hash"]:
        return "mismatch"
    return "in_sync"


def _uuid_or_none(key: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(key)
    except ValueError:
        return None


async def _pages(entries: AsyncIterator[Entry], size: int) -> AsyncIterator[list[Entry]]:
    page: list[Entry] = []
    async for entry in entries:
        page.append(entry)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


class Job:
    """One persisted job run to completion by this process."""

    def __init__(self, rt: Runtime, row: Any, *, resumed: bool = False) -> None:
        self.rt = rt
        #: Taken over from a process that died while running it (rekey jobs resume).
        self.resumed = resumed
        self.id = str(row["id"])
        self.mode: str = row["mode"]
        self.dry_run: bool = row["dry_run"]
        self.delete_secrets: bool = row["delete_secrets"]
        #: The stores a verify or repair covers (None: every store).
        self.stores: list[str] | None = row["stores"]
        self.report = Report()
        self._sem = asyncio.Semaphore(rt.settings.reconcile.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled = asyncio.Event()
        #: Names this job in the lease tokens it takes (each lease gets a fresh token).
        self._holder = f"{rt.node}/job-{self.id}"
        self.log = log.bind(job_id=self.id, mode=self.mode)

    async def run(self) -> None:
        status, error = "succeeded", None
        try:
            async with self.rt.pool.acquire() as conn:
                if not self.resumed:
                    row = await conn.fetchrow(Q.job_start, uuid.UUID(self.id), self.rt.node)
                    if row is None:
                        return  # cancelled while queued
                self.log.info("job.started")
                scanner = Scanner(self.rt, conn, self.report, self._cancelled)
                self.report.counts["total"] = await conn.fetchval(Q.secret_count)
                ticker = asyncio.create_task(self._progress())
                try:
                    await self._body(scanner)
                    await self._join()
                finally:
                    ticker.cancel()
                    await asyncio.gather(ticker, return_exceptions=True)
                    if self.mode in MODES:  # the scans' tables (a rekey job scans none)
                        with contextlib.suppress(*db.DB_DOWN):  # a raw connection here
                            await conn.execute(Q.scan_seen_drop)
                            await conn.execute(Q.scan_keys_drop)
                if scanner.cancelled.is_set():
                    status = "cancelled"
        except asyncio.CancelledError:
            status, error = "failed", "interrupted: the daemon stopped while the job ran"
            raise
        except NotFound as exc:  # our own message, e.g. no backup store to copy to
            status, error = "failed", str(exc)
        except (Unavailable, StoreError) as exc:
            # The store's own message (the operation and the provider's error code, never a
            # value or a request), so whoever reads the job sees what stopped it.
            reason = _reason(exc)
            status, error = "failed", f"{type(exc).__name__}: the job could not continue ({reason})"
            self.log.warning("job.failed", error=type(exc).__name__, reason=reason)
        except Exception as exc:
            status, error = "failed", f"internal error ({type(exc).__name__})"
            self.log.exception("job.crashed")
        finally:
            await asyncio.shield(self._finish(status, error))

    async def _finish(self, status: str, error: str | None) -> None:
        if status == "succeeded" and self.report.counts["failed"]:
            status = "failed"
            error = f"{self.report.counts['failed']} secret(s) failed; see failures"
        with contextlib.suppress(Unavailable):
            await self.rt.pool.execute(
                Q.job_finish,
                job_id=uuid.UUID(self.id),
                status=status,
                counts=self.report.counts,
                samples=self.report.samples,
                failures=self.report.failures,
                error=error,
            )
        metrics.reconcile_jobs.labels(self.mode, status).inc()
        self.log.info("job.finished", status=status, counts=_flat(self.report.counts))

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_S)
            with contextlib.suppress(Unavailable):
                cancel = await self.rt.pool.fetchval(
                    Q.job_progress,
                    uuid.UUID(self.id),
                    self.report.counts,
                    self.report.samples,
                    self.report.failures,
                )
                if cancel:
                    self.cancel()

    def cancel(self) -> None:
        self._cancelled.set()
        for task in list(self._tasks):
            task.cancel()

    async def _body(self, scanner: Scanner) -> None:
        rt = self.rt
        if self.mode in ("verify", "repair"):
            chosen = self._chosen()
            stores = self.report.counts.setdefault("stores", {})
            for name in chosen:  # an empty store reports zeros, not nothing
                stores.setdefault(name, dict.fromkeys(CLASSES, 0))
            act = None if self.mode == "verify" or self.dry_run else self._repair
            for name in chosen:
                if scanner.cancelled.is_set():
                    break
                rule = rt.rules.get(name)
                if rule is None:
                    await scanner.scan(rt.store_for(name), act)
                else:
                    await scanner.scan_mirror(rt.store_for(name), rule, act)
        elif self.mode == "backup":
            scanner.in_flight_is_sync = False
            if rt.backup is None:
                raise NotFound("no backup store is configured")
            await scanner.scan(rt.backup, self._copy(rt.primary, rt.backup))
        else:
            if rt.backup is None:
                raise NotFound("no backup store is configured")
            scanner.in_flight_is_sync = False
            await scanner.scan(rt.primary, self._copy(rt.backup, rt.primary))

    def _chosen(self) -> list[str]:
        """The stores this verify or repair covers, in configuration order."""
        names = store_names(self.rt)
        if self.stores is None:
            return names
        unknown = sorted(set(self.stores) - set(names))
        if unknown:  # configured when the job was started, not in this process
            raise NotFound(f"store {unknown[0]!r} is not configured in this daemon")
        return [n for n in names if n in self.stores]

    # -- actions, run at bounded concurrency ------------------------------

    async def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._cancelled.is_set():
            work.close()
            return
        await self._sem.acquire()

        async def guarded() -> None:
            try:
                await work
            finally:
                self._sem.release()

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _join(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _repair(self, finding: Finding) -> None:
        if finding.cls in ("in_sync", "moved"):
            return
        await self._spawn(self._repair_one(finding))

    async def _repair_one(self, f: Finding) -> None:
        rule = self.rt.rules.get(f.store)
        if rule is not None:
            await self._repair_mirror_one(rule, f)
            return
        store = self.rt.store_for(f.store)
        try:
            if f.cls == "orphan":
                assert f.entry is not None
                tombstone = f.entry.version + 1
                await asked_again(
                    lambda: store.delete(f.secret_id, tombstone), waits_out_throttling=True
                )
                self.report.add("deleted")
            elif f.cls in _REISSUE:
                await self._reissue_past(None, f.secret_id, _fence_of(f))
                self.report.add("copied")
            else:
                await self._write_current(store, f.secret_id, _log_only)
        except _Deleted:
            self.report.add("skipped")
        except (StoreError, DecryptionError, Unavailable) as exc:
            self.report.fail(f.secret_id, f.store, _reason(exc))

    async def _repair_mirror_one(self, rule: Mirror, f: Finding) -> None:
        """Repair one finding of a mirror: write the newest version under its key and fence,
        re-issue what a write at that fence cannot fix, delete an orphan (never with retain)."""
        store = self.rt.store_for(f.store)
        try:
            if f.cls == "orphan":
                if not rule.retain:
                    await self._delete_orphan(store, rule, f)
                return
            assert f.holder is not None
            buried = (
                f.entry is not None
                and f.entry.deleted
                and f.expected_version is not None
                and f.entry.version >= f.expected_version
            )
            if f.cls in _REISSUE or buried:
                await self._reissue_past(rule, f.holder, f.entry)
                self.report.add("copied")
            else:
                await self._write_mirror(store, rule, f.holder)
        except _Deleted:
            self.report.add("skipped")
        except (StoreError, DecryptionError, Unavailable) as exc:
            self.report.fail(f.secret_id, f.store, _reason(exc))

    async def _reissue_past(self, rule: Mirror | None, secret_id: str, entry: Entry | None) -> None:
        """Re-issue the secret until its fence passes the entry's: a write at or below what
        the entry holds (a tombstone a repair or a hand left above the current version, an
        entry ahead of a database restored from an older dump, a value edited by hand at
        the current version) is a no-op. By id (``rule`` None: a base store) that is a
        version per step; a mirror by name passes any seq with one new event."""
        by_name = rule is not None and rule.by_name
        for _ in range(_REISSUES):
            await self._reissue(secret_id)
            row = await self._current_row(secret_id)
            if entry is None or (row["seq"] if by_name else row["version"]) > entry.version:
                return
        assert entry is not None
        raise StoreRejected(
            f"the entry is fenced at {entry.version}, above the secret's version; run the job again"
        )

    async def _delete_orphan(self, store: RoleStore, rule: Mirror, f: Finding) -> None:
        """Tombstone an orphan just above what it holds (a later holder of the key writes
        at a higher fence: a newer version, or the seq of a later event)."""
        assert f.entry is not None
        tombstone = f.entry.version + 1
        # Keyed by secret id, the entry's delivery row is leased like any job write.
        by_id = not rule.by_name and _uuid_or_none(f.secret_id) is not None
        lease = await self._lease(store, f.secret_id) if by_id else Lease("", None)
        if lease is None:
            self.report.add("skipped")
            return
        try:
            # Keyed by name, the name is leased instead, as a delivery writing it holds it.
            async with self._name_held(store, rule, f.secret_id):
                await self._leased_write(
                    store, lease, lambda leased: leased.delete(f.secret_id, tombstone)
                )
        finally:
            if by_id:
                await self._release(store, f.secret_id, lease, 0)
        self.report.add("deleted")

    async def _write_mirror(self, store: RoleStore, rule: Mirror, secret_id: str) -> None:
        """Put the secret's current version into a mirror under its key and fence (by name:
        its current name at its current event's seq), under the delivery lease."""
        lease = await self._lease(store, secret_id)
        if lease is None:
            self.report.add("skipped")
            return
        written = 0
        try:
            row = await self.rt.pool.fetchrow(Q.secret_snapshot_current, uuid.UUID(secret_id))
            if row is None or not rule.selects(row["name"], row["private"]):
                raise _Deleted()  # gone or left the selection meanwhile: its delivery says so
            values = await self._values_of(secret_id, row)
            key = rule.key(secret_id, row["name"])
            fence = row["seq"] if rule.by_name else row["version"]
            async with self._name_held(store, rule, key):
                await self._leased_write(
                    store, lease, lambda leased: leased.put(key, fence, values, row["hash"])
                )
            written = row["version"]  # the delivery row counts secret versions
        finally:
            await self._release(store, secret_id, lease, written)
        self.report.add("copied")

    async def _values_of(self, secret_id: str, row: Any) -> dict[str, str]:
        """The current version's values: the event log, else the primary or the backup
        holding that version (mirrors are never read from)."""
        if row["snapshot"] is not None:
            plain = self.rt.keyring.decrypt(row["snapshot"], secret_aad(secret_id, row["version"]))
            values: dict[str, str] = json.loads(plain)
            return values
        for source in self.rt.sources:
            with contextlib.suppress(StoreError, DecryptionError):
                stored = await source.get(secret_id)
                if stored is not None and (stored.version, stored.hash) == (
                    row["version"],
                    row["hash"],
                ):
                    return stored.values
        raise StoreError("the current version's values are in neither the log nor a store")

    async def _write_current(
        self,
        dest: RoleStore,
        secret_id: str,
        read: Callable[[str], Awaitable[StoredValue | None]],
    ) -> int:
        """Put the secret's current version into ``dest``, under its delivery lease; the
        version put (it may be newer than the scan's).

        ``read`` may serve the values (the source store of a copy; the log is
        the fallback). 0 when a delivery holds the lease: the worker is
        writing the secret right now, so the job leaves it (``skipped``).
        """
        lease = await self._lease(dest, secret_id)
        if lease is None:
            self.report.add("skipped")
            return 0
        written = 0
        try:
            values, version, hash_ = await self._values_from(read, secret_id)
            await self._leased_write(
                dest, lease, lambda leased: leased.put(secret_id, version, values, hash_)
            )
            written = version
        finally:
            await self._release(dest, secret_id, lease, written)
        self.report.add("copied")
        return written

    async def _lease(self, store: RoleStore, secret_id: str) -> Lease | None:
        """Take the delivery lease of (``store``, secret) for one write of this job.

        Returns the lease, with a fresh token (``_release`` presents it; empty
        for a store no lease guards), or None when someone else kept the lease.

        Jobs then write an entry one at a time with the replication worker of
        every process, as deliveries do among themselves: a store's memory of
        its entries (aws) holds only while nobody else writes them. A delivery
        in flight is waited for briefly. A store the worker does not deliver to
        (the sql primary) fences its writes in SQL and needs no lease.
        """
        row_key = self._row_key(store, secret_id)
        if row_key is None:
            return Lease("", None)
        lease_s = self.rt.settings.replication.lease_s
        token = deliveries.new_token(self._holder)
        for wait_s in (*_LEASE_WAITS_S, None):
            asked_at = time.monotonic()
            row = await self.rt.pool.fetchrow(Q.delivery_lease_for_job, *row_key, token, lease_s)
            if row is not None:
                return Lease(token, asked_at + lease_s)
            if wait_s is not None:
                await asyncio.sleep(wait_s)
        return None

    async def _leased_write(
        self, store: RoleStore, lease: Lease, write: Callable[[LeasedStore], Awaitable[None]]
    ) -> None:
        """``write`` of this job under ``lease``, asked again after a failure that may pass
        while the lease lasts (``leased``: each try ends the store's timeout before the
        lease does). Past it another process's worker may hold the lease and have written
        a newer version, which a late write could bury (in a store with no conditional
        write). A try that may still land keeps the lease (``_release``)."""
        leased = LeasedStore(store, lease)
        await asked_again(
            functools.partial(write, leased), waits_out_throttling=True, until=leased.until
        )

    async def _release(self, store: RoleStore, secret_id: str, lease: Lease, written: int) -> None:
        """Record ``written`` (0: nothing) as applied and give the lease back, if the job
        still holds it (a lease that expired mid-write records nothing). A lease one of
        whose tries was cut off mid-request is held instead, even when a later try
        succeeded: the cut-off request may land late over a newer write of a worker."""
        row_key = self._row_key(store, secret_id)
        if row_key is None:
            return
        with contextlib.suppress(Unavailable):  # else the lease expires by itself
            if lease.unsure:  # cut off mid-request: no one writes before it lands or dies
                await self.rt.pool.execute(Q.delivery_hold, *row_key, lease.token, store.timeout_s)
                return
            await self.rt.pool.execute(Q.delivery_release_for_job, *row_key, lease.token, written)

    def _name_held(
        self, store: RoleStore, rule: Mirror, key: str
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the entry name ``key`` of a mirror by name for one write (nothing by id)."""
        return deliveries.names_held(
            self.rt.pool,
            self.rt.key_of(store.role),
            deliveries.new_token(self._holder),
            [key] if rule.by_name else [],
            self.rt.settings.replication.lease_s,
        )

    def _row_key(self, store: RoleStore, secret_id: str) -> tuple[str, uuid.UUID] | None:
        """The delivery row of (``store``, secret); None for a store the worker does not
        deliver to (the sql primary)."""
        if store.role not in self.rt.targets:
            return None
        return self.rt.key_of(store.role), uuid.UUID(secret_id)

    def _copy(self, source: RoleStore, dest: RoleStore) -> Action:
        async def act(finding: Finding) -> None:
            if finding.cls == "orphan":
                return
            if finding.cls == "in_sync":
                self.report.add("skipped")
                if self.delete_secrets and not self.dry_run:
                    await self._spawn(self._evacuate(source, finding))
                return
            if self.dry_run:
                return
            await self._spawn(self._copy_one(source, dest, finding))

        return act

    async def _copy_one(self, source: RoleStore, dest: RoleStore, f: Finding) -> None:
        try:
            if f.cls in _REISSUE or f.cls == "moved":
                # ``dest`` holds the current version (or a newer one) with other content, one
                # that does not decrypt, or a tombstone (a restore after a backup with
                # delete_secrets, or the other way round), so a copy would be a no-op: new
                # versions through the outbox replace the entry, and the source is not
                # evacuated on its word.
                await self._reissue_past(None, f.secret_id, _fence_of(f))
                self.report.add("copied")
                return
            written = await self._write_current(dest, f.secret_id, source.get)
            if not written:
                return
        except _Deleted:
            self.report.add("skipped")
            return
        except (StoreError, DecryptionError, Unavailable) as exc:
            self.report.fail(f.secret_id, dest.role, _reason(exc))
            return
        if self.delete_secrets:
            await self._evacuate(source, f, written)

    async def _evacuate(self, source: RoleStore, f: Finding, version: int = 0) -> None:
        """Remove a secret from ``source`` once ``version`` (else the scanned one) is in the
        other store: a tombstone at it (the source may hold it already, or get it next)."""
        assert f.expected_version is not None
        version = version or f.expected_version
        try:
            lease = await self._lease(source, f.secret_id)
            if lease is None:
                raise StoreContended("a delivery kept the entry busy; run the job again")
            try:
                await self._leased_write(
                    source, lease, lambda leased: leased.delete(f.secret_id, version)
                )
            finally:
                await self._release(source, f.secret_id, lease, 0)
            self.report.add("deleted")
        except (StoreError, Unavailable) as exc:
            self.report.fail(f.secret_id, source.role, _reason(exc))

    async def _values_from(
        self, read: Callable[[str], Awaitable[StoredValue | None]], secret_id: str
    ) -> tuple[dict[str, str], int, str]:
        """The current version: its values from ``read`` when it holds them, else the log."""
        values, version, hash_ = await self._current(secret_id)
        with contextlib.suppress(StoreError):
            stored = await read(secret_id)
            if stored is not None and stored.version == version:
                return stored.values, version, hash_
        return values, version, hash_

    async def _current(self, secret_id: str) -> tuple[dict[str, str], int, str]:
        """The secret's current values from the log; ``_Deleted`` if it is gone meanwhile."""
        row = await self._current_row(secret_id)
        return self._logged(secret_id, row), row["version"], row["hash"]

    async def _current_row(self, secret_id: str) -> Any:
        row = await self.rt.pool.fetchrow(Q.secret_snapshot_current, uuid.UUID(secret_id))
        if row is None:
            raise _Deleted()
        return row

    def _logged(self, secret_id: str, row: Any) -> dict[str, str]:
        if row["snapshot"] is None:
            raise StoreError("the current version's snapshot is missing from the event log")
        plain = self.rt.keyring.decrypt(row["snapshot"], secret_aad(secret_id, row["version"]))
        values: dict[str, str] = json.loads(plain)
        return values

    async def _reissue(self, secret_id: str) -> None:
        row = await self._current_row(secret_id)
        values, version = self._logged(secret_id, row), row["version"]
        blob = canonical(values)
        snapshot = self.rt.keyring.encrypt(blob, secret_aad(secret_id, version + 1))
        await self.rt.pool.fetchrow(
            Q.secret_reissue,
            secret_id=uuid.UUID(secret_id),
            version_read=version,
            snapshot=snapshot,
            # Under the current hash key: after a lost one was replaced, the hash every
            # store (azure) recomputes from the value, which the old hash never matches.
            hash=self.rt.content_hash(secret_id, blob),
            outbox_deployment=self.rt.outbox_deployment,
            # The base targets and the mirrors selecting the secret (as every write).
            targets=self.rt.keys_of(self.rt.targets_for((row["name"], row["private"]))),
        )
        self.rt.committed()


def _keeps_tombstones(role: RoleStore) -> bool:
    """The store remembers a delete (an optional store attribute; aws: a recovery window)."""
    return bool(getattr(role.store, "keeps_tombstones", True))


def _fence_of(f: Finding) -> Entry | None:
    """The entry a re-issue must pass. An unreadable entry's version may be forged: one out
    of the re-issues' reach is not chased (None: one re-issue), since the file store
    replaces an entry whose header is not authentic on the next write anyway; within
    reach it is (the sql store fences on its version column, readable or not)."""
    entry, expected = f.entry, f.expected_version
    if f.cls == "unreadable" and entry is not None and expected is not None:
        return None if entry.version >= expected + _REISSUES else entry
    return entry


async def _log_only(secret_id: str) -> StoredValue | None:
    """No store to read from: the values come from the event log."""
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return f"{exc.reason}: {exc.message}"
    if isinstance(exc, DecryptionError):
        return "decryption failed"
    return exc.message if isinstance(exc, Unavailable) else "the database is unavailable"


def _flat(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counts.items() if k != "stores"}


def store_names(rt: Runtime) -> list[str]:
    """Every configured store by the name jobs use: primary, backup, the mirrors."""
    return [role.role for role in rt.stores]


class _Deleted(Exception):
    """The secret was deleted while the job ran: nothing to copy (its delete replicates)."""


class Jobs:
    """Starts, lists and cancels jobs; runs the ones this process started."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._running: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}

    async def start(
        self,
        mode: str,
        *,
        dry_run: bool,
        delete_secrets: bool,
        stores: list[str] | None = None,
        principal: Principal | None = None,
        action: str = "job.start",
    ) -> dict[str, Any]:
        """Start a job. ``stores`` (verify and repair): the stores it covers, by name (default
        every store); an unknown name, or more names than stores, is ``Invalid`` and no job
        is made. A job a request starts commits with its audit record (``action``)."""
        if mode in ("verify", "repair"):
            names = store_names(self.rt)
            if stores is not None and len(stores) > len(names):
                raise Invalid(
                    f"stores: {len(stores)} names for {len(names)} stores; "
                    f"name each at most once: {', '.join(names)}"
                )
            for name in stores or ():
                if name not in names:
                    raise Invalid(
                        f"stores: unknown store {echoed(name)}; the stores are {', '.join(names)}"
                    )
            # None: every store (what the divergence gauge takes as a full verify).
            chosen = None if stores is None else [n for n in names if n in stores]
        elif stores is not None:
            raise Invalid("stores applies to verify and repair only")
        else:
            chosen = None
        source = {"backup": self.rt.primary, "restore": self.rt.backup}.get(mode)
        if delete_secrets and source is not None and not _keeps_tombstones(source):
            raise Invalid(
                f"delete_secrets: the {source.role} store keeps no tombstone of a delete (aws "
                "with recovery_window_days = 0), so verify would count every secret it empties "
                "missing and repair would write it back; give it a recovery window first"
            )
        async with audit.changing(self.rt.pool, principal, action) as conn:
            try:
                row = await conn.fetchrow(
                    Q.job_create, uuid.uuid4(), mode, dry_run, delete_secrets, self.rt.node, chosen
                )
            except asyncpg.UniqueViolationError:
                raise JobRunning(f"a {mode} job is already running") from None
        self._launch(row)
        return job_json(row)

    def _launch(self, row: Any, *, resumed: bool = False) -> None:
        job: Job
        if row["mode"] == "rekey":
            from secretmirror.rekey import RekeyJob  # rekey builds on this module

            job = RekeyJob(self.rt, row, resumed=resumed)
        else:
            job = Job(self.rt, row)
        task = asyncio.create_task(job.run(), name=f"job-{job.id}")
        self._running[job.id] = task
        self._jobs[job.id] = job

        def forget(_task: asyncio.Task[None]) -> None:
            self._running.pop(job.id, None)
            self._jobs.pop(job.id, None)

        task.add_done_callback(forget)

    async def get(self, job_id: str) -> dict[str, Any]:
        row = await self.rt.pool.fetchrow(Q.job_get, _job_uuid(job_id))
        if row is None:
            raise NotFound("no such job")
        return job_json(row)

    async def list(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.rt.pool.fetch(Q.job_list, limit)
        return [job_json(r) for r in rows]

    async def cancel(self, job_id: str, principal: Principal | None = None) -> dict[str, Any]:
        """Cancel a queued or running job; one that has ended is shown as it is."""
        key = _job_uuid(job_id)
        async with audit.changing(self.rt.pool, principal, "job.cancel") as conn:
            row = await conn.fetchrow(Q.job_cancel, key) or await conn.fetchrow(Q.job_get, key)
            if row is None:
                raise NotFound("no such job")  # inside: no record of a cancel that was not
        local = self._jobs.get(str(key))
        if local is not None:
            local.cancel()  # at once here; another process's runner sees the flag
        return job_json(row)

    async def last_verify(self) -> dict[str, Any] | None:
        row = await self.rt.pool.fetchrow(Q.job_last_verify)
        if row is None:
            return None
        return {
            "job_id": str(row["id"]),
            "mode": row["mode"],
            "status": row["status"],
            "finished": row["finished"].isoformat() if row["finished"] else None,
            "stores": row["counts"].get("stores", {}),
        }

    async def run_scheduler(self, stop: asyncio.Event) -> None:
        """Scheduled verify (once across all processes) and clean-up of abandoned jobs."""
        cfg = self.rt.settings.reconcile
        while not stop.is_set():
            with contextlib.suppress(Unavailable):
                # A rekey job is resumed where its dead runner stopped; the others fail.
                resumed = await self.rt.pool.fetchrow(
                    Q.job_resume_abandoned_rekey, _ABANDONED_S, self.rt.node
                )
                if resumed is not None:
                    log.warning("job.resumed", job_id=str(resumed["id"]), mode="rekey")
                    self._launch(resumed, resumed=True)
                for row in await self.rt.pool.fetch(Q.job_fail_abandoned, _ABANDONED_S):
                    log.warning("job.abandoned", job_id=str(row["id"]), mode=row["mode"])
                if cfg.verify_interval_s > 0:
                    mode = "repair" if cfg.auto_repair else "verify"
                    row = await self.rt.pool.fetchrow(
                        Q.job_create_scheduled_verify,
                        uuid.uuid4(),
                        mode,
                        cfg.verify_interval_s,
                        self.rt.node,
                    )
                    if row is not None:
                        self._launch(row)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)

    async def shutdown(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise NotFound("no such job") from None
