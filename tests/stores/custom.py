"""The example ``custom`` store (SQLite), loaded by class path as an operator would configure it.

Entries are rows keyed by (deployment, secret id), like the sql store's. The one
fault SQLite can answer is contention: another connection holding the write lock
(``BEGIN IMMEDIATE``) makes a write wait out the busy timeout, then fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from secretmirror.settings import CustomStoreSettings
from secretmirror.stores import build_store
from secretmirror.stores.base import SecretStore, StoreContext
from tests.stores import LASTING, Fault, NoEquivalent

_NO_EQUIVALENT = {
    Fault.UNAUTHENTICATED: "custom (SQLite): an embedded database takes no credentials",
    Fault.FORBIDDEN: (
        "custom (SQLite): the file's permissions are checked when the store opens it, never again"
    ),
    Fault.NOT_FOUND: (
        "custom (SQLite): a missing row is an empty result, not an answer to inject "
        "(test_get_missing_is_none, test_delete_of_missing_is_safe)"
    ),
    Fault.THROTTLED: "custom (SQLite): an embedded database has no rate limit",
    Fault.SERVER_ERROR: (
        "custom (SQLite): an embedded database has no server, and its disk failing "
        "cannot be injected here"
    ),
}

CLASS_PATH = "secretmirror.stores.example_custom:SqliteStore"


def custom_store(path: Path, ctx: StoreContext) -> SecretStore:
    settings = CustomStoreSettings(class_path=CLASS_PATH, options={"path": str(path)})
    return build_store(settings, ctx, main_dsn="postgresql://main/db")


class CustomPlace:
    namespaced = (
        "the example store's rows are keyed by (deployment, secret id): another deployment's "
        "entry sits beside ours, never at our key"
    )

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "s.db"

    def store(self, ctx: StoreContext) -> SecretStore:
        return custom_store(self.path, ctx)

    async def plant_foreign(self, secret_id: str) -> None:
        raise NoEquivalent(
            "a row at our (deployment, secret id) key is ours by definition: the example "
            "store has no entry at our name that is not ours"
        )

    async def raw(self, secret_id: str) -> Any:
        raise NoEquivalent("the example store has no foreign entry to read")

    def unreachable(self, ctx: StoreContext) -> SecretStore:
        blocker = self.directory / "not-a-directory"
        blocker.write_bytes(b"")
        return custom_store(blocker / "s.db", ctx)

    @contextlib.asynccontextmanager
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        if count is not None:
            raise NoEquivalent(LASTING)
        if fault is not Fault.CONTENDED:
            raise NoEquivalent(_NO_EQUIVALENT[fault])
        connect = functools.partial(sqlite3.connect, check_same_thread=False, isolation_level=None)
        writer = await asyncio.to_thread(connect, self.path)
        try:
            await asyncio.to_thread(writer.execute, "BEGIN IMMEDIATE")
            yield None
        finally:
            await asyncio.to_thread(writer.close)


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[CustomPlace]:
    yield CustomPlace(request.getfixturevalue("tmp_path"))
