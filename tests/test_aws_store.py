"""The aws store's own behaviour on a real moto server, its error mapping and its rate limiter.

Counts of AWS calls come from moto's request recording (``MotoServer.operations``),
filtered by the test's name prefix or deployment id.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiobotocore.session import AioSession
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from secretmirror.crypto import Keyring, content_hash
from secretmirror.errors import (
    ConfigError,
    StoreContended,
    StoreError,
    StoreForeignEntry,
    StoreNotFound,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
    may_have_landed,
)
from secretmirror.model import canonical
from secretmirror.ratelimit import KeyedLock, TokenBucket
from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.aws import (
    MAX_VALUE_BYTES,
    TAG_DEPLOYMENT,
    TAG_MANAGED,
    TAG_TOMBSTONE,
    AwsStore,
    make_token,
    map_error,
    parse_token,
)
from secretmirror.stores.base import Entry, PutOutcome, StoreContext
from tests.faultproxy import FaultProxy
from tests.moto import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, aws_settings

HASH_KEY = secrets.token_bytes(32)
ROLE_ACCOUNT = "111111111111"

OpenStore = Callable[..., AbstractAsyncContextManager[AwsStore]]


def _hash(secret_id: str, values: dict[str, str]) -> str:
    return content_hash(HASH_KEY, secret_id, canonical(values))


def _sid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def ctx() -> StoreContext:
    return StoreContext(deployment_id=str(uuid.uuid4()), keyring=Keyring([secrets.token_bytes(32)]))


@pytest.fixture
def open_store(
    moto_server: str, aws_prefix: str, ctx: StoreContext
) -> Callable[..., AbstractAsyncContextManager[AwsStore]]:
    """Open an aws store on moto (this test's prefix and deployment; settings overridable).

    Each call is a separate store instance, like a second daemon process.
    """

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[AwsStore]:
        fields = aws_settings(moto_server, aws_prefix, max_writes_per_s=1000)
        fields.update(overrides)
        store = AwsStore(AwsStoreSettings(**fields), ctx)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    return make


@pytest.fixture
async def store(open_store: OpenStore) -> AsyncIterator[AwsStore]:
    async with open_store() as opened:
        yield opened


@pytest.fixture
async def raw(moto_server: str) -> AsyncIterator[Any]:
    """A plain Secrets Manager client on moto: the console, another tool, the test's eyes."""
    async with AioSession().create_client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        yield client


async def _put(store: AwsStore, sid: str, version: int, values: dict[str, str]) -> PutOutcome:
    return await store.put(sid, version, values, _hash(sid, values))


async def _listed(store: AwsStore) -> dict[str, Entry]:
    return {entry.secret_id: entry async for entry in store.list()}


async def _current_id(raw: Any, name: str) -> str:
    described = await raw.describe_secret(SecretId=name)
    return next(
        vid for vid, labels in described["VersionIdsToStages"].items() if "AWSCURRENT" in labels
    )


# -- request tokens --


def test_token_encodes_version_and_hash() -> None:
    """The request token carries the version and the full content hash, within AWS's 32-64."""
    token = make_token(42, "0123456789abcdef0123456789abcdef")
    assert 32 <= len(token) <= 64
    assert parse_token(token) == (42, "0123456789abcdef0123456789abcdef")


def test_a_version_past_the_token_is_refused() -> None:
    """The token has ten digits for the version: one beyond is rejected, never truncated
    into another version's token."""
    hash_ = "0123456789abcdef0123456789abcdef"
    assert parse_token(make_token(9_999_999_999, hash_)) == (9_999_999_999, hash_)
    with pytest.raises(StoreRejected, match="does not fit"):
        make_token(10_000_000_000, hash_)


def test_foreign_version_ids_do_not_parse() -> None:
    """A VersionId AWS generated (a UUID) is not taken for secretmirror's."""
    assert parse_token(str(uuid.uuid4())) is None


async def test_version_id_is_the_request_token(store: AwsStore, raw: Any, aws_prefix: str) -> None:
    """The AWSCURRENT VersionId of a written entry is its secretmirror token."""
    sid, values = _sid(), {"a": "1"}
    await _put(store, sid, 7, values)
    assert await _current_id(raw, aws_prefix + sid) == make_token(7, _hash(sid, values))


async def test_list_reads_versions_without_reading_values(
    open_store: OpenStore, moto: MotoServer, ctx: StoreContext, aws_prefix: str
) -> None:
    """A fresh store lists version and hash from ListSecrets alone, reading no value."""
    sid, values = _sid(), {"a": "1"}
    async with open_store() as writer:
        await _put(writer, sid, 7, values)
    mark = moto.mark()
    async with open_store() as reader:
        listed = await _listed(reader)
    assert listed[sid] == Entry(sid, 7, _hash(sid, values))
    assert moto.operations(mark, ctx.deployment_id) == ["ListSecrets"]
    assert moto.operations(mark, aws_prefix) == []


async def test_list_pages_through_every_entry(store: AwsStore) -> None:
    """Listing follows ListSecrets pages past the first 100 entries."""
    sids = {_sid() for _ in range(101)}
    for sid in sids:
        await _put(store, sid, 1, {"k": "v"})
    assert set(await _listed(store)) == sids


# -- calls per operation --


async def test_first_put_is_describe_then_create(
    store: AwsStore, moto: MotoServer, aws_prefix: str
) -> None:
    """The first write of a new entry costs a DescribeSecret and a CreateSecret."""
    mark = moto.mark()
    assert await _put(store, _sid(), 1, {"a": "1"}) is PutOutcome.WRITTEN
    assert moto.operations(mark, aws_prefix) == ["DescribeSecret", "CreateSecret"]


async def test_steady_state_put_is_one_call(
    store: AwsStore, moto: MotoServer, aws_prefix: str
) -> None:
    """A put to an entry the store already knows is one PutSecretValue."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    mark = moto.mark()
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.WRITTEN
    assert moto.operations(mark, aws_prefix) == ["PutSecretValue"]


async def test_known_redelivery_makes_no_call(
    store: AwsStore, moto: MotoServer, aws_prefix: str
) -> None:
    """Redelivering the version the store knows AWS holds sends nothing."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    mark = moto.mark()
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    assert moto.operations(mark, aws_prefix) == []


async def test_get_checks_ownership_only_of_a_value_it_does_not_know(
    open_store: OpenStore, moto: MotoServer, aws_prefix: str
) -> None:
    """A get of the value the store wrote is one GetSecretValue; any other value it serves
    only after DescribeSecret showed the entry's ownership tags."""
    sid = _sid()
    async with open_store() as first, open_store() as second:
        await _put(first, sid, 1, {"a": "1"})
        mark = moto.mark()
        assert await first.get(sid) is not None
        assert moto.operations(mark, aws_prefix) == ["GetSecretValue"]
        mark = moto.mark()
        assert await second.get(sid) is not None
        assert moto.operations(mark, aws_prefix) == ["GetSecretValue", "DescribeSecret"]


async def test_racing_redelivery_creates_no_aws_version(
    open_store: OpenStore, raw: Any, moto: MotoServer, aws_prefix: str
) -> None:
    """Two processes writing the same version reach AWS twice but leave one AWS version."""
    sid = _sid()
    async with open_store() as first, open_store() as second:
        await _put(first, sid, 1, {"a": "1"})
        await _listed(second)  # second now believes AWS holds version 1
        await _put(first, sid, 2, {"a": "2"})
        mark = moto.mark()
        await _put(second, sid, 2, {"a": "2"})
    assert moto.operations(mark, aws_prefix) == ["PutSecretValue"]
    versions = await raw.list_secret_version_ids(SecretId=aws_prefix + sid, IncludeDeprecated=True)
    assert len(versions["Versions"]) == 2


# -- ownership --


async def test_create_tags_the_entry(
    store: AwsStore, raw: Any, ctx: StoreContext, aws_prefix: str
) -> None:
    """A created entry carries the managed and deployment tags."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    described = await raw.describe_secret(SecretId=aws_prefix + sid)
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert (tags[TAG_MANAGED], tags[TAG_DEPLOYMENT]) == ("true", ctx.deployment_id)


async def test_other_deployments_entry_is_not_written(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """An entry managed by another deployment is as untouchable as an unmanaged one."""
    sid = _sid()
    tags = [{"Key": TAG_MANAGED, "Value": "true"}, {"Key": TAG_DEPLOYMENT, "Value": "other"}]
    await raw.create_secret(Name=aws_prefix + sid, SecretString="theirs", Tags=tags)
    with pytest.raises(StoreForeignEntry):
        await _put(store, sid, 1, {"a": "mine"})


async def test_unmanaged_secrets_are_not_listed(store: AwsStore, raw: Any, aws_prefix: str) -> None:
    """Listing shows this deployment's entries only, not look-alikes under the same prefix."""
    mine = _sid()
    await _put(store, mine, 1, {"a": "1"})
    await raw.create_secret(Name=aws_prefix + _sid(), SecretString="no tags")
    other = [{"Key": TAG_MANAGED, "Value": "true"}, {"Key": TAG_DEPLOYMENT, "Value": "other"}]
    await raw.create_secret(Name=aws_prefix + _sid(), SecretString="other", Tags=other)
    assert list(await _listed(store)) == [mine]


# -- values changed behind secretmirror's back --


async def test_foreign_write_is_listed(store: AwsStore, raw: Any, aws_prefix: str) -> None:
    """A value written by someone else is listed with foreign_write and no hash."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await raw.put_secret_value(SecretId=aws_prefix + sid, SecretString='{"a":"console"}')
    assert (await _listed(store))[sid] == Entry(sid, 1, None, foreign_write=True)


async def test_foreign_value_is_not_served(store: AwsStore, raw: Any, aws_prefix: str) -> None:
    """A read of an entry someone else overwrote finds no secretmirror version."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await raw.put_secret_value(SecretId=aws_prefix + sid, SecretString='{"a":"console"}')
    assert await store.get(sid) is None


async def test_repair_of_foreign_write_moves_the_label_back(
    store: AwsStore, raw: Any, moto: MotoServer, aws_prefix: str
) -> None:
    """Re-putting the version after a foreign write (as repair does) makes it current again."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await raw.put_secret_value(SecretId=aws_prefix + sid, SecretString='{"a":"console"}')
    await _listed(store)  # verify runs first and sees the foreign write
    mark = moto.mark()
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (1, {"a": "1"})
    assert "UpdateSecretVersionStage" in moto.operations(mark, aws_prefix)


async def test_console_rollback_is_listed_as_older(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """AWSCURRENT moved back to an older secretmirror version lists as that older version."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await _put(store, sid, 2, {"a": "2"})
    name = aws_prefix + sid
    await raw.update_secret_version_stage(
        SecretId=name,
        VersionStage="AWSCURRENT",
        MoveToVersionId=make_token(1, _hash(sid, {"a": "1"})),
        RemoveFromVersionId=make_token(2, _hash(sid, {"a": "2"})),
    )
    assert (await _listed(store))[sid].version == 1


async def test_put_after_console_rollback_restores_newest(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """After a rollback seen by a listing, putting the newest version makes it current again."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await _put(store, sid, 2, {"a": "2"})
    await raw.update_secret_version_stage(
        SecretId=aws_prefix + sid,
        VersionStage="AWSCURRENT",
        MoveToVersionId=make_token(1, _hash(sid, {"a": "1"})),
        RemoveFromVersionId=make_token(2, _hash(sid, {"a": "2"})),
    )
    await _listed(store)
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert got.version == 2


async def test_entry_purged_behind_our_back_is_written_again_after_a_listing(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """Once a full listing no longer shows an entry, repairing it writes it again."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await raw.delete_secret(SecretId=aws_prefix + sid, ForceDeleteWithoutRecovery=True)
    assert sid not in await _listed(store)
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.WRITTEN
    assert await store.get(sid) is not None


async def test_entry_purged_behind_our_back_is_written_again_after_a_read(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """A read that finds the entry gone makes the next put write it again."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await raw.delete_secret(SecretId=aws_prefix + sid, ForceDeleteWithoutRecovery=True)
    assert await store.get(sid) is None
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.WRITTEN
    assert await store.get(sid) is not None


# -- limits --


async def test_oversized_value_rejected_before_any_call(
    store: AwsStore, moto: MotoServer, aws_prefix: str
) -> None:
    """Values over 64 KiB of canonical JSON are refused without asking AWS."""
    values = {"k": "x" * (MAX_VALUE_BYTES - len('{"k":""}') + 1)}
    mark = moto.mark()
    with pytest.raises(StoreRejected):
        await _put(store, _sid(), 1, values)
    assert moto.operations(mark, aws_prefix) == []


async def test_invalid_name_rejected_before_any_call(
    store: AwsStore, moto: MotoServer, aws_prefix: str
) -> None:
    """A secret id that makes no valid AWS name is refused without asking AWS."""
    mark = moto.mark()
    with pytest.raises(StoreRejected):
        await _put(store, "not valid!", 1, {"a": "1"})
    assert moto.operations(mark, aws_prefix) == []


def test_store_reports_aws_size_limit(ctx: StoreContext) -> None:
    """The store caps values at AWS's 64 KiB."""
    assert AwsStore(AwsStoreSettings(), ctx).max_value_bytes == 65536


# -- deletes and tombstones --


async def test_delete_tags_tombstone_and_schedules_deletion(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """A delete records its version in a tag and schedules the entry for deletion."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await store.delete(sid, 2)
    described = await raw.describe_secret(SecretId=aws_prefix + sid)
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags[TAG_TOMBSTONE] == "2"
    assert described.get("DeletedDate") is not None


async def test_recovery_window_is_passed(open_store: OpenStore, raw: Any, aws_prefix: str) -> None:
    """The configured recovery window sets when AWS will purge the entry."""
    sid = _sid()
    async with open_store(recovery_window_days=10) as store:
        await _put(store, sid, 1, {"a": "1"})
        await store.delete(sid, 2)
    described = await raw.describe_secret(SecretId=aws_prefix + sid)
    expected = datetime.now(UTC) + timedelta(days=10)
    assert abs(described["DeletedDate"] - expected) < timedelta(hours=1)


async def _half_deleted(store: AwsStore, raw: Any, name: str, sid: str) -> None:
    """What a crash between a delete's TagResource and DeleteSecret leaves behind."""
    await _put(store, sid, 1, {"a": "1"})
    await raw.tag_resource(SecretId=name, Tags=[{"Key": TAG_TOMBSTONE, "Value": "2"}])


async def test_interrupted_delete_is_finished_on_redelivery(
    open_store: OpenStore, raw: Any, aws_prefix: str
) -> None:
    """A delete that stopped after tagging the tombstone is completed when delivered again."""
    sid = _sid()
    async with open_store() as first:
        await _half_deleted(first, raw, aws_prefix + sid, sid)
    async with open_store() as second:
        await second.delete(sid, 2)
    described = await raw.describe_secret(SecretId=aws_prefix + sid)
    assert described.get("DeletedDate") is not None


async def test_interrupted_delete_lists_as_tombstone(
    open_store: OpenStore, raw: Any, aws_prefix: str
) -> None:
    """An entry tagged by an unfinished delete lists as deleted at the tombstone version."""
    sid = _sid()
    async with open_store() as first:
        await _half_deleted(first, raw, aws_prefix + sid, sid)
    async with open_store() as second:
        assert (await _listed(second))[sid] == Entry(sid, 2, None, deleted=True)


async def test_newer_put_restores_pending_deletion(
    store: AwsStore, raw: Any, moto: MotoServer, aws_prefix: str
) -> None:
    """A newer put to an entry pending deletion restores it first (AWS refuses writes there)."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await store.delete(sid, 2)
    mark = moto.mark()
    await _put(store, sid, 3, {"a": "3"})
    assert moto.operations(mark, aws_prefix) == ["RestoreSecret", "PutSecretValue"]
    described = await raw.describe_secret(SecretId=aws_prefix + sid)
    assert described.get("DeletedDate") is None


async def test_a_console_delete_lists_as_missing_and_a_put_restores_it(
    store: AwsStore, raw: Any, aws_prefix: str
) -> None:
    """A delete made in the console (a recovery window, no tombstone tag of ours) is drift:
    it lists below the version the entry held, so verify counts it missing rather than a
    tombstone left on purpose, and a put of that version restores the entry."""
    sid = _sid()
    await _put(store, sid, 2, {"a": "2"})
    await raw.delete_secret(SecretId=aws_prefix + sid, RecoveryWindowInDays=7)
    entry = (await _listed(store))[sid]
    assert (entry.deleted, entry.version) == (True, 0)
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (2, {"a": "2"})
    assert (await _listed(store))[sid] == Entry(sid, 2, _hash(sid, {"a": "2"}))


async def test_force_delete_without_recovery_window(
    open_store: OpenStore, raw: Any, aws_prefix: str
) -> None:
    """recovery_window_days = 0 deletes at once, without a recovery window."""
    sid = _sid()
    async with open_store(recovery_window_days=0) as store:
        await _put(store, sid, 1, {"a": "1"})
        await store.delete(sid, 2)
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        await raw.describe_secret(SecretId=aws_prefix + sid)


@pytest.mark.parametrize("read_between", [False, True])
async def test_force_deleted_entry_is_not_revived_by_a_late_put(
    open_store: OpenStore, raw: Any, aws_prefix: str, read_between: bool
) -> None:
    """After a force delete, the same process refuses a late older put, also after a read
    that found nothing (it keeps the tombstone only this process holds)."""
    sid = _sid()
    async with open_store(recovery_window_days=0) as store:
        await _put(store, sid, 1, {"a": "1"})
        await store.delete(sid, 2)
        if read_between:
            assert await store.get(sid) is None
        assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        await raw.describe_secret(SecretId=aws_prefix + sid)


async def test_kms_key_is_passed_on_create(
    open_store: OpenStore, raw: Any, aws_prefix: str
) -> None:
    """A configured kms_key_id encrypts the entries the store creates."""
    sid = _sid()
    async with open_store(kms_key_id="alias/secretmirror") as store:
        await _put(store, sid, 1, {"a": "1"})
    described = await raw.describe_secret(SecretId=aws_prefix + sid)
    assert described["KmsKeyId"] == "alias/secretmirror"


# -- authentication, configuration, reachability --


async def test_iam_role_auth_writes_as_the_role(
    open_store: OpenStore, raw: Any, moto_server: str, aws_prefix: str
) -> None:
    """iam-role assumes the role through STS and writes with its credentials (its account)."""
    sid = _sid()
    role_arn = f"arn:aws:iam::{ROLE_ACCOUNT}:role/secretmirror"
    async with open_store(auth_method="iam-role", role_arn=role_arn) as store:
        await _put(store, sid, 1, {"a": "1"})
        got = await store.get(sid)
    assert got is not None
    assert got.values == {"a": "1"}
    session = AioSession()
    async with session.create_client(
        "sts",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as sts:
        creds = (await sts.assume_role(RoleArn=role_arn, RoleSessionName="test"))["Credentials"]
    async with session.create_client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ) as as_role:
        described = await as_role.describe_secret(SecretId=aws_prefix + sid)
    assert f":{ROLE_ACCOUNT}:" in described["ARN"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"auth_method": "iam-role"}, "role_arn"),
        ({"auth_method": "secret-key", "aws_access_key_id": None}, "aws_access_key_id"),
        ({"auth_method": "sts-token"}, "aws_session_token"),
        ({"recovery_window_days": 3}, "recovery_window_days"),
    ],
)
def test_incomplete_settings_are_refused(
    ctx: StoreContext, overrides: dict[str, Any], field: str
) -> None:
    """Settings AWS would refuse at the first request stop the store from being built."""
    fields = aws_settings("http://127.0.0.1:1", "p/")
    fields.update(overrides)
    with pytest.raises(ConfigError, match=field):
        AwsStore(AwsStoreSettings(**fields), ctx)


def test_location_names_endpoint_region_and_prefix(ctx: StoreContext) -> None:
    """The location is the endpoint (or aws), the region and the name prefix."""
    default = AwsStore(AwsStoreSettings(region="eu-west-1"), ctx)
    local = AwsStore(AwsStoreSettings(**aws_settings("http://127.0.0.1:9", "p/")), ctx)
    assert default.location == "aws:aws/eu-west-1/secretmirror/"
    assert local.location == "aws:http://127.0.0.1:9/us-east-1/p/"


async def test_reset_connection_is_unavailable(open_store: OpenStore, moto_server: str) -> None:
    """A connection reset by the network is StoreUnavailable."""
    port = int(moto_server.rpartition(":")[2])
    async with (
        FaultProxy("127.0.0.1", port) as proxy,
        open_store(endpoint_url=proxy.url) as store,
    ):
        await proxy.reset()
        with pytest.raises(StoreUnavailable):
            await store.get(_sid())


async def test_store_recovers_when_the_network_does(
    open_store: OpenStore, moto_server: str
) -> None:
    """After an outage the same store instance works again without reopening."""
    port = int(moto_server.rpartition(":")[2])
    async with (
        FaultProxy("127.0.0.1", port) as proxy,
        open_store(endpoint_url=proxy.url) as store,
    ):
        await proxy.down()
        with pytest.raises(StoreUnavailable):
            await store.health()
        await proxy.pass_through()
        await store.health()


async def test_write_that_timed_out_is_not_trusted(open_store: OpenStore, moto_server: str) -> None:
    """A put cancelled after AWS applied it leaves no stale belief: a late older put is refused."""
    sid = _sid()
    port = int(moto_server.rpartition(":")[2])
    async with (
        FaultProxy("127.0.0.1", port) as proxy,
        open_store(endpoint_url=proxy.url) as store,
    ):
        await _put(store, sid, 1, {"a": "1"})
        # AWS applies the write; its answer is late. The caller gives up well after the
        # request is out (a loaded machine may take a while to sign and send it).
        await proxy.latency(6, "downstream")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_put(store, sid, 3, {"a": "3"}), 2)
        await proxy.pass_through()
        assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.UNCHANGED
        got = await store.get(sid)
    assert got is not None
    assert got.version == 3


# -- error mapping --


def _client_error(
    code: str, status: int = 400, headers: dict[str, str] | None = None
) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "echoes secret-canary-value"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        "PutSecretValue",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("ThrottlingException"), StoreThrottled),
        (_client_error("TooManyRequestsException", 429), StoreThrottled),
        (_client_error("SomethingNew", 429), StoreThrottled),
        (_client_error("InternalServiceError", 500), StoreUnavailable),
        (_client_error("SomethingNew", 503), StoreUnavailable),
        (_client_error("AccessDeniedException"), StoreUnavailable),
        (_client_error("ExpiredTokenException"), StoreUnavailable),
        (_client_error("UnrecognizedClientException"), StoreUnavailable),
        (_client_error("ValidationException"), StoreRejected),
        (_client_error("InvalidParameterException"), StoreRejected),
        (_client_error("InvalidRequestException"), StoreRejected),
        (_client_error("LimitExceededException"), StoreRejected),
        (_client_error("ResourceNotFoundException"), StoreNotFound),
        (_client_error("ResourceExistsException"), StoreContended),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StoreUnavailable),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), StoreUnavailable),
        (NoCredentialsError(), StoreUnavailable),
        (ParamValidationError(report="bad"), StoreRejected),
        (TimeoutError(), StoreUnavailable),
    ],
)
def test_aws_failures_map_to_store_errors(error: Exception, expected: type[StoreError]) -> None:
    """Each AWS failure becomes the store error the replicator acts on."""
    assert type(map_error(error, "PutSecretValue")) is expected


@pytest.mark.parametrize(
    ("status", "retries", "settled"),
    [(503, 0, True), (500, 0, True), (503, 1, False), (504, 0, False), (502, 0, False)],
)
def test_an_answer_to_the_only_attempt_cannot_land_later(
    status: int, retries: int, settled: bool
) -> None:
    """AWS's own 5xx answer ends the request, so the delivery need not hold its lease for a
    late landing; after botocore's retry an earlier attempt (a read timeout) still may, and a
    gateway's timeout ends nothing."""
    error = _client_error("SomethingNew", status)
    error.response["ResponseMetadata"]["RetryAttempts"] = retries
    mapped = map_error(error, "PutSecretValue")
    assert isinstance(mapped, StoreUnavailable)
    assert may_have_landed(mapped) is not settled
    assert may_have_landed(map_error(ReadTimeoutError(endpoint_url="http://x"), "Put"))


def test_throttling_defaults_to_one_second() -> None:
    """Without a Retry-After header a throttled call is retried after a second (quota refill)."""
    mapped = map_error(_client_error("ThrottlingException"), "PutSecretValue")
    assert isinstance(mapped, StoreThrottled)
    assert mapped.retry_after_s == 1.0


def test_throttling_honours_retry_after() -> None:
    """A Retry-After header sets the retry delay."""
    mapped = map_error(_client_error("ThrottlingException", 429, {"retry-after": "7"}), "Put")
    assert isinstance(mapped, StoreThrottled)
    assert mapped.retry_after_s == 7.0


def test_error_messages_omit_aws_text() -> None:
    """Mapped errors name the operation and code but never repeat AWS's message text."""
    message = map_error(_client_error("ValidationException"), "PutSecretValue").message
    assert "PutSecretValue" in message
    assert "ValidationException" in message
    assert "canary" not in message


# -- the write-rate limiter --


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_paces_a_burst_to_the_rate() -> None:
    """Reservations made at once are spread so no one-second window exceeds the rate."""
    clock = _Clock()
    bucket = TokenBucket(40, clock=clock)
    starts = [clock.now + bucket.reserve() for _ in range(200)]
    worst = max(sum(1 for s in starts if t <= s < t + 1) for t in starts)
    assert worst == 40


def test_bucket_sustains_the_rate() -> None:
    """Paced reservations complete at the configured rate, not slower."""
    clock = _Clock()
    bucket = TokenBucket(40, clock=clock)
    last = max(clock.now + bucket.reserve() for _ in range(81))
    assert last - clock.now == pytest.approx(2.0)


def test_idle_bucket_serves_at_once() -> None:
    """After a pause the next reservation needs no wait."""
    clock = _Clock()
    bucket = TokenBucket(10, clock=clock)
    for _ in range(5):
        bucket.reserve()
    clock.now += 10
    assert bucket.reserve() == 0


def test_bucket_burst_allows_that_many_at_once() -> None:
    """With a burst of n, the first n reservations need no wait."""
    clock = _Clock()
    bucket = TokenBucket(10, burst=5, clock=clock)
    waits = [bucket.reserve() for _ in range(6)]
    assert waits[:5] == [0, 0, 0, 0, 0]
    assert waits[5] == pytest.approx(0.1)


async def test_store_writes_are_paced(open_store: OpenStore) -> None:
    """Every write of a store takes a slot of its max_writes_per_s bucket."""
    async with open_store(max_writes_per_s=4) as store:
        started = time.monotonic()
        await asyncio.gather(*(_put(store, _sid(), 1, {"a": "1"}) for _ in range(5)))
        elapsed = time.monotonic() - started
    assert elapsed >= 1.0  # 5 creates at 4/s: the fifth waits a full second


async def test_keyed_lock_serializes_one_key() -> None:
    """Holders of the same key run one at a time."""
    locks, inside, most = KeyedLock(), 0, 0

    async def hold() -> None:
        nonlocal inside, most
        async with locks.hold("k"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(hold() for _ in range(10)))
    assert (most, len(locks)) == (1, 0)


async def test_keyed_lock_does_not_block_other_keys() -> None:
    """A held key does not delay another key."""
    locks = KeyedLock()
    async with locks.hold("a"):
        await asyncio.wait_for(_enter(locks, "b"), 1)


async def _enter(locks: KeyedLock, key: str) -> None:
    async with locks.hold(key):
        return


async def test_the_fake_lists_while_others_create(raw: Any, moto: Any, aws_prefix: str) -> None:
    """AWS answers a ListSecrets while CreateSecrets land; moto's own server answered 500
    ("dictionary changed size during iteration"), which failed a backup job in CI. The
    session's server takes one request at a time (tests/moto_one_at_a_time.py)."""
    for n in range(0, 600, 6):  # a listing long enough to be interleaved with creates
        await asyncio.gather(
            *(
                raw.create_secret(Name=f"{aws_prefix}seed-{m}", SecretString="x")
                for m in range(n, n + 6)
            )
        )
    errors_before = moto.server_errors()
    stop = asyncio.Event()

    async def create(worker: int) -> int:
        made = 0
        while not stop.is_set():
            await raw.create_secret(Name=f"{aws_prefix}race-{worker}-{made}", SecretString="x")
            made += 1
        return made

    async def list_all() -> None:
        for _ in range(15):
            pages = raw.get_paginator("list_secrets").paginate(PaginationConfig={"PageSize": 100})
            async for _page in pages:
                pass

    creators = [asyncio.create_task(create(w)) for w in range(4)]
    try:
        await asyncio.gather(list_all(), list_all())
    finally:
        stop.set()
        made = await asyncio.gather(*creators)
    assert sum(made) > 0
    assert moto.server_errors() == errors_before
