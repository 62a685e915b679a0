"""The example ``custom`` store, loaded by class path as an operator would configure it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import CustomStoreSettings
from secretmirror.stores import build_store
from secretmirror.stores.base import SecretStore, StoreContext

CLASS_PATH = "secretmirror.stores.example_custom:SqliteStore"


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[SecretStore]:
    tmp_path = request.getfixturevalue("tmp_path")
    settings = CustomStoreSettings(class_path=CLASS_PATH, options={"path": str(tmp_path / "s.db")})
    store = build_store(settings, ctx, main_dsn="postgresql://main/db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
