"""The ``file`` store in the test's temporary directory (its default path under data_dir)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[FileStore]:
    store = FileStore(FileStoreSettings(), ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
