"""The ``sql`` store: encrypted values in PostgreSQL, the main database or another one.

In the main database as the primary, the API writes values in the same
statement as the metadata and the event (``secret_create``/``secret_change``;
``outbox_deployment`` is that hook); this class is what the worker, reads and
reconcile jobs use otherwise, and the only path to a ``sql`` store in another
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import structlog

from secretmirror import db
from secretmirror.crypto import Keyring, secret_aad
from secretmirror.errors import StoreRejected, StoreUnavailable
from secretmirror.model import canonical
from secretmirror.queries import Q
from secretmirror.settings import SqlStoreSettings
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue

_PAGE = 500
log = structlog.get_logger("secretmirror.stores.sql")


class SqlStore:
    type = "sql"
    #: No limit of its own: secretmirror's cap on a secret applies.
    max_value_bytes: int | None = None

    def __init__(self, settings: SqlStoreSettings, ctx: StoreContext, main_dsn: str) -> None:
        self._settings = settings
        self._deployment_id = ctx.deployment_id
        assert isinstance(ctx.keyring, Keyring)
        self._keyring = ctx.keyring
        self._own_dsn = settings.database_url.get_secret_value() if settings.database_url else None
        self._main_pool = ctx.pool
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._location = _location_of(self._own_dsn or main_dsn)

    @property
    def in_main_database(self) -> bool:
        """True when values commit with the metadata, in the main database."""
        return self._own_dsn is None

    def outbox_deployment(self) -> str | None:
        """In the main database, the outbox statements write this store's values."""
        return self._deployment_id if self.in_main_database else None

    @property
    def location(self) -> str:
        return self._location

    @property
    def pool(self) -> Any:
        """The pool the values live in (None before ``open``): the key inventory counts there."""
        return self._pool

    async def open(self) -> None:
        if self._own_dsn is None:
            self._pool = self._main_pool
            return
        await self._ready()

    async def _ready(self) -> Any:
        """The pool, made (and the table with it) if a failed ``open`` or call left none.

        A database that refused us at start-up is tried again on each call, so the
        store comes back by itself once it answers.
        """
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None and self._own_dsn is not None:
                with _store_errors():
                    pool = await db.create_pool(self._own_dsn, min_size=1, max_size=10)
                    try:
                        await self._create_table(pool)
                    except BaseException:
                        await pool.close()
                        raise
                self._pool = pool
        return self._pool

    @staticmethod
    async def _create_table(pool: Any) -> None:
        async with pool.acquire() as conn:
            await conn.execute(Q.sql_store_schema)
            try:
                await conn.execute(Q.sql_store_key_id_column)
                await conn.execute(Q.sql_store_key_id_index)
            except asyncpg.PostgresError as exc:
                if _unavailable(exc):
                    raise
                # Values still work; only the key inventory cannot count this store.
                log.warning("sql_store.key_ids_unavailable", sqlstate=exc.sqlstate)

    async def close(self) -> None:
        if self._own_dsn is not None and self._pool is not None:
            await self._pool.close()

    async def health(self) -> None:
        await self._query("fetchval", Q.sql_store_health)

    def encrypt(self, secret_id: str, version: int, values: dict[str, str]) -> bytes:
        return self._keyring.encrypt(canonical(values), secret_aad(secret_id, version))

    async def put(
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        blob = self.encrypt(secret_id, version, values)
        row = (self._deployment_id, secret_id, version, content_hash, blob, False)
        written = await self._query("fetchval", Q.sql_store_put, *row)
        return PutOutcome.WRITTEN if written is not None else PutOutcome.UNCHANGED

    async def get(self, secret_id: str) -> StoredValue | None:
        row = await self._query("fetchrow", Q.sql_store_get, self._deployment_id, secret_id)
        if row is None or row["ciphertext"] is None:
            return None
        return self.decode(secret_id, row["version"], row["hash"], row["ciphertext"])

    def decode(self, secret_id: str, version: int, hash_: str, blob: bytes) -> StoredValue:
        plain = self._keyring.decrypt(blob, secret_aad(secret_id, version))
        return StoredValue(secret_id, version, hash_, json.loads(plain))

    async def delete(self, secret_id: str, version: int) -> None:
        await self._query(
            "fetchval", Q.sql_store_put, self._deployment_id, secret_id, version, None, None, True
        )

    async def list(self) -> AsyncIterator[Entry]:
        after: str | None = None
        while True:
            rows = await self._query("fetch", Q.sql_store_list, self._deployment_id, after, _PAGE)
            for row in rows:
                yield Entry(
                    row["secret_id"],
                    row["version"],
                    row["hash"],
                    row["deleted"],
                    unreadable=self._unreadable(row),
                )
            if len(rows) < _PAGE:
                return
            after = rows[-1]["secret_id"]

    def _unreadable(self, row: Any) -> bool:
        """A live entry whose ciphertext does not decrypt (a tombstone holds none)."""
        if row["deleted"]:
            return False
        if row["ciphertext"] is None:
            return True
        aad = secret_aad(row["secret_id"], row["version"])
        return not self._keyring.opens(row["ciphertext"], aad)

    async def _query(self, method: str, query: str, *args: Any) -> Any:
        """The pool's ``fetchval``, ``fetchrow`` or ``fetch`` of ``query``; errors the store's."""
        with _store_errors():
            pool = await self._ready()
            return await getattr(pool, method)(query, *args)


#: SQLSTATE classes and codes that say the database, not the statement, is the problem:
#: a broken connection (08), refused credentials (28), no CONNECT or table privilege
#: (42501), a database not accepting connections (55000), no such database (3D000), too
#: many connections (53), an administrator's shutdown (57), a server-side fault (58, XX).
#: An operator fixes them, and the store answers again without a restart.
_UNAVAILABLE_CLASSES = ("08", "28", "53", "57", "58", "XX")
_UNAVAILABLE_CODES = ("42501", "55000", "3D000")


def _unavailable(exc: asyncpg.PostgresError) -> bool:
    state = str(exc.sqlstate or "")
    return state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_CODES


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """A database outage or refusal is this store being unavailable; a refused statement,
    rejected."""
    try:
        yield
    except db.DB_DOWN as exc:
        raise StoreUnavailable(f"the sql store is unreachable ({type(exc).__name__})") from exc
    except asyncpg.PostgresError as exc:
        if _unavailable(exc):
            raise StoreUnavailable(f"the sql store database refused us ({exc.sqlstate})") from exc
        raise StoreRejected(f"the sql store refused the statement ({exc.sqlstate})") from exc


def _location_of(dsn: str) -> str:
    """host:port/database of a DSN, without credentials."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or ["localhost"])[0]
    port = parts.port or int((query.get("port") or ["5432"])[0])
    database = parts.path.lstrip("/") or (query.get("dbname") or ["postgres"])[0]
    return f"postgresql://{host}:{port}/{database}"
