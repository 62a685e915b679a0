"""The audit log: who read or changed what, written to PostgreSQL before the response.

Every audited request waits until its record is committed; a request whose
record cannot be written fails closed (503), as Vault does when no audit
device can write. Records never hold a value, a token or a key: only the
fields of ``Record``.

Group commit. A fleet restarting reads thousands of secrets at once, and one
transaction per read would make the audit log the bottleneck. Records of
concurrent requests queue up while one insert is in flight; the next insert
takes everything queued (one multi-row ``INSERT ... SELECT FROM unnest``) and
wakes every request of that batch when it commits. A lone request pays one
round trip; under load a batch grows with the load instead of the round trips.
The records of one request (a bulk read has one per secret) differ only in
their secret, so an ``Entry`` carries the fields they share once, and a request
is one row in ``audit_log`` with its secrets in arrays (migration 0009): a row
and its index entries per record were about half of PostgreSQL's work in a
storm of bulk reads. A record's id is its row's id plus its position in the
row; row ids step by ``ROW_SECRETS``, the most records a row holds.

A change to a secret, a user or a token is not group-committed: its record is
one more row of the statement or transaction that commits the change
(``Pending``), so the change and its record commit together or not at all, and
a 503 for an unwritable log means nothing changed.

``audit.file`` also appends each committed record as a JSON line to a file
(mode 0600). The file is a copy for shipping: PostgreSQL is the record of
truth, and a failed file write is logged, never a failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from secretmirror import metrics
from secretmirror.access import Principal
from secretmirror.errors import Unavailable
from secretmirror.queries import Q

log = structlog.get_logger("secretmirror.audit")

ACTIONS = (
    "secret.read",
    "secret.read_version",
    "secret.create",
    "secret.update",
    "secret.rename",
    "secret.delete",
    "secret.history",
    "user.create",
    "user.update",
    "user.delete",
    "token.create",
    "token.revoke",
    "auth.failed",
    "job.start",
    "job.cancel",
    "dead_letters.retry",
    "keys.rotate",
)
OUTCOMES = ("ok", "denied", "not_found", "error")
#: Records per insert at most (a batch beyond it waits for the next round trip).
MAX_BATCH = 2000
#: Records per row at most: the step of ``audit_log``'s ids (migration 0009).
ROW_SECRETS = 1024


def outcome_of(status: int) -> str:
    if 200 <= status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status in (404, 410):
        return "not_found"
    return "error"


@dataclass(frozen=True, slots=True)
class Record:
    at: datetime
    actor: str | None
    token_id: str | None
    action: str
    secret_id: str | None
    secret_name: str | None
    outcome: str
    status: int
    remote_addr: str | None
    request_id: str | None

    def to_json(self, record_id: int) -> dict[str, Any]:
        body = asdict(self)
        body["at"] = self.at.isoformat()
        return {"id": record_id, **body}


@dataclass(frozen=True, slots=True)
class Entry:
    """One request's records: the fields they share, and one record per secret in ``secrets``
    (``(id, name)``; ``(None, None)`` for a request that names none)."""

    at: datetime
    actor: str | None
    token_id: str | None
    action: str
    outcome: str
    status: int
    remote_addr: str | None
    request_id: str | None
    secrets: Sequence[tuple[str | None, str | None]]

    @classmethod
    def of(cls, record: Record) -> Entry:
        """The entry of a single record."""
        return cls(
            at=record.at,
            actor=record.actor,
            token_id=record.token_id,
            action=record.action,
            outcome=record.outcome,
            status=record.status,
            remote_addr=record.remote_addr,
            request_id=record.request_id,
            secrets=((record.secret_id, record.secret_name),),
        )

    def records(self) -> list[Record]:
        return [
            Record(
                at=self.at,
                actor=self.actor,
                token_id=self.token_id,
                action=self.action,
                secret_id=secret_id,
                secret_name=secret_name,
                outcome=self.outcome,
                status=self.status,
                remote_addr=self.remote_addr,
                request_id=self.request_id,
            )
            for secret_id, secret_name in self.secrets
        ]


@dataclass(slots=True)
class Pending:
    """The record of a change a request is about to commit, written by the statement that
    commits it (``Q.secret_create``/``Q.secret_change``): the request's own fields here,
    the actor and the secret from the change. ``statuses`` is the answer each action gives
    when it succeeds; ``written`` the record once committed (None: nothing was)."""

    remote_addr: str | None
    request_id: str | None
    statuses: Mapping[str, int]
    written: tuple[int, Record] | None = field(default=None)

    def params(self, action: str, token_id: str | None) -> dict[str, Any]:
        return {
            "audit_action": action,
            "audit_status": self.statuses[action],
            "audit_token_id": token_id,
            "audit_remote_addr": self.remote_addr,
            "audit_request_id": self.request_id,
        }


_CHANGE_PARAMS = (
    "audit_action",
    "audit_status",
    "audit_token_id",
    "audit_remote_addr",
    "audit_request_id",
)
#: The change a request running in this context may commit with its record (set by the
#: audit middleware around the handlers of changes).
PENDING: contextvars.ContextVar[Pending | None] = contextvars.ContextVar(
    "audit_pending", default=None
)


def change_params(action: str, token_id: str | None) -> dict[str, Any]:
    """The audit parameters of a change statement: the pending request's record, or none."""
    pending = PENDING.get()
    if pending is None:
        return dict.fromkeys(_CHANGE_PARAMS)
    return pending.params(action, token_id)


def changed(action: str, actor: str, token_id: str | None, row: Any) -> None:
    """Note the record a change statement committed (``row``: its result)."""
    pending = PENDING.get()
    if pending is None or row["audit_id"] is None:
        return
    secret = (row["id"], row["name"])
    _note(pending, action, actor, token_id, row["audit_id"], row["audit_at"], *secret)


async def record_change(
    conn: asyncpg.Connection, action: str, actor: str, token_id: str | None
) -> None:
    """Write the pending request's record of ``action`` on ``conn``, inside the transaction
    of the change (a user's or a token's), so that both commit or neither does."""
    pending = PENDING.get()
    if pending is None:
        return
    args = Q.args(Q.audit_insert_one, actor=actor, **pending.params(action, token_id))
    row = await conn.fetchrow(Q.audit_insert_one, *args)
    _note(pending, action, actor, token_id, row["id"], row["at"], None, None)


@contextlib.asynccontextmanager
async def changing(
    pool: asyncpg.Pool, principal: Principal | None, action: str
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction for a change (a user, a token, a job, the dead letters) that commits
    the pending request's record of ``action`` with it (``record_change``): an unwritable
    log refuses the change (503). No principal (the scheduler's own job): no record."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
            if principal is not None:
                await record_change(conn, action, principal.actor, principal.token_id)
    except asyncpg.PostgresError as exc:
        if (refused := unwritable(exc)) is not None:
            raise refused from None
        raise


def unwritable(exc: BaseException) -> Unavailable | None:
    """The 503 for a change whose record could not be written with it (the log's table
    missing or not granted), None for any other failure."""
    if not isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError)):
        return None
    if "audit_log" not in str(exc):
        return None
    metrics.audit_write_failures.inc()
    log.error("audit.write_failed", error=type(exc).__name__, records=1)
    return Unavailable("the audit log cannot be written")


def _note(
    pending: Pending,
    action: str,
    actor: str,
    token_id: str | None,
    record_id: int,
    at: datetime,
    secret_id: str | None,
    secret_name: str | None,
) -> None:
    record = Record(
        at=at,
        actor=actor,
        token_id=token_id,
        action=action,
        secret_id=secret_id,
        secret_name=secret_name,
        outcome="ok",
        status=pending.statuses[action],
        remote_addr=pending.remote_addr,
        request_id=pending.request_id,
    )
    pending.written = (int(record_id), record)


def row_json(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "actor": row["actor"],
        "token_id": row["token_id"],
        "action": row["action"],
        "secret_id": row["secret_id"],
        "secret_name": row["secret_name"],
        "outcome": row["outcome"],
        "status": row["status"],
        "remote_addr": row["remote_addr"],
        "request_id": row["request_id"],
    }


class AuditLog:
    """Group-committed audit records; ``write`` returns once they are in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, file: Path | None = None, enabled: bool = True) -> None:
        self.pool = pool
        self.enabled = enabled
        self._file_path = file
        self._file: int | None = None
        self._queue: list[tuple[Entry, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, entry: Entry) -> None:
        """Wait until ``entry``'s records are committed; ``Unavailable`` when they cannot be."""
        if not self.enabled or not entry.secrets:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="audit-flush")
        # Shielded: a client that goes away must not cancel the insert others wait on.
        await asyncio.shield(done)

    async def written(self, record_id: int, record: Record) -> None:
        """A record committed with its change (``Pending``): counted, copied to the file."""
        metrics.audit_records.inc()
        if self._file_path is not None:
            await self._append_file([record], [record_id])

    async def _flush(self) -> None:
        while self._queue:
            batch: list[tuple[Entry, asyncio.Future[None]]] = []
            count = 0
            while self._queue and (
                not batch or count + len(self._queue[0][0].secrets) <= MAX_BATCH
            ):
                queued = self._queue.pop(0)
                batch.append(queued)
                count += len(queued[0].secrets)
            entries = [entry for entry, _ in batch]
            try:
                ids = await self._insert(entries)
            except Exception as exc:  # any failure: every waiter of the batch gets a 503
                metrics.audit_write_failures.inc()
                log.error("audit.write_failed", error=type(exc).__name__, records=count)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(Unavailable("the audit log cannot be written"))
                continue
            metrics.audit_records.inc(count)
            metrics.audit_batch_size.observe(count)
            if self._file_path is not None:
                # Before the answers: a response means its record is in the file too.
                await self._append_file([r for e in entries for r in e.records()], ids)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _insert(self, entries: list[Entry]) -> list[int]:
        """One row per request (per ``ROW_SECRETS`` of its records); each record's id."""
        shared: list[tuple[Any, ...]] = []
        slots: list[int] = []
        secret_ids: list[str | None] = []
        secret_names: list[str | None] = []
        sizes: list[int] = []
        for entry in entries:
            for first in range(0, len(entry.secrets), ROW_SECRETS):
                chunk = entry.secrets[first : first + ROW_SECRETS]
                shared.append(_shared(entry))
                slots.extend([len(shared)] * len(chunk))
                for secret_id, secret_name in chunk:
                    secret_ids.append(secret_id)
                    secret_names.append(secret_name)
                sizes.append(len(chunk))
        columns = list(zip(*shared, strict=True))
        rows = await self.pool.fetch(Q.audit_insert, *columns, slots, secret_ids, secret_names)
        return [int(r["id"]) + n for r, size in zip(rows, sizes, strict=True) for n in range(size)]

    async def _append_file(self, records: list[Record], ids: list[int]) -> None:
        lines = "".join(
            json.dumps(r.to_json(i), separators=(",", ":")) + "\n"
            for r, i in zip(records, ids, strict=False)
        ).encode()
        try:
            await asyncio.to_thread(self._write_file, lines)
        except OSError as exc:
            metrics.audit_write_failures.inc()
            log.error("audit.file_write_failed", path=str(self._file_path), error=exc.strerror)

    def _write_file(self, data: bytes) -> None:
        if self._file is None:
            assert self._file_path is not None
            self._file = os.open(
                self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600
            )
            os.fchmod(self._file, 0o600)  # an existing file readable by others is tightened
        os.write(self._file, data)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), 5)
        if self._file is not None:
            os.close(self._file)
            self._file = None


def _shared(e: Entry) -> tuple[Any, ...]:
    return (e.at, e.actor, e.token_id, e.action, e.outcome, e.status, e.remote_addr, e.request_id)
