"""The ``gcp`` store on the session's Secret Manager fake, under a name prefix of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import GcpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.gcp import GcpStore
from tests.gcpfake import gcp_settings


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[GcpStore]:
    fake = request.getfixturevalue("gcp_fake")
    key_file = request.getfixturevalue("gcp_key_file")
    prefix = request.getfixturevalue("gcp_prefix")
    store = GcpStore(GcpStoreSettings(**gcp_settings(fake.url, key_file, prefix)), ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
