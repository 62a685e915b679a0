"""The ``hashicorp`` store on the session's OpenBao dev server, under a path prefix of its own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import HashicorpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.hashicorp import HashicorpStore
from tests.openbao import OpenBao


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[HashicorpStore]:
    bao: OpenBao = request.getfixturevalue("openbao")
    settings = HashicorpStoreSettings(
        url=bao.url, token=bao.root_token, path_prefix=unique_prefix()
    )
    store = HashicorpStore(settings, ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
