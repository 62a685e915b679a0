"""The ``azure`` store on the session's Key Vault fake, under a name prefix of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import AzureStoreSettings
from secretmirror.stores.azure import AzureStore
from secretmirror.stores.base import StoreContext
from tests.azurefake import AzureFake, azure_settings


def azure_store(fake: AzureFake, ctx: StoreContext, prefix: str, **overrides: Any) -> AzureStore:
    """A store on the fake: trusts its CA, takes service-principal tokens from it."""
    settings = AzureStoreSettings(**azure_settings(fake, prefix, **overrides))
    return AzureStore(settings, ctx, ssl_context=fake.ssl_context(), authority=fake.url)


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[AzureStore]:
    fake: AzureFake = request.getfixturevalue("azure_fake")
    store = azure_store(fake, ctx, request.getfixturevalue("azure_prefix"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
