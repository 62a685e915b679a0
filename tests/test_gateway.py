"""What counts as a database outage (``db.DB_DOWN``): unit tests, no I/O."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import pytest

from secretmirror.crypto import Keyring
from secretmirror.db import Gateway
from secretmirror.errors import StoreUnavailable, Unavailable
from secretmirror.settings import SqlStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.sql import SqlStore

#: asyncpg's answer when a statement meets a connection the server has just cut: seen in
#: the contract suite when an administrator terminates the store's sessions.
CUT = asyncpg.InternalClientError("cannot switch to state 11; another operation (2) is in progress")


class _CutPool:
    """A pool whose every statement meets a connection the server cut."""

    async def fetchval(self, *_args: Any) -> Any:
        raise CUT

    async def fetch(self, *_args: Any) -> Any:
        raise CUT


async def test_a_cut_connection_is_a_database_outage() -> None:
    """The gateway answers a cut connection as an outage (503), not an internal error."""
    with pytest.raises(Unavailable):
        await Gateway(_CutPool()).fetch("SELECT 1")  # type: ignore[arg-type]


async def test_a_cut_connection_makes_the_sql_store_unavailable() -> None:
    """The sql store in its own database: a cut connection is StoreUnavailable."""
    store = SqlStore(
        SqlStoreSettings(database_url="postgresql://role@127.0.0.1:1/values"),
        StoreContext(deployment_id="d", keyring=Keyring([secrets.token_bytes(32)])),
        main_dsn="postgresql://main/db",
    )
    store._pool = _CutPool()
    with pytest.raises(StoreUnavailable):
        await store.health()
