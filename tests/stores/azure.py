"""The ``azure`` store on the session's Key Vault fake, under a name prefix of its own.

Entries by hand are set with Microsoft's official client (``azure-keyvault-secrets``),
without secretmirror's tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import AzureStoreSettings
from secretmirror.stores.azure import AzureStore
from secretmirror.stores.base import StoreContext
from tests.azurefake import AzureFake, azure_settings, sdk_client
from tests.net import free_port
from tests.stores import Fault

RETRY_AFTER_S = 30.0
#: The HTTP status the fake answers for each fault (its bodies: Key Vault's
#: ``{"error": {"code", "message"}}``; a 401 carries the Bearer challenge).
STATUSES = {
    Fault.UNAUTHENTICATED: 401,
    Fault.FORBIDDEN: 403,
    Fault.NOT_FOUND: 404,
    Fault.CONTENDED: 409,
    Fault.THROTTLED: 429,
    Fault.SERVER_ERROR: 503,
}


def azure_store(fake: AzureFake, ctx: StoreContext, prefix: str, **overrides: Any) -> AzureStore:
    """A store on the fake: trusts its CA, takes service-principal tokens from it."""
    settings = AzureStoreSettings(**azure_settings(fake, prefix, **overrides))
    return AzureStore(settings, ctx, ssl_context=fake.ssl_context(), authority=fake.url)


class AzurePlace:
    namespaced = None

    def __init__(self, fake: AzureFake, prefix: str, sdk: Any) -> None:
        self.fake = fake
        self.prefix = prefix
        self.sdk = sdk

    def store(self, ctx: StoreContext) -> AzureStore:
        return azure_store(self.fake, ctx, self.prefix)

    async def plant_foreign(self, secret_id: str) -> None:
        await self.sdk.set_secret(self.prefix + secret_id, "theirs")

    async def raw(self, secret_id: str) -> Any:
        secret = await self.sdk.get_secret(self.prefix + secret_id)
        versions = [
            (p.version, p.enabled, p.tags)
            async for p in self.sdk.list_properties_of_secret_versions(self.prefix + secret_id)
        ]
        return secret.value, secret.properties.version, secret.properties.tags, sorted(versions)

    def unreachable(self, ctx: StoreContext) -> AzureStore:
        return azure_store(
            self.fake, ctx, self.prefix, vault_url=f"https://127.0.0.1:{free_port()}"
        )

    @contextlib.asynccontextmanager
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        hint = RETRY_AFTER_S if fault is Fault.THROTTLED else None
        self.fake.inject(
            STATUSES[fault],
            count or 1_000_000,
            retry_after_s=hint,
            writes_only=fault is Fault.CONTENDED,
        )
        try:
            yield hint
        finally:
            self.fake.reset()


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[AzurePlace]:
    fake: AzureFake = request.getfixturevalue("azure_fake")
    async with sdk_client(fake) as sdk:
        yield AzurePlace(fake, request.getfixturevalue("azure_prefix"), sdk)
