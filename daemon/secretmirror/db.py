"""PostgreSQL: the connection pool, the migration runner and the embedded server.

Migrations are the numbered plain-SQL files in ``migrations/`` (``0001_initial.sql``),
applied in order inside one transaction under an advisory lock, each recorded
in ``schema_migrations``. ``serve`` applies pending ones at start and refuses a
schema newer than it knows.

Every query of the core goes through ``Gateway``, the one place a PostgreSQL
outage becomes ``Unavailable`` (503): callers above it never name asyncpg's
error types, and a background loop that outlives an outage catches
``Unavailable`` like a route lets it through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from secretmirror.errors import ConfigError, SchemaMismatch, Unavailable
from secretmirror.queries import Q

log = structlog.get_logger("secretmirror.db")

#: What asyncpg raises when the server is away or the connection broke. InternalClientError
#: is the driver's own state error on a connection the server just cut ("cannot switch to
#: state 11; another operation is in progress"), seen when an administrator terminates it.
DB_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)

_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text()


def migrations_dir() -> Path:
    env = os.environ.get("SECRETMIRROR_MIGRATIONS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "migrations"


def known_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path))
    return found


async def upgrade(conn: asyncpg.Connection) -> list[int]:
    """Apply every pending migration; safe to run from several processes at once."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(Q.migrations_lock)
        await conn.execute(Q.migrations_table)
        applied = {r["version"] for r in await conn.fetch(Q.migrations_applied)}
        known = known_migrations()
        _refuse_newer(applied, known)
        for migration in known:
            if migration.version in applied:
                continue
            await conn.execute(migration.sql())
            await conn.execute(Q.migrations_record, migration.version, migration.name)
            applied_now.append(migration.version)
    if applied_now:
        log.info("db.migrated", versions=applied_now)
    return applied_now


async def check_schema(conn: asyncpg.Connection) -> None:
    """Raise ``SchemaMismatch`` naming the fix unless the schema is exactly current."""
    if not await conn.fetchval(Q.migrations_table_exists):
        raise SchemaMismatch("the database has no schema: run `secretmirror db upgrade`")
    applied = {r["version"] for r in await conn.fetch(Q.migrations_applied)}
    known = known_migrations()
    _refuse_newer(applied, known)
    missing = [m.version for m in known if m.version not in applied]
    if missing:
        raise SchemaMismatch(
            f"the database schema is behind (missing {missing}): run `secretmirror db upgrade`"
        )


def _refuse_newer(applied: set[int], known: list[Migration]) -> None:
    newer = sorted(applied - {m.version for m in known})
    if newer:
        raise SchemaMismatch(
            f"the database schema has migrations {newer} this secretmirror does not know: "
            "upgrade secretmirror to the version that wrote them"
        )


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog"
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


def _json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_loads(text: str) -> Any:
    return json.loads(text)


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """An asyncpg pool; the DSN goes to the driver untouched."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # No session state is ever set on pool connections (no SET, only
        # transaction-scoped advisory locks, LISTEN on its own connection), so
        # the default reset (four statements per release) is pure overhead.
        reset=_no_reset,
        command_timeout=30,
        max_inactive_connection_lifetime=60,
    )
    return pool


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        await _init_connection(conn)
        yield conn
    finally:
        await conn.close()


class Gateway:
    """The pool's query methods, with a database outage raised as ``Unavailable`` (503).

    A query takes its values positionally (``$1``...) or, for a block with named
    parameters, as keywords (``fetchrow(Q.secret_create, secret_id=..., ...)``).

    ``acquire`` also translates an outage while the connection is in use, so a
    transaction run on it needs no handler of its own.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        #: The asyncpg pool itself (to close it).
        self.pool = pool

    async def fetch(self, query: str, *args: Any, **named: Any) -> list[Any]:
        with _outage():
            return list(await self.pool.fetch(query, *_args(query, args, named)))

    async def fetchrow(self, query: str, *args: Any, **named: Any) -> Any:
        with _outage():
            return await self.pool.fetchrow(query, *_args(query, args, named))

    async def fetchval(self, query: str, *args: Any, **named: Any) -> Any:
        with _outage():
            return await self.pool.fetchval(query, *_args(query, args, named))

    async def execute(self, query: str, *args: Any, **named: Any) -> str:
        with _outage():
            return str(await self.pool.execute(query, *_args(query, args, named)))

    @contextlib.asynccontextmanager
    async def acquire(self, wait_s: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A connection for several statements or a transaction."""
        with _outage():
            async with self.pool.acquire(timeout=wait_s) as conn:
                yield conn


def _args(query: str, args: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, ...]:
    """Positional values as given, or named ones in the block's ``$n`` order (``queries``)."""
    if not named:
        return args
    if args:
        raise TypeError("a query takes positional or named parameters, not both")
    return Q.args(query, **named)


@contextlib.contextmanager
def _outage() -> Iterator[None]:
    """The one translation of a PostgreSQL outage; the driver's error stays the cause."""
    try:
        yield
    except DB_DOWN as exc:
        raise Unavailable("the database is unavailable") from exc


# -- the embedded server ------------------------------------------------------


class EmbeddedPostgres:
    """PostgreSQL from the ``pgserver`` package under ``data_dir/postgres``.

    Reused across restarts (pgserver finds a running server on the same data
    directory) and stopped on exit when this process started it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        try:
            import pgserver
        except ImportError:  # pragma: no cover - a dependency of the package
            raise ConfigError("the embedded database needs the `pgserver` package") from None
        self.pgdata.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        get_server = pgserver.get_server  # type: ignore[attr-defined]
        try:
            self._server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises plain exceptions from initdb/pg_ctl
            raise ConfigError(
                f"the embedded PostgreSQL under {self.pgdata} did not start "
                f"({type(exc).__name__}); see {self.pgdata / 'log'}, or set database_url"
            ) from exc
        dsn: str = self._server.get_uri()
        return dsn

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None
