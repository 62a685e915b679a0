"""The ``sql`` store in a database of its own (not the main one)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import SqlStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.sql import SqlStore


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[SqlStore]:
    postgres = request.getfixturevalue("postgres")
    name = await postgres.create_database()
    dsn = postgres.dsn(name)
    store = SqlStore(SqlStoreSettings(database_url=dsn), ctx, main_dsn="postgresql://main/db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await postgres.drop_database(name)
