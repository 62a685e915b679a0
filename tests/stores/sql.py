"""The ``sql`` store in a database of its own (not the main one).

Entries are rows keyed by (deployment, secret id), so nothing but our own row can
sit at our key. Faults are PostgreSQL's own: a server nobody answers at, a role
without grants, a row lock held by another transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import SqlStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.sql import SqlStore
from tests.moto import free_port
from tests.pg import TestPostgres
from tests.stores import NoEquivalent

MAIN_DSN = "postgresql://main/db"


class SqlPlace:
    namespaced = (
        "sql rows are keyed by (deployment, secret id): another deployment's entry sits "
        "beside ours, never at our key"
    )

    def __init__(self, postgres: TestPostgres, name: str) -> None:
        self.postgres = postgres
        self.dsn = postgres.dsn(name)

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
async def place(request: Any) -> AsyncIterator[SqlPlace]:
    postgres: TestPostgres = request.getfixturevalue("postgres")
    name = await postgres.create_database()
    try:
        yield SqlPlace(postgres, name)
    finally:
        await postgres.drop_database(name)
