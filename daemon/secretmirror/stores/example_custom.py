"""An example ``custom`` store: encrypted entries in one SQLite file, on the fenced-store template.

This module is the worked example for writing a store of your own; configure it
as::

    [backup]
    type = "custom"
    class_path = "secretmirror.stores.example_custom:SqliteStore"
    options = { path = "/var/lib/secretmirror/values.db" }

It is a working store (durable, encrypted, fenced), but a single-host one: the
file lives on one disk, so use it where the ``file`` store would also do and
back the disk up. Everything a real back-end must do is here in small form:

- the constructor takes ``(options, ctx)``, checks its options and raises
  ``ConfigError`` naming the bad one (never echoing a value);
- values are encrypted with ``ctx.keyring``, bound to the secret id and
  version, because secretmirror itself keeps them;
- ``FencedStore`` (``stores/fenced.py``) does the rest that every store
  shares: the checks before a write, the per-entry lock, what the process
  remembers of each entry, the version fence, the retry when an entry changed
  under a write, the listing loop. The store fills in its hooks: ``_load``
  (read one entry's state), ``_put_as`` / ``_delete_as`` (one *conditional*
  write each: here an ``UPDATE`` that matches only the row as it was read,
  so a concurrent writer makes it ``Stale`` instead of being overwritten),
  ``_pages`` / ``_listed`` (the listing, which opens each ciphertext so that a
  corrupted entry is reported ``unreadable``, as the sql and file stores do);
- the provider's errors (here ``sqlite3``) are translated into
  ``secretmirror.errors.Store*`` in one place, and blocking calls run in a
  worker thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from secretmirror.crypto import Keyring, secret_aad
from secretmirror.errors import ConfigError, StoreContended, StoreRejected, StoreUnavailable
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.fenced import FencedStore, Stale, Write, covers_delete, moves_forward

T = TypeVar("T")

_PAGE = 500
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    deployment TEXT NOT NULL,
    secret_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash TEXT,
    ciphertext BLOB,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (deployment, secret_id)
)
"""

_ROW = """
SELECT version, hash, deleted, ciphertext FROM entries WHERE deployment = ? AND secret_id = ?
"""

# The conditional writes: a new row only where there is none, a changed row only
# where it still holds the version that was read.
_INSERT = """
INSERT OR IGNORE INTO entries (deployment, secret_id, version, hash, ciphertext, deleted)
VALUES (?, ?, ?, ?, ?, ?)
"""

_UPDATE = """
UPDATE entries SET version = ?, hash = ?, ciphertext = ?, deleted = ?
WHERE deployment = ? AND secret_id = ? AND version = ? AND deleted = ?
"""

_LIST = """
SELECT secret_id, version, hash, deleted, ciphertext FROM entries
WHERE deployment = ? AND secret_id > ?
ORDER BY secret_id
LIMIT ?
"""


@dataclass(frozen=True, slots=True)
class _State:
    """One entry's row as this process last saw it."""

    exists: bool
    version: int = 0
    hash: str | None = None
    deleted: bool = False
    #: A listing found its ciphertext does not decrypt (corrupted, or another entry's).
    unreadable: bool = False

    def entry(self, secret_id: str) -> Entry:
        hash_ = None if self.deleted else self.hash
        return Entry(secret_id, self.version, hash_, self.deleted, unreadable=self.unreadable)


class SqliteStore(FencedStore[_State]):
    """Encrypted secret values in a SQLite file (``options.path``)."""

    type = "custom"
    provider = "SQLite"
    #: secretmirror's own cap on a secret is at most 1 MiB; SQLite takes far more.
    max_value_bytes = 1024 * 1024
    name_pattern = re.compile(r".{1,1024}", re.DOTALL)

    def __init__(self, options: dict[str, Any], ctx: StoreContext) -> None:
        unknown = sorted(set(options) - {"path"})
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}; this store takes path")
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError("option path (the SQLite file) is required")
        if not isinstance(ctx.keyring, Keyring):
            raise ConfigError("the store context carries no keyring")
        # No name prefix (rows are keyed by deployment) and no write quota to pace.
        super().__init__(ctx, name_prefix="")
        self._path = Path(path).expanduser().resolve()
        self._keyring = ctx.keyring
        self._db: sqlite3.Connection | None = None
        # One connection, used by one thread at a time.
        self._lock = asyncio.Lock()

    @property
    def location(self) -> str:
        return f"sqlite:{self._path}"

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(_SCHEMA)
            return db

        try:
            self._db = await asyncio.to_thread(connect)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self._path} ({type(exc).__name__})") from exc

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def health(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def _get(self, secret_id: str, name: str) -> StoredValue | None:
        args = (self._deployment_id, secret_id)
        row = await self._run(lambda db: db.execute(_ROW, args).fetchone())
        if row is None or row[2]:
            return None  # missing, or a tombstone
        version, hash_, _, blob = row
        plain = self._keyring.decrypt(blob, secret_aad(secret_id, version))
        return StoredValue(secret_id, version, hash_, self._values(secret_id, plain))

    # -- the template's hooks --

    async def _load(self, secret_id: str, name: str) -> _State | None:
        args = (self._deployment_id, secret_id)
        row = await self._run(lambda db: db.execute(_ROW, args).fetchone())
        return None if row is None else _State(True, row[0], row[1], bool(row[2]))

    def _absent(self) -> _State:
        return _State(exists=False)

    def _unlisted(self) -> _State:
        # After a complete listing an entry not remembered did not exist; if one appeared
        # meanwhile, the conditional insert changes nothing and the entry is read.
        return _State(exists=False)

    async def _put_as(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        if not moves_forward(write.version, held=state.version):
            return PutOutcome.UNCHANGED
        blob = self._keyring.encrypt(write.blob, secret_aad(secret_id, write.version))
        written = _State(True, write.version, write.hash)
        await self._write(secret_id, state, written, blob)
        return PutOutcome.WRITTEN

    async def _delete_as(self, secret_id: str, name: str, state: _State, version: int) -> None:
        if covers_delete(version, held=state.version, deleted=state.deleted):
            return
        await self._write(secret_id, state, _State(True, version, deleted=True), None)

    async def _pages(self) -> AsyncIterator[Sequence[Any]]:
        after = ""
        while True:
            rows = await self._run(functools.partial(_page, self._deployment_id, after))
            yield rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    async def _listed(self, item: Any) -> tuple[str, str, _State] | None:
        # The ciphertext is opened, as the sql and file stores do: an entry that does not
        # decrypt is reported (verify: unreadable), never taken as in sync on its header.
        secret_id, version, hash_, deleted, blob = item
        aad = secret_aad(secret_id, version)
        unreadable = not deleted and (blob is None or not self._keyring.opens(blob, aad))
        return secret_id, secret_id, _State(True, version, hash_, bool(deleted), unreadable)

    # -- SQLite --

    async def _write(self, secret_id: str, seen: _State, new: _State, blob: bytes | None) -> None:
        """Replace the row ``seen`` with ``new``; ``Stale`` when the row is no longer ``seen``."""
        values = (new.version, new.hash, blob, int(new.deleted))
        if seen.exists:
            where = (self._deployment_id, secret_id, seen.version, int(seen.deleted))
            changed = await self._run(lambda db: db.execute(_UPDATE, values + where).rowcount)
        else:
            row = (self._deployment_id, secret_id, *values)
            changed = await self._run(lambda db: db.execute(_INSERT, row).rowcount)
        if not changed:
            raise Stale
        self._remembered.remember(secret_id, new)

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``call`` in a worker thread; translate SQLite's errors in this one place."""
        db = self._db
        if db is None:
            raise StoreUnavailable("the store is not open")
        async with self._lock:
            try:
                return await asyncio.to_thread(call, db)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode in _BUSY:  # another writer holds the lock: retry
                    raise StoreContended(f"{self._path}: the database is locked") from exc
                # disk I/O, a read-only file: the store is down
                raise StoreUnavailable(f"{self._path}: {type(exc).__name__}") from exc
            except sqlite3.Error as exc:
                raise StoreRejected(f"{self._path}: {type(exc).__name__}") from exc


def _page(deployment: str, after: str, db: sqlite3.Connection) -> list[Any]:
    return db.execute(_LIST, (deployment, after, _PAGE)).fetchall()
