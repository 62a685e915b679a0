"""The ``azure`` store against the Key Vault fake: calls per operation, what Key Vault holds,
soft delete and recovery, ownership, hand-made changes, errors, auth and pacing.

The generic behaviour (fencing, tombstones, listing) is the contract suite's
(``tests/test_store_contract.py``); these tests check what is Azure's own.
Calls are counted by the fake, per name prefix.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from secretmirror.crypto import Keyring, content_hash
from secretmirror.errors import (
    ConfigError,
    StoreForeignEntry,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
)
from secretmirror.model import canonical
from secretmirror.settings import AzureStoreSettings
from secretmirror.stores.azure import (
    MAX_VALUE_BYTES,
    TAG_DEPLOYMENT,
    TAG_HASH,
    TAG_TOMBSTONE,
    TAG_VERSION,
    AzureStore,
    _Challenge,
)
from secretmirror.stores.base import PutOutcome, StoreContext
from tests.azurefake import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    AzureFake,
    azure_settings,
    sdk_client,
)
from tests.conftest import Api
from tests.stores.azure import azure_store

HASH_KEY = secrets.token_bytes(32)


def _hash(secret_id: str, values: dict[str, str]) -> str:
    return content_hash(HASH_KEY, secret_id, canonical(values))


@pytest.fixture
def ctx() -> StoreContext:
    """A deployment's context as the daemon builds it (its content hash included)."""
    return StoreContext(
        deployment_id=str(uuid.uuid4()),
        keyring=Keyring([os.urandom(32)]),
        content_hash=functools.partial(content_hash, HASH_KEY),
    )


@pytest.fixture
async def store(
    azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str
) -> AsyncIterator[AzureStore]:
    opened = azure_store(azure_fake, ctx, azure_prefix)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def fresh(
    azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str
) -> AsyncIterator[AzureStore]:
    """A second store of the same deployment: a restarted process that knows nothing yet."""
    opened = azure_store(azure_fake, ctx, azure_prefix)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sdk(azure_fake: AzureFake) -> AsyncIterator[Any]:
    async with sdk_client(azure_fake, retry_total=0) as client:
        yield client


async def put(store: AzureStore, sid: str, version: int, values: dict[str, str]) -> PutOutcome:
    return await store.put(sid, version, values, _hash(sid, values))


def sid() -> str:
    return str(uuid.uuid4())


async def versions_of(sdk: Any, name: str) -> int:
    return len([v async for v in sdk.list_properties_of_secret_versions(name)])


# -- calls per operation -------------------------------------------------------------------


async def test_steady_state_put_is_one_set(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """A put to an entry this process wrote before costs exactly one set."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    mark = azure_fake.mark()
    assert await put(store, secret, 2, {"a": "2"}) is PutOutcome.WRITTEN
    assert azure_fake.calls(mark, azure_prefix) == ["set"]


async def test_first_write_of_a_new_entry_is_a_get_and_a_set(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """A new name costs one read (404) and one set."""
    mark = azure_fake.mark()
    await put(store, sid(), 1, {"a": "1"})
    assert azure_fake.calls(mark, azure_prefix) == ["get", "set"]


async def test_first_touch_after_a_restart_reads_then_sets(
    store: AzureStore, fresh: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """A process that does not know the entry reads its latest version once, then sets."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    mark = azure_fake.mark()
    await put(fresh, secret, 2, {"a": "2"})
    assert azure_fake.calls(mark, azure_prefix) == ["get", "set"]


async def test_redelivery_of_a_known_version_costs_no_call(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """Putting the version this process just wrote sends nothing."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    mark = azure_fake.mark()
    assert await put(store, secret, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    assert azure_fake.calls(mark, azure_prefix) == []


async def test_redelivery_after_a_restart_adds_no_key_vault_version(
    store: AzureStore, fresh: AzureStore, azure_fake: AzureFake, azure_prefix: str, sdk: Any
) -> None:
    """A redelivery to a process that forgot everything costs one read and adds no version."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    mark = azure_fake.mark()
    assert await put(fresh, secret, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    assert azure_fake.calls(mark, azure_prefix) == ["get"]
    assert await versions_of(sdk, f"{azure_prefix}{secret}") == 1


async def test_get_is_one_read(store: AzureStore, azure_fake: AzureFake, azure_prefix: str) -> None:
    """A read costs one get of the latest version."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    mark = azure_fake.mark()
    assert await store.get(secret) is not None
    assert azure_fake.calls(mark, azure_prefix) == ["get"]


# -- what Key Vault holds ------------------------------------------------------------------


async def test_entry_is_canonical_json_with_tags(
    store: AzureStore, ctx: StoreContext, azure_prefix: str, sdk: Any
) -> None:
    """The value is canonical JSON typed application/json, tagged deployment, version, hash."""
    secret, values = sid(), {"b": "2", "a": "ü"}
    await put(store, secret, 7, values)
    held = await sdk.get_secret(f"{azure_prefix}{secret}")
    assert held.value == canonical(values).decode()
    assert held.properties.content_type == "application/json"
    assert held.properties.tags == {
        TAG_DEPLOYMENT: ctx.deployment_id,
        TAG_VERSION: "7",
        TAG_HASH: _hash(secret, values),
    }


async def test_each_version_is_one_key_vault_version(
    store: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """Three secretmirror versions make three Key Vault versions, redeliveries none."""
    secret = sid()
    for version in (1, 2, 2, 3, 1):
        await put(store, secret, version, {"v": str(version)})
    assert await versions_of(sdk, f"{azure_prefix}{secret}") == 3


async def test_operator_tags_are_carried_to_new_versions(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """A tag an operator put on the entry survives secretmirror's next write."""
    secret = sid()
    name = f"{azure_prefix}{secret}"
    await put(store, secret, 1, {"a": "1"})
    tags = (await sdk.get_secret(name)).properties.tags
    await sdk.update_secret_properties(name, tags={**tags, "owner": "team-x"})
    await put(fresh, secret, 2, {"a": "2"})
    assert (await sdk.get_secret(name)).properties.tags["owner"] == "team-x"


async def test_oversized_values_are_rejected_before_any_call(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """Values over Key Vault's 25k bytes are refused without a request."""
    values = {"k": "x" * MAX_VALUE_BYTES}
    mark = azure_fake.mark()
    with pytest.raises(StoreRejected, match="25000"):
        await put(store, sid(), 1, values)
    assert azure_fake.calls(mark, azure_prefix) == []


def test_size_cap_and_location(store: AzureStore, azure_fake: AzureFake, azure_prefix: str) -> None:
    """The store caps values at 25,000 bytes and is located at its vault and prefix."""
    assert store.max_value_bytes == 25_000
    assert store.location == f"azure:{azure_fake.url}/{azure_prefix}"


@pytest.fixture
def settings_overrides(azure_fake: AzureFake, azure_prefix: str) -> dict[str, Any]:
    """An azure backup for the in-process API (no request reaches it in these tests)."""
    return {"backup": {"type": "azure", **azure_settings(azure_fake, azure_prefix)}}


async def test_the_api_refuses_values_over_key_vaults_limit(api: Api) -> None:
    """With an azure store configured, the effective size cap is Key Vault's 25,000 bytes."""
    fits = {"k": "x" * (MAX_VALUE_BYTES - len(canonical({"k": ""})))}
    over = {"k": "x" * (MAX_VALUE_BYTES - len(canonical({"k": ""})) + 1)}
    status, body, _ = await api.request(
        "POST", "/api/v1/secrets", json={"name": "over", "values": over}
    )
    assert status == 413, body
    status, body, _ = await api.request(
        "POST", "/api/v1/secrets", json={"name": "fits", "values": fits}
    )
    assert status == 201, body


async def test_a_secret_id_that_makes_no_valid_name_is_rejected(store: AzureStore) -> None:
    """Ids with characters Key Vault names cannot hold are refused; reading them finds nothing."""
    with pytest.raises(StoreRejected, match="letters, digits and dashes"):
        await put(store, "not_valid.id", 1, {"a": "1"})
    assert await store.get("not_valid.id") is None


# -- soft delete and recovery ------------------------------------------------------------------


async def test_delete_tags_the_tombstone_then_soft_deletes(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str, sdk: Any
) -> None:
    """A delete tags the latest version with its version, then soft-deletes: two writes."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    mark = azure_fake.mark()
    await store.delete(secret, 2)
    assert azure_fake.calls(mark, azure_prefix) == ["update", "delete"]
    deleted = await sdk.get_deleted_secret(f"{azure_prefix}{secret}")
    assert deleted.properties.tags[TAG_TOMBSTONE] == "2"


async def test_newer_put_recovers_a_soft_deleted_entry(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str, sdk: Any
) -> None:
    """A version newer than the tombstone recovers the entry, then sets it."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    await store.delete(secret, 2)
    mark = azure_fake.mark()
    assert await put(store, secret, 3, {"a": "back"}) is PutOutcome.WRITTEN
    assert azure_fake.calls(mark, azure_prefix) == ["recover", "set"]
    held = await sdk.get_secret(f"{azure_prefix}{secret}")
    assert (held.value, held.properties.tags[TAG_VERSION]) == ('{"a":"back"}', "3")


async def test_a_restarted_store_recovers_on_key_vaults_conflict(
    store: AzureStore, fresh: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """Unknown entry: the set meets 409 ObjectIsDeletedButRecoverable: read, recover, set."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    await store.delete(secret, 2)
    mark = azure_fake.mark()
    assert await put(fresh, secret, 3, {"a": "back"}) is PutOutcome.WRITTEN
    assert azure_fake.calls(mark, azure_prefix) == ["get", "set", "get_deleted", "recover", "set"]
    got = await fresh.get(secret)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "back"})


async def test_a_restarted_store_keeps_the_tombstone_fence(
    store: AzureStore, fresh: AzureStore, azure_fake: AzureFake, azure_prefix: str, sdk: Any
) -> None:
    """An older put arriving at a process that forgot the delete leaves the entry deleted."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    await store.delete(secret, 3)
    assert await put(fresh, secret, 2, {"a": "late"}) is PutOutcome.UNCHANGED
    assert "recover" not in azure_fake.calls(0, f"{azure_prefix}{secret}")
    deleted = await sdk.get_deleted_secret(f"{azure_prefix}{secret}")
    assert deleted.properties.tags[TAG_TOMBSTONE] == "3"


async def test_recovery_still_finishing_is_waited_for(
    store: AzureStore, azure_fake: AzureFake
) -> None:
    """While Key Vault finishes a delete or a recovery (409 ObjectIsBeing...), the put waits."""
    azure_fake.settle(0.5)
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    await store.delete(secret, 2)
    assert await put(store, secret, 3, {"a": "back"}) is PutOutcome.WRITTEN
    azure_fake.settle(0)
    got = await store.get(secret)
    assert got is not None
    assert got.version == 3


async def test_delete_interrupted_after_tagging_reads_as_deleted_and_is_finished(
    store: AzureStore, fresh: AzureStore, azure_fake: AzureFake, azure_prefix: str, sdk: Any
) -> None:
    """A tombstone tag without the soft delete (a crash) reads as deleted; a delete finishes it."""
    secret = sid()
    name = f"{azure_prefix}{secret}"
    await put(store, secret, 1, {"a": "1"})
    tags = (await sdk.get_secret(name)).properties.tags
    await sdk.update_secret_properties(name, tags={**tags, TAG_TOMBSTONE: "2"})
    assert await fresh.get(secret) is None
    listed = {e.secret_id: e async for e in fresh.list()}
    assert (listed[secret].deleted, listed[secret].version) == (True, 2)
    mark = azure_fake.mark()
    await fresh.delete(secret, 2)
    assert azure_fake.calls(mark, azure_prefix) == ["delete"]
    assert (await sdk.get_deleted_secret(name)).properties.tags[TAG_TOMBSTONE] == "2"


async def test_a_delete_by_hand_lists_as_deleted_without_a_tombstone(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """An entry soft-deleted by someone else lists as deleted at version 0: verify's missing."""
    secret = sid()
    await put(store, secret, 3, {"a": "1"})
    await sdk.delete_secret(f"{azure_prefix}{secret}")
    listed = {e.secret_id: e async for e in fresh.list()}
    assert (listed[secret].deleted, listed[secret].version) == (True, 0)


async def test_a_delete_by_hand_is_undone_by_recovering_only(
    store: AzureStore, fresh: AzureStore, azure_fake: AzureFake, azure_prefix: str, sdk: Any
) -> None:
    """Putting the version a hand-deleted entry held recovers it and sets nothing."""
    secret = sid()
    await put(store, secret, 3, {"a": "1"})
    await sdk.delete_secret(f"{azure_prefix}{secret}")
    _ = [e async for e in fresh.list()]
    mark = azure_fake.mark()
    assert await put(fresh, secret, 3, {"a": "1"}) is PutOutcome.WRITTEN
    assert azure_fake.calls(mark, azure_prefix) == ["recover"]
    got = await fresh.get(secret)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "1"})


# -- ownership and hand-made changes -------------------------------------------------------


async def test_someone_elses_soft_deleted_secret_is_not_recovered(
    store: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """A soft-deleted secret that was never ours stays deleted: the put is a conflict."""
    secret = sid()
    name = f"{azure_prefix}{secret}"
    await sdk.set_secret(name, "theirs")
    await sdk.delete_secret(name)
    with pytest.raises(StoreForeignEntry):
        await put(store, secret, 1, {"a": "1"})
    assert (await sdk.get_deleted_secret(name)).name == name


async def test_a_hand_written_version_lists_as_a_foreign_write(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """A value set by hand over ours lists as foreign_write at our newest version."""
    secret = sid()
    await put(store, secret, 3, {"a": "1"})
    await sdk.set_secret(f"{azure_prefix}{secret}", "by hand")
    listed = {e.secret_id: e async for e in fresh.list()}
    assert (listed[secret].foreign_write, listed[secret].version) == (True, 3)


async def test_a_hand_written_version_with_our_tags_copied_lists_as_a_foreign_write(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """A new version carries only the tags it is given: with ours copied onto another value it
    lists like ours, so the listing holds the value against the hash tag."""
    secret, untouched = sid(), sid()
    await put(store, secret, 3, {"a": "1"})
    await put(store, untouched, 1, {"a": "1"})
    ours = await sdk.get_secret(f"{azure_prefix}{secret}")
    await sdk.set_secret(
        f"{azure_prefix}{secret}",
        '{"a":"edited by hand"}',
        content_type="application/json",
        tags=ours.properties.tags,
    )
    listed = {e.secret_id: e async for e in fresh.list()}
    assert (listed[secret].foreign_write, listed[secret].version) == (True, 3)
    assert (listed[untouched].foreign_write, listed[untouched].hash) == (
        False,
        _hash(untouched, {"a": "1"}),
    )


async def test_a_latest_version_disabled_by_hand_lists_as_a_foreign_write(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """Readers of a disabled latest version get 403: the entry is not what secretmirror wrote."""
    secret = sid()
    await put(store, secret, 2, {"a": "1"})
    await sdk.update_secret_properties(f"{azure_prefix}{secret}", enabled=False)
    listed = {e.secret_id: e async for e in fresh.list()}
    assert listed[secret].foreign_write is True


async def test_listing_reads_each_live_entry_once(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """What a verify costs on Key Vault: the listing pages, and one get per live entry."""
    for _ in range(3):
        await put(store, sid(), 1, {"a": "1"})
    mark = azure_fake.mark()
    assert len([e async for e in store.list()]) == 3
    assert sorted(azure_fake.calls(mark, azure_prefix)) == ["get", "get", "get"]
    # The listing pages through the whole vault, which other tests share: count its pages
    # apart; everything else the listing did is the three gets of this test's entries.
    everything = azure_fake.calls(mark)
    assert sorted(c for c in everything if c not in ("list", "list_deleted")) == ["get"] * 3
    assert everything.count("list") >= 1
    assert everything.count("list_deleted") >= 1


async def test_without_the_hash_key_the_listing_fails_instead_of_guessing(
    store: AzureStore, azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str
) -> None:
    """A content hash that cannot be computed yet (a KMS down at start) is no mismatch."""
    await put(store, sid(), 1, {"a": "1"})

    def unavailable(secret_id: str, canon: bytes) -> str:
        raise StoreUnavailable("the content-hash key is not available yet")

    keyless = azure_store(azure_fake, replace(ctx, content_hash=unavailable), azure_prefix)
    await keyless.open()
    try:
        with pytest.raises(StoreUnavailable, match="not available yet"):
            _ = [e async for e in keyless.list()]
    finally:
        await keyless.close()


async def test_a_hand_written_version_is_never_served(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """A read of an entry whose current value someone else wrote finds nothing."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    await sdk.set_secret(f"{azure_prefix}{secret}", '{"a":"forged"}')
    assert await fresh.get(secret) is None


async def test_repair_writes_over_a_hand_written_version(
    store: AzureStore, fresh: AzureStore, azure_prefix: str, sdk: Any
) -> None:
    """Putting our version again over a hand-made value writes it anew."""
    secret = sid()
    await put(store, secret, 2, {"a": "1"})
    await sdk.set_secret(f"{azure_prefix}{secret}", "by hand")
    assert await put(fresh, secret, 2, {"a": "1"}) is PutOutcome.WRITTEN
    got = await fresh.get(secret)
    assert got is not None
    assert (got.version, got.values) == (2, {"a": "1"})


async def test_list_skips_what_is_not_ours(store: AzureStore, azure_prefix: str, sdk: Any) -> None:
    """Listing yields only this deployment's entries under the prefix, across pages."""
    ours = {sid() for _ in range(30)}
    for secret in ours:
        await put(store, secret, 1, {"a": "1"})
    await sdk.set_secret(f"{azure_prefix}{uuid.uuid4()}", "untagged, never ours")
    await sdk.set_secret(f"{azure_prefix}not-a-uuid", "theirs")
    await sdk.set_secret(f"x{azure_prefix}{uuid.uuid4()}", "outside the prefix")
    listed = [e.secret_id async for e in store.list()]
    assert sorted(listed) == sorted(ours)


# -- errors, throttling and pacing ---------------------------------------------------------


async def test_a_throttled_store_holds_off_without_calling(
    store: AzureStore, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """During Retry-After every operation fails fast as throttled and sends nothing."""
    await store.health()
    azure_fake.throttle(1, retry_after_s=30)
    with pytest.raises(StoreThrottled):
        await store.get(sid())
    mark = azure_fake.mark()
    with pytest.raises(StoreThrottled) as held:
        await put(store, sid(), 1, {"a": "1"})
    assert 0 < (held.value.retry_after_s or 0) <= 30
    assert azure_fake.calls(mark, azure_prefix) == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, StoreUnavailable),
        (503, StoreUnavailable),
        (403, StoreUnavailable),
        (400, StoreRejected),
    ],
)
async def test_error_answers_map_to_store_errors(
    store: AzureStore, azure_fake: AzureFake, status: int, error: type[Exception]
) -> None:
    """5xx and 403 are StoreUnavailable (retry, fall back); 400 is StoreRejected."""
    await store.health()
    azure_fake.inject(status, 1)
    with pytest.raises(error):
        await put(store, sid(), 1, {"a": "1"})


async def test_writes_are_paced_by_max_writes_per_s(
    azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str
) -> None:
    """Eleven sets at 10 writes/s take at least a second."""
    store = azure_store(azure_fake, ctx, azure_prefix, max_writes_per_s=10)
    await store.open()
    try:
        secret = sid()
        await put(store, secret, 1, {"a": "0"})
        started = time.monotonic()
        for version in range(2, 13):
            await put(store, secret, version, {"a": str(version)})
        assert time.monotonic() - started >= 0.95
    finally:
        await store.close()


# -- auth --------------------------------------------------------------------------------------


async def test_an_expired_token_is_replaced(
    azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str
) -> None:
    """When the token expires, azure-identity issues a new one and the store carries on."""
    azure_fake.token_lifetime(1)
    store = azure_store(azure_fake, ctx, azure_prefix)
    await store.open()
    try:
        await put(store, sid(), 1, {"a": "1"})
        issued = azure_fake.tokens_issued()
        await asyncio.sleep(1.2)  # the behaviour under test is a token outliving its lifetime
        await put(store, sid(), 1, {"a": "1"})
        assert azure_fake.tokens_issued() == issued + 1
    finally:
        await store.close()


async def test_a_token_key_vault_refuses_is_unavailable(
    store: AzureStore, azure_fake: AzureFake
) -> None:
    """A token Key Vault no longer accepts (and azure-identity still holds) is StoreUnavailable."""
    await store.health()
    azure_fake.revoke_tokens()
    with pytest.raises(StoreUnavailable, match="refused the token"):
        await store.health()


async def test_a_wrong_client_secret_is_unavailable_and_not_echoed(
    azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str
) -> None:
    """A refused service principal makes the store unavailable; the message holds no secret."""
    wrong = "wrong-" + secrets.token_hex(8)
    store = azure_store(azure_fake, ctx, azure_prefix, client_secret=wrong)
    await store.open()
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.health()
        assert wrong not in refused.value.message
        assert CLIENT_SECRET not in refused.value.message
    finally:
        await store.close()


async def test_implicit_auth_takes_the_default_credential_chain(
    azure_fake: AzureFake, ctx: StoreContext, azure_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth_method implicit uses DefaultAzureCredential (here its environment credential)."""
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT_ID)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", azure_fake.url)
    settings = AzureStoreSettings(vault_url=azure_fake.url, name_prefix=azure_prefix)
    store = AzureStore(settings, ctx, ssl_context=azure_fake.ssl_context())
    await store.open()
    try:
        secret = sid()
        await put(store, secret, 1, {"a": "1"})
        got = await store.get(secret)
        assert got is not None
        assert got.values == {"a": "1"}
    finally:
        await store.close()


def test_a_challenge_for_another_domain_is_refused(ctx: StoreContext) -> None:
    """A token is asked only for a resource that is a parent domain of the vault's host."""
    settings = AzureStoreSettings(
        vault_url="https://myvault.vault.azure.net",
        auth_method="service-principal",
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    store = AzureStore(settings, ctx)
    good = _Challenge("https://vault.azure.net/.default", TENANT_ID)
    assert store._checked(good) == good
    with pytest.raises(StoreUnavailable, match="not a parent domain"):
        store._checked(_Challenge("https://management.azure.com/.default", TENANT_ID))


def test_a_next_link_outside_the_vault_is_refused(ctx: StoreContext) -> None:
    """Pagination never follows a link (and so never sends the token) off the vault."""
    settings = AzureStoreSettings(vault_url="https://myvault.vault.azure.net")
    store = AzureStore(settings, ctx)
    assert store._next("https://myvault.vault.azure.net/secrets?$skiptoken=a") is not None
    with pytest.raises(StoreUnavailable, match="outside the vault"):
        store._next("https://elsewhere.example/secrets?$skiptoken=a")


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vault_url": "http://myvault.vault.azure.net"}, "https"),
        ({"vault_url": "https://myvault.vault.azure.net/secrets"}, "no path"),
        ({"auth_method": "service-principal", "tenant_id": TENANT_ID}, "needs client_id"),
    ],
)
def test_invalid_settings_stop_start_up(
    ctx: StoreContext, fields: dict[str, Any], message: str
) -> None:
    """A vault URL that is not https without a path, or a half-configured principal, is refused."""
    settings = AzureStoreSettings(**{"vault_url": "https://v.vault.azure.net", **fields})
    with pytest.raises(ConfigError, match=message):
        AzureStore(settings, ctx)


def test_missing_extra_names_it(tmp_path: Any) -> None:
    """Without the azure packages, building the store fails with a message naming the extra."""
    script = """
import sys
for name in ("azure", "azure.identity", "azure.identity.aio", "azure.core"):
    sys.modules[name] = None
from secretmirror.errors import ConfigError
from secretmirror.settings import AzureStoreSettings
from secretmirror.stores import build_store
from secretmirror.stores.base import StoreContext
try:
    build_store(AzureStoreSettings(vault_url="https://v.vault.azure.net"),
                StoreContext("d", None), "")
except ConfigError as exc:
    print(exc.message)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'secretmirror[azure]'" in done.stdout


# -- helpers ---------------------------------------------------------------------------------


async def test_an_entry_deleted_between_the_listing_and_its_check_is_not_foreign(
    store: AzureStore,
    azure_fake: AzureFake,
    ctx: StoreContext,
    azure_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delete by another process after the page was listed is no hand edit: the entry is
    listed as the page showed it, and the scan's confirmation looks again."""
    secret = sid()
    await put(store, secret, 1, {"a": "1"})
    lister = azure_store(azure_fake, ctx, azure_prefix)
    await lister.open()
    request = lister._request
    deleted: list[int] = []

    async def request_after_a_delete(method: str, target: Any, op: str, **kw: Any) -> Any:
        if op == "get" and not deleted:
            deleted.append(1)
            await store.delete(secret, 2)
        return await request(method, target, op, **kw)

    monkeypatch.setattr(lister, "_request", request_after_a_delete)
    try:
        entries = [e async for e in lister.list()]
    finally:
        await lister.close()
    assert deleted == [1]
    [live] = [e for e in entries if e.secret_id == secret and not e.deleted]
    assert live.foreign_write is False
