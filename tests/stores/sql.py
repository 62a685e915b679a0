"""The ``sql`` store in a database of its own (not the main one), as a role of its own.

Entries are rows keyed by (deployment, secret id), so nothing but our own row can
sit at our key. Faults are PostgreSQL's own answers, made by an administrator: the
role may no longer log in (401), may no longer connect to the database (403), the
database accepts no connections (a server-side outage, 5xx); each also ends the
role's open sessions, as an administrator would.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from secretmirror.settings import SqlStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.sql import SqlStore
from tests.net import free_port
from tests.pg import TestPostgres
from tests.stores import LASTING, Fault, NoEquivalent

MAIN_DSN = "postgresql://main/db"


def _as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


class SqlPlace:
    namespaced = (
        "sql rows are keyed by (deployment, secret id): another deployment's entry sits "
        "beside ours, never at our key"
    )

    def __init__(self, postgres: TestPostgres, name: str, role: str) -> None:
        self.postgres = postgres
        self.name = name
        self.role = role
        self.dsn = _as_role(postgres.dsn(name), role)

    def store(self, ctx: StoreContext) -> SqlStore:
        return SqlStore(SqlStoreSettings(database_url=self.dsn), ctx, main_dsn=MAIN_DSN)

    async def plant_foreign(self, secret_id: str) -> None:
        raise NoEquivalent(
            "a row at our (deployment, secret id) key is ours by definition: the sql store "
            "has no entry at our name that is not ours"
        )

    async def raw(self, secret_id: str) -> Any:
        raise NoEquivalent("the sql store has no foreign entry to read")

    def unreachable(self, ctx: StoreContext) -> SqlStore:
        dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
        return SqlStore(SqlStoreSettings(database_url=dsn), ctx, main_dsn=MAIN_DSN)

    @contextlib.asynccontextmanager
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        if count is not None:
            raise NoEquivalent(LASTING)
        db, role = f'"{self.name}"', f'"{self.role}"'
        change = {
            Fault.UNAUTHENTICATED: (f"ALTER ROLE {role} NOLOGIN", f"ALTER ROLE {role} LOGIN"),
            Fault.FORBIDDEN: (
                f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC",
                f"GRANT CONNECT ON DATABASE {db} TO PUBLIC",
            ),
            Fault.SERVER_ERROR: (
                f"ALTER DATABASE {db} ALLOW_CONNECTIONS false",
                f"ALTER DATABASE {db} ALLOW_CONNECTIONS true",
            ),
        }.get(fault)
        if change is None:
            raise NoEquivalent(_NO_EQUIVALENT[fault])
        await self._admin(change[0])
        await self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            self.role,
        )
        try:
            yield None
        finally:
            await self._admin(change[1])

    async def _admin(self, sql: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.postgres.admin_dsn)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()


_NO_EQUIVALENT = {
    Fault.NOT_FOUND: (
        "sql: a missing row is an empty result, not an answer to inject "
        "(test_get_missing_is_none, test_delete_of_missing_is_safe)"
    ),
    Fault.CONTENDED: (
        "sql: a write is one conditional statement; a concurrent writer's row lock makes "
        "it wait, PostgreSQL never answers a lost race"
    ),
    Fault.THROTTLED: "sql: PostgreSQL has no rate limit to answer with",
}


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[SqlPlace]:
    postgres: TestPostgres = request.getfixturevalue("postgres")
    name = await postgres.create_database()
    role = f"smt_role_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres.dsn(name))
    try:
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')
        await conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    finally:
        await conn.close()
    try:
        yield SqlPlace(postgres, name, role)
    finally:
        await postgres.drop_database(name)
        conn = await asyncpg.connect(postgres.admin_dsn)
        try:
            await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()
