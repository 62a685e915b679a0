"""The ``gcp`` store on the session's Secret Manager fake, under a name prefix of its own.

Entries by hand are made with Google's official client (REST transport), without
secretmirror's labels.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from secretmirror.settings import GcpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.gcp import GcpStore
from tests.gcpfake import PROJECT, SCOPE, GcpFake, gcp_settings
from tests.moto import free_port

PARENT = f"projects/{PROJECT}"


class GcpPlace:
    namespaced = None

    def __init__(self, fake: GcpFake, key_file: Path, prefix: str) -> None:
        self.fake = fake
        self.key_file = key_file
        self.prefix = prefix
        self._sdk: Any = None

    def store(self, ctx: StoreContext) -> GcpStore:
        fields = gcp_settings(self.fake.url, self.key_file, self.prefix)
        return GcpStore(GcpStoreSettings(**fields), ctx)

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import secretmanager
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_file(
                str(self.key_file), scopes=[SCOPE]
            )
            self._sdk = secretmanager.SecretManagerServiceClient(
                credentials=creds,
                transport="rest",
                client_options=ClientOptions(api_endpoint=self.fake.url),
            )
        return self._sdk

    async def plant_foreign(self, secret_id: str) -> None:
        name = f"{PARENT}/secrets/{self.prefix}{secret_id}"
        self.sdk.create_secret(
            request={
                "parent": PARENT,
                "secret_id": self.prefix + secret_id,
                "secret": {"replication": {"automatic": {}}},
            }
        )
        self.sdk.add_secret_version(request={"parent": name, "payload": {"data": b"theirs"}})

    async def raw(self, secret_id: str) -> Any:
        name = f"{PARENT}/secrets/{self.prefix}{secret_id}"
        secret = self.sdk.get_secret(request={"name": name})
        versions = self.sdk.list_secret_versions(request={"parent": name})
        latest = self.sdk.access_secret_version(request={"name": f"{name}/versions/latest"})
        return (
            dict(secret.labels),
            dict(secret.annotations),
            dict(secret.version_aliases),
            sorted((v.name, v.state) for v in versions),
            latest.payload.data,
        )

    def unreachable(self, ctx: StoreContext) -> GcpStore:
        fields = gcp_settings(self.fake.url, self.key_file, self.prefix)
        fields["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
        return GcpStore(GcpStoreSettings(**fields), ctx)


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[GcpPlace]:
    fake = request.getfixturevalue("gcp_fake_clean")
    key_file = request.getfixturevalue("gcp_key_file")
    yield GcpPlace(fake, key_file, request.getfixturevalue("gcp_prefix"))
