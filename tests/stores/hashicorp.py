"""The ``hashicorp`` store on the session's OpenBao dev server, under a path prefix of its own.

Entries by hand are written with OpenBao's KV v2 API, without secretmirror's
custom metadata.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import HashicorpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.hashicorp import HashicorpStore
from tests.moto import free_port
from tests.openbao import OpenBao

MOUNT = "secret"


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}/"


class HashicorpPlace:
    namespaced = None

    def __init__(self, bao: OpenBao) -> None:
        self.bao = bao
        self.prefix = unique_prefix()

    def store(self, ctx: StoreContext) -> HashicorpStore:
        settings = HashicorpStoreSettings(
            url=self.bao.url, token=self.bao.root_token, path_prefix=self.prefix
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
async def place(request: Any) -> AsyncIterator[HashicorpPlace]:
    yield HashicorpPlace(request.getfixturevalue("openbao"))
