"""The aws store finishes work a crash interrupted, against the real moto server."""

from __future__ import annotations

import secrets
import uuid

from aiobotocore.session import get_session

from secretmirror.crypto import Keyring, content_hash
from secretmirror.model import canonical
from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.aws import TAG_TOMBSTONE, AwsStore
from secretmirror.stores.base import StoreContext
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
