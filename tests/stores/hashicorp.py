"""The ``hashicorp`` store on the session's OpenBao dev server, under a path prefix of its own.

Entries by hand are written with OpenBao's KV v2 API, without secretmirror's
custom metadata. The store reaches OpenBao through an ``HttpFaultProxy``, which
answers faults as Vault/OpenBao document them: a JSON ``{"errors": [...]}`` body
with the status of the HTTP API's status-code table. Vault sends no 401: a
refused token is 403 ``permission denied``; a lost check-and-set is 400; a
rate-limit quota is 429 with ``Retry-After`` (``enable_rate_limit_response_headers``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from secretmirror.settings import HashicorpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.hashicorp import HashicorpStore
from tests.faultproxy import HttpFaultProxy
from tests.net import free_port
from tests.openbao import OpenBao
from tests.stores import Fault

MOUNT = "secret"
RETRY_AFTER_S = 30.0

#: (HTTP status, errors) per fault, as Vault/OpenBao answer them.
ANSWERS: dict[Fault, tuple[int, list[str]]] = {
    Fault.UNAUTHENTICATED: (
        403,
        ["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"],
    ),
    Fault.FORBIDDEN: (403, ["1 error occurred:\n\t* permission denied\n\n"]),
    Fault.NOT_FOUND: (404, []),
    Fault.CONTENDED: (400, ["check-and-set parameter did not match the current version"]),
    Fault.THROTTLED: (
        429,
        [f'request path "{MOUNT}/data/x": rate limit quota exceeded'],
    ),
    Fault.SERVER_ERROR: (503, ["Vault is sealed"]),
}


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


def _is_write(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method in ("POST", "PUT", "PATCH", "DELETE") and f"/{MOUNT}/" in path


class HashicorpPlace:
    namespaced = None

    def __init__(self, bao: OpenBao, proxy: HttpFaultProxy) -> None:
        self.bao = bao
        self.proxy = proxy
        self.prefix = unique_prefix()

    def store(self, ctx: StoreContext) -> HashicorpStore:
        settings = HashicorpStoreSettings(
            url=self.proxy.url, token=self.bao.root_token, path_prefix=self.prefix
        )
        return HashicorpStore(settings, ctx)

    async def plant_foreign(self, secret_id: str) -> None:
        self.bao.ok("POST", f"{MOUNT}/data/{self.prefix}{secret_id}", {"data": {"theirs": "x"}})

    async def raw(self, secret_id: str) -> Any:
        path = self.prefix + secret_id
        meta = self.bao.ok("GET", f"{MOUNT}/metadata/{path}")["data"]
        status, data = self.bao.request("GET", f"{MOUNT}/data/{path}")
        return meta, status, (data or {}).get("data")

    def unreachable(self, ctx: StoreContext) -> HashicorpStore:
        settings = HashicorpStoreSettings(
            url=f"http://127.0.0.1:{free_port()}", token="t", path_prefix=self.prefix
        )
        return HashicorpStore(settings, ctx)

    @contextlib.asynccontextmanager
    async def answering(
        self, fault: Fault, count: int | None = None
    ) -> AsyncIterator[float | None]:
        status, errors = ANSWERS[fault]
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        hint = None
        if fault is Fault.THROTTLED:
            hint = RETRY_AFTER_S
            headers["Retry-After"] = f"{RETRY_AFTER_S:g}"
        when = _is_write if fault is Fault.CONTENDED else None
        body = json.dumps({"errors": errors}).encode()
        self.proxy.answer(status, body, headers, when=when, count=count)
        try:
            yield hint
        finally:
            self.proxy.clear()


@contextlib.asynccontextmanager
async def place(request: Any) -> AsyncIterator[HashicorpPlace]:
    bao: OpenBao = request.getfixturevalue("openbao")
    async with HttpFaultProxy(bao.url) as proxy:
        yield HashicorpPlace(bao, proxy)
