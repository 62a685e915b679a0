"""The aws store finishes work a crash interrupted, against the real moto server."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from aiobotocore.session import get_session

from secretmirror.crypto import Keyring, content_hash
from secretmirror.model import canonical
from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.aws import TAG_TOMBSTONE, AwsStore
from secretmirror.stores.base import PutOutcome, StoreContext
from tests.moto import ACCESS_KEY, REGION, SECRET_KEY, aws_settings


async def test_delete_interrupted_after_tagging_is_finished(
    moto_server: str, aws_prefix: str
) -> None:
    """A tombstone tag left on a live entry (crash before DeleteSecret) does not stop the delete."""
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]))
    settings = AwsStoreSettings(**aws_settings(moto_server, aws_prefix))
    sid, values = str(uuid.uuid4()), {"k": "v"}
    first = AwsStore(settings, ctx)
    await first.open()
    try:
        await first.put(sid, 1, values, content_hash(b"k" * 32, sid, canonical(values)))
    finally:
        await first.close()
    async with get_session().create_client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        await client.tag_resource(
            SecretId=f"{aws_prefix}{sid}", Tags=[{"Key": TAG_TOMBSTONE, "Value": "2"}]
        )
        restarted = AwsStore(settings, ctx)  # knows nothing: as after a restart
        await restarted.open()
        try:
            await restarted.delete(sid, 2)
            described = await client.describe_secret(SecretId=f"{aws_prefix}{sid}")
            assert described.get("DeletedDate") is not None
            assert await restarted.get(sid) is None
        finally:
            await restarted.close()


async def test_after_a_complete_listing_a_new_entry_is_one_create(
    moto_server: str, aws_prefix: str, moto: Any
) -> None:
    """Once a full listing showed every entry, writing a new one is a single CreateSecret."""
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]))
    store = AwsStore(AwsStoreSettings(**aws_settings(moto_server, aws_prefix)), ctx)
    await store.open()
    try:
        existing, new = str(uuid.uuid4()), str(uuid.uuid4())
        values = {"k": "v"}
        await store.put(existing, 3, values, content_hash(b"k" * 32, existing, canonical(values)))
        restarted = AwsStore(AwsStoreSettings(**aws_settings(moto_server, aws_prefix)), ctx)
        await restarted.open()
        try:
            assert [e.secret_id async for e in restarted.list()] == [existing]
            mark = moto.mark()
            h = content_hash(b"k" * 32, new, canonical(values))
            assert await restarted.put(new, 4, values, h) is PutOutcome.WRITTEN
            assert moto.operations(mark, aws_prefix) == ["CreateSecret"]
            # An entry the listing showed is still fenced: an older version changes nothing.
            mark = moto.mark()
            h_old = content_hash(b"k" * 32, existing, canonical(values))
            assert await restarted.put(existing, 2, values, h_old) is PutOutcome.UNCHANGED
            assert moto.operations(mark, aws_prefix) == []
        finally:
            await restarted.close()
    finally:
        await store.close()
