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
from tests.gcpfake import PROJECT, ApiError, GcpFake, gcp_settings, sdk_client
from tests.net import free_port
from tests.stores import Fault

PARENT = f"projects/{PROJECT}"
RETRY_AFTER_S = 30.0
#: Faults as Secret Manager answers them: google.rpc.Status JSON with the HTTP status
#: of its code (https://cloud.google.com/apis/design/errors#handling_errors).
ANSWERS: dict[Fault, tuple[int, str, str]] = {
    Fault.UNAUTHENTICATED: (
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    ),
    Fault.FORBIDDEN: (
        403,
        "PERMISSION_DENIED",
        "Permission 'secretmanager.versions.access' denied for resource (or it may not exist).",
    ),
    Fault.NOT_FOUND: (404, "NOT_FOUND", "Secret [x] not found or has no versions."),
    Fault.CONTENDED: (409, "ABORTED", "The operation was aborted due to a concurrent change."),
    Fault.THROTTLED: (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per "
        "minute' of service 'secretmanager.googleapis.com'.",
    ),
    Fault.SERVER_ERROR: (503, "UNAVAILABLE", "The service is currently unavailable."),
}


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
            self._sdk = sdk_client(self.fake.url, self.key_file)
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
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        status, code, message = ANSWERS[fault]
        hint = RETRY_AFTER_S if fault is Fault.THROTTLED else None
        headers = {} if hint is None else {"Retry-After": f"{hint:g}"}
        error = ApiError(status, code, message, headers)
        self.fake.inject(count or 1_000_000, error, writes_only=fault is Fault.CONTENDED)
        try:
            yield hint
        finally:
            self.fake.clear_faults()


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[GcpPlace]:
    fake = request.getfixturevalue("gcp_fake_clean")
    key_file = request.getfixturevalue("gcp_key_file")
    yield GcpPlace(fake, key_file, request.getfixturevalue("gcp_prefix"))
