"""The ``aws`` store on the session's moto server, under a name prefix of its own.

Entries by hand are made with a plain Secrets Manager client (the console, another
tool), without secretmirror's tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.aws import AwsStore
from secretmirror.stores.base import StoreContext
from tests.moto import aws_settings, free_port, secrets_client


class AwsPlace:
    namespaced = None

    def __init__(self, endpoint: str, prefix: str, client: Any) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self.client = client

    def store(self, ctx: StoreContext) -> AwsStore:
        return AwsStore(AwsStoreSettings(**aws_settings(self.endpoint, self.prefix)), ctx)

    async def plant_foreign(self, secret_id: str) -> None:
        await self.client.create_secret(
            Name=self.prefix + secret_id, SecretString='{"theirs": "x"}'
        )

    async def raw(self, secret_id: str) -> Any:
        name = self.prefix + secret_id
        described = await self.client.describe_secret(SecretId=name)
        value = await self.client.get_secret_value(SecretId=name)
        return (
            value["SecretString"],
            value["VersionId"],
            described.get("Tags"),
            described.get("DeletedDate"),
            described.get("VersionIdsToStages"),
        )

    def unreachable(self, ctx: StoreContext) -> AwsStore:
        settings = aws_settings(f"http://127.0.0.1:{free_port()}", self.prefix)
        return AwsStore(AwsStoreSettings(**settings), ctx)


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[AwsPlace]:
    endpoint = request.getfixturevalue("moto_server")
    async with secrets_client(endpoint) as client:
        yield AwsPlace(endpoint, request.getfixturevalue("aws_prefix"), client)
