"""The example ``custom`` store (SQLite), loaded by class path as an operator would configure it.

Entries are rows keyed by (deployment, secret id), like the sql store's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from secretmirror.settings import CustomStoreSettings
from secretmirror.stores import build_store
from secretmirror.stores.base import SecretStore, StoreContext
from tests.stores import NoEquivalent

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
async def place(request: Any) -> AsyncIterator[CustomPlace]:
    yield CustomPlace(request.getfixturevalue("tmp_path"))
