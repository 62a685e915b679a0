"""An example ``custom`` store: encrypted entries in one SQLite file.

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
- every write is fenced by version in one statement, and a delete is a
  versioned tombstone;
- ``list`` streams in pages, and the provider's errors (here ``sqlite3``) are
  translated into ``secretmirror.errors.Store*`` in one place;
- blocking calls run in a worker thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from secretmirror.crypto import Keyring, secret_aad
from secretmirror.errors import ConfigError, StoreRejected, StoreUnavailable
from secretmirror.model import canonical
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue

T = TypeVar("T")

_PAGE = 500

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

# Fenced like the sql store: a row holding this version or a newer one is left
# alone, except that a tombstone at the version it holds replaces it.
_PUT = """
INSERT INTO entries (deployment, secret_id, version, hash, ciphertext, deleted)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (deployment, secret_id) DO UPDATE
    SET version = excluded.version, hash = excluded.hash,
        ciphertext = excluded.ciphertext, deleted = excluded.deleted
    WHERE entries.version < excluded.version
       OR (entries.version = excluded.version AND excluded.deleted AND NOT entries.deleted)
"""

_GET = """
SELECT version, hash, ciphertext FROM entries
WHERE deployment = ? AND secret_id = ? AND NOT deleted
"""

_LIST = """
SELECT secret_id, version, hash, deleted FROM entries
WHERE deployment = ? AND secret_id > ?
ORDER BY secret_id
LIMIT ?
"""


class SqliteStore:
    """Encrypted secret values in a SQLite file (``options.path``)."""

    type = "custom"

    def __init__(self, options: dict[str, Any], ctx: StoreContext) -> None:
        unknown = sorted(set(options) - {"path"})
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}; this store takes path")
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError("option path (the SQLite file) is required")
        if not isinstance(ctx.keyring, Keyring):
            raise ConfigError("the store context carries no keyring")
        self._path = Path(path).expanduser().resolve()
        self._keyring = ctx.keyring
        self._deployment_id = ctx.deployment_id
        self._db: sqlite3.Connection | None = None
        # One connection, used by one thread at a time.
        self._lock = asyncio.Lock()

    @property
    def location(self) -> str:
        return f"sqlite:{self._path}"

    @property
    def max_value_bytes(self) -> int | None:
        return None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(_SCHEMA)
            return db

        try:
            self._db = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self._path} ({type(exc).__name__})") from exc

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def health(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def put(
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        blob = self._keyring.encrypt(canonical(values), secret_aad(secret_id, version))
        args = (self._deployment_id, secret_id, version, content_hash, blob, 0)
        changed = await self._run(lambda db: db.execute(_PUT, args).rowcount)
        return PutOutcome.WRITTEN if changed else PutOutcome.UNCHANGED

    async def get(self, secret_id: str) -> StoredValue | None:
        args = (self._deployment_id, secret_id)
        row = await self._run(lambda db: db.execute(_GET, args).fetchone())
        if row is None:
            return None
        version, hash_, blob = row
        plain = self._keyring.decrypt(blob, secret_aad(secret_id, version))
        return StoredValue(secret_id, version, hash_, json.loads(plain))

    async def delete(self, secret_id: str, version: int) -> None:
        args = (self._deployment_id, secret_id, version, None, None, 1)
        await self._run(lambda db: db.execute(_PUT, args).rowcount)

    async def list(self) -> AsyncIterator[Entry]:
        after = ""
        while True:
            page = functools.partial(_fetch_all, _LIST, (self._deployment_id, after, _PAGE))
            rows = await self._run(page)
            for secret_id, version, hash_, deleted in rows:
                yield Entry(secret_id, version, hash_, bool(deleted))
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``call`` in a worker thread; translate SQLite's errors in this one place."""
        db = self._db
        if db is None:
            raise StoreUnavailable("the store is not open")
        async with self._lock:
            try:
                return await asyncio.to_thread(call, db)
            except sqlite3.OperationalError as exc:  # locked, disk I/O, read-only file
                raise StoreUnavailable(f"{self._path}: {type(exc).__name__}") from exc
            except sqlite3.Error as exc:
                raise StoreRejected(f"{self._path}: {type(exc).__name__}") from exc


def _fetch_all(sql: str, args: tuple[Any, ...], db: sqlite3.Connection) -> list[Any]:
    return db.execute(sql, args).fetchall()
