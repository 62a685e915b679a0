"""The ``aws`` store on the session's moto server, under a name prefix of its own.

Entries by hand are made with a plain Secrets Manager client (the console, another
tool), without secretmirror's tags. The store reaches moto through an
``HttpFaultProxy``, which answers faults as Secrets Manager documents them: the
JSON 1.1 protocol's ``{"__type": <code>, "message": ...}`` with the status the
API reference gives for the code (throttling and most client errors are HTTP 400,
``InvalidClientTokenId`` 403, ``InternalServiceError`` 500: the API reference's
Common Errors).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.aws import AwsStore
from secretmirror.stores.base import StoreContext
from tests.faultproxy import HttpFaultProxy
from tests.moto import aws_settings, secrets_client
from tests.net import free_port
from tests.stores import Fault

#: (HTTP status, error code, message) per fault, from the Secrets Manager API reference
#: (each operation's Errors and Common Errors). AWS has no 409 or 412: a lost race on a
#: new entry is CreateSecret's ResourceExistsException; throttling sends no Retry-After.
ANSWERS: dict[Fault, tuple[int, str, str]] = {
    Fault.UNAUTHENTICATED: (
        403,
        "InvalidClientTokenId",
        "The X.509 certificate or AWS access key ID provided does not exist in our records.",
    ),
    Fault.FORBIDDEN: (
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/sm is not authorized to perform: "
        "secretsmanager:* because no identity-based policy allows the action",
    ),
    Fault.NOT_FOUND: (
        400,
        "ResourceNotFoundException",
        "Secrets Manager can't find the specified secret.",
    ),
    Fault.CONTENDED: (
        400,
        "ResourceExistsException",
        "The operation failed because the secret already exists.",
    ),
    Fault.THROTTLED: (400, "ThrottlingException", "Rate exceeded"),
    Fault.SERVER_ERROR: (500, "InternalServiceError", "An error occurred on the server side."),
}


def _operation(headers: Mapping[str, str]) -> str:
    return headers.get("X-Amz-Target", "").rpartition(".")[2]


def _is_create(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return _operation(headers) == "CreateSecret"


class AwsPlace:
    namespaced = None

    def __init__(self, proxy: HttpFaultProxy, prefix: str, client: Any) -> None:
        self.proxy = proxy
        self.prefix = prefix
        self.client = client

    def store(self, ctx: StoreContext) -> AwsStore:
        return AwsStore(AwsStoreSettings(**aws_settings(self.proxy.url, self.prefix)), ctx)

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
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        status, code, message = ANSWERS[fault]
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "x-amzn-RequestId": "9b5a9a52-6f2e-4d1a-8c9a-0c1e2d3f4a5b",
        }
        when = {Fault.CONTENDED: _is_create}.get(fault)
        self.proxy.answer(status, body, headers, when=when, count=count)
        try:
            yield None
        finally:
            self.proxy.clear()


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[AwsPlace]:
    endpoint = request.getfixturevalue("moto_server")
    async with secrets_client(endpoint) as client, HttpFaultProxy(endpoint) as proxy:
        yield AwsPlace(proxy, request.getfixturevalue("aws_prefix"), client)
