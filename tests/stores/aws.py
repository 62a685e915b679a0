"""The ``aws`` store on the session's moto server, under a name prefix of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.aws import AwsStore
from secretmirror.stores.base import StoreContext
from tests.moto import aws_settings


@contextlib.asynccontextmanager
async def make(ctx: StoreContext, request: Any) -> AsyncIterator[AwsStore]:
    endpoint = request.getfixturevalue("moto_server")
    prefix = request.getfixturevalue("aws_prefix")
    store = AwsStore(AwsStoreSettings(**aws_settings(endpoint, prefix)), ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
