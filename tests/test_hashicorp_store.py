"""The ``hashicorp`` store against a real OpenBao: auth, ownership, fencing, call counts, drift.

The contract suite (tests/test_store_contract.py) covers what every store does;
this module covers what is particular to Vault/OpenBao. Each test works under a
path prefix of its own on the session's dev server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from secretmirror.crypto import Keyring, content_hash
from secretmirror.errors import (
    ConfigError,
    StoreForeignEntry,
    StoreThrottled,
    StoreUnavailable,
)
from secretmirror.model import canonical
from secretmirror.settings import HashicorpStoreSettings
from secretmirror.stores import hashicorp
from secretmirror.stores.base import Entry, PutOutcome, StoreContext
from secretmirror.stores.hashicorp import HashicorpStore
from tests.openbao import OpenBao, start_bao
from tests.stores.hashicorp import unique_prefix

HASH_KEY = secrets.token_bytes(32)


def _hash(sid: str, values: dict[str, str]) -> str:
    return content_hash(HASH_KEY, sid, canonical(values))


def least_privilege_policy(mount: str, prefix: str, *, detailed_listing: bool = True) -> str:
    """The policy the README recommends: the prefix's KV paths only."""
    rules = [
        f'path "{mount}/data/{prefix}*" {{ capabilities = ["create", "read", "update"] }}',
        f'path "{mount}/metadata/{prefix}*" '
        f'{{ capabilities = ["create", "read", "update", "list"] }}',
        f'path "{mount}/destroy/{prefix}*" {{ capabilities = ["update"] }}',
    ]
    if detailed_listing:
        rules.append(f'path "{mount}/detailed-metadata/{prefix}*" {{ capabilities = ["list"] }}')
    return "\n".join(rules)


@pytest.fixture
def ctx(tmp_path: Path) -> StoreContext:
    return StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]), None, str(tmp_path))


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@contextlib.asynccontextmanager
async def opened(ctx: StoreContext, **settings: Any) -> AsyncIterator[HashicorpStore]:
    store = HashicorpStore(HashicorpStoreSettings(**settings), ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(openbao: OpenBao, ctx: StoreContext, prefix: str) -> AsyncIterator[HashicorpStore]:
    """A store with the root token; its call counter starts empty."""
    async with opened(ctx, url=openbao.url, token=openbao.root_token, path_prefix=prefix) as s:
        s.calls.clear()
        yield s


def _metadata(bao: OpenBao, path: str, mount: str = "secret") -> dict[str, Any]:
    data: dict[str, Any] = bao.ok("GET", f"{mount}/metadata/{path}")["data"]
    return data


def _write_policy(bao: OpenBao, body: str) -> str:
    name = f"sm-{uuid.uuid4().hex[:10]}"
    bao.ok("PUT", f"sys/policies/acl/{name}", {"policy": body})
    return name


def _token(bao: OpenBao, policy: str, **options: Any) -> str:
    answer = bao.ok("POST", "auth/token/create", {"policies": [policy], **options})
    return str(answer["auth"]["client_token"])


@pytest.fixture(scope="session")
def approle(openbao: OpenBao) -> OpenBao:
    """The approle auth method, enabled once on the session's server."""
    status, mounts = openbao.request("GET", "sys/auth")
    assert status == 200
    if "approle/" not in mounts["data"]:
        openbao.ok("POST", "sys/auth/approle", {"type": "approle"})
    return openbao


def _role(bao: OpenBao, policy: str, **token_options: Any) -> tuple[str, str]:
    """A new role with ``policy``; its role_id and a secret_id."""
    name = f"sm-{uuid.uuid4().hex[:10]}"
    bao.ok("POST", f"auth/approle/role/{name}", {"token_policies": [policy], **token_options})
    role_id = bao.ok("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
    secret_id = bao.ok("POST", f"auth/approle/role/{name}/secret-id")["data"]["secret_id"]
    return str(role_id), str(secret_id)


async def _entries(store: HashicorpStore) -> dict[str, Entry]:
    return {e.secret_id: e async for e in store.list()}


# -- auth ---------------------------------------------------------------------


async def test_approle_token_expiring_mid_run_is_renewed_and_replaced(
    approle: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """With 2 s tokens capped at 4 s, writes and reads keep working across expiries."""
    policy = _write_policy(approle, least_privilege_policy("secret", prefix))
    role_id, secret_id = _role(approle, policy, token_ttl="2s", token_max_ttl="4s")
    sid, version, failures = str(uuid.uuid4()), 0, []
    async with opened(
        ctx,
        url=approle.url,
        auth_method="approle",
        role_id=role_id,
        secret_id=secret_id,
        path_prefix=prefix,
    ) as store:
        started = time.monotonic()
        # Past the first token's max TTL, and until a renewal and a second login happened.
        while (
            time.monotonic() - started < 5
            or store.calls["POST auth/approle/login"] < 2
            or store.calls["POST auth/token/renew-self"] < 1
        ):
            assert time.monotonic() - started < 30, dict(store.calls)
            version += 1
            values = {"n": str(version)}
            try:
                assert await store.put(sid, version, values, _hash(sid, values)) is (
                    PutOutcome.WRITTEN
                )
                got = await store.get(sid)
                assert got is not None
                assert (version, values) == (got.version, got.values)
            except StoreUnavailable as exc:
                failures.append(exc.message)
            await asyncio.sleep(0.05)
    assert failures == []


async def test_approle_logs_in_again_after_its_token_is_revoked(
    approle: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """A 403 from a revoked token costs one login and the request succeeds."""
    policy = _write_policy(approle, least_privilege_policy("secret", prefix))
    role_id, secret_id = _role(approle, policy, token_ttl="1h")
    settings = {"auth_method": "approle", "role_id": role_id, "secret_id": secret_id}
    async with opened(ctx, url=approle.url, path_prefix=prefix, **settings) as store:
        sid = str(uuid.uuid4())
        await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
        approle.ok("POST", "sys/leases/revoke-prefix/auth/approle/login")
        store.calls.clear()
        got = await store.get(sid)
    assert got is not None
    assert store.calls["POST auth/approle/login"] == 1


async def test_approle_with_wrong_secret_id_is_unavailable(
    approle: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """Refused approle credentials make the store unavailable, with no credential in the message."""
    policy = _write_policy(approle, least_privilege_policy("secret", prefix))
    role_id, _ = _role(approle, policy)
    wrong = str(uuid.uuid4())
    store = HashicorpStore(
        HashicorpStoreSettings(
            url=approle.url,
            auth_method="approle",
            role_id=role_id,
            secret_id=wrong,
            path_prefix=prefix,
        ),
        ctx,
    )
    with pytest.raises(StoreUnavailable, match="approle login refused") as raised:
        await store.open()
    await store.close()
    assert wrong not in raised.value.message


async def test_token_auth_renews_before_expiry(
    openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """A short-lived token is renewed with renew-self and outlives its TTL twice over without
    failures. 4 s: renewed at 2/3, it leaves 1.3 s to a machine that stalls (OpenBao counts
    the TTL in whole seconds from its clock, the store from the answer's arrival)."""
    policy = _write_policy(openbao, least_privilege_policy("secret", prefix))
    token = _token(openbao, policy, ttl="4s", explicit_max_ttl="1h")
    sid, failures = str(uuid.uuid4()), []
    async with opened(ctx, url=openbao.url, token=token, path_prefix=prefix) as store:
        started, version = time.monotonic(), 0
        while time.monotonic() - started < 3 or store.calls["POST auth/token/renew-self"] < 2:
            assert time.monotonic() - started < 30, dict(store.calls)
            version += 1
            try:
                await store.put(sid, version, {"n": str(version)}, _hash(sid, {"n": "x"}))
            except StoreUnavailable as exc:
                failures.append(exc.message)
            await asyncio.sleep(0.05)
    assert failures == []
    assert openbao.request("POST", "auth/token/lookup", {"token": token})[0] == 200  # alive


async def test_idle_token_is_renewed_in_the_background(
    openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """An idle store keeps its token alive: an expired token could not be replaced. Two
    renewals of a 4 s token outlive it twice over (see the test above for the 4 s)."""
    policy = _write_policy(openbao, least_privilege_policy("secret", prefix))
    token = _token(openbao, policy, ttl="4s", explicit_max_ttl="1h")
    async with opened(ctx, url=openbao.url, token=token, path_prefix=prefix) as store:
        deadline = time.monotonic() + 30
        while store.calls["POST auth/token/renew-self"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await store.health()


async def test_root_token_is_never_renewed(store: HashicorpStore) -> None:
    """A token without a TTL is used as it is."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    assert store.calls["POST auth/token/renew-self"] == 0


async def test_policy_denial_is_unavailable_without_the_token(
    openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """A policy that does not cover the prefix: StoreUnavailable that names no token."""
    policy = _write_policy(openbao, least_privilege_policy("secret", "elsewhere/"))
    token = _token(openbao, policy)
    async with opened(ctx, url=openbao.url, token=token, path_prefix=prefix) as store:
        with pytest.raises(StoreUnavailable, match="permission denied") as raised:
            await store.get(str(uuid.uuid4()))
    assert token not in raised.value.message


async def test_least_privilege_policy_covers_every_operation(
    openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """The documented policy (no delete capability anywhere) is enough for the whole life cycle."""
    policy = _write_policy(openbao, least_privilege_policy("secret", prefix))
    token = _token(openbao, policy, no_default_policy=True)
    sid = str(uuid.uuid4())
    async with opened(ctx, url=openbao.url, token=token, path_prefix=prefix) as store:
        await store.health()
        await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
        await store.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
        await store.delete(sid, 3)
        assert PutOutcome.WRITTEN is await store.put(sid, 4, {"a": "4"}, _hash(sid, {"a": "4"}))
        got = await store.get(sid)
        listed = await _entries(store)
    assert got is not None
    assert (got.version, got.values) == (4, {"a": "4"})
    assert listed[sid].version == 4


# -- ownership ------------------------------------------------------------------


async def test_foreign_entry_recreated_where_this_process_wrote_is_not_overwritten(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """Ours removed, someone else's written at its path: the next put refuses it untouched."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    openbao.ok("DELETE", f"secret/metadata/{prefix}{sid}")
    openbao.ok("POST", f"secret/data/{prefix}{sid}", {"data": {"theirs": "x"}})
    with pytest.raises(StoreForeignEntry, match="not managed by this deployment"):
        await store.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
    meta = _metadata(openbao, f"{prefix}{sid}")
    data = openbao.ok("GET", f"secret/data/{prefix}{sid}")["data"]["data"]
    assert (meta["current_version"], meta["custom_metadata"], data) == (1, None, {"theirs": "x"})


async def test_operator_settings_on_an_entry_are_kept(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """An operator's max_versions and custom metadata keys survive secretmirror's writes."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    meta = _metadata(openbao, f"{prefix}{sid}")
    custom = {**meta["custom_metadata"], "owner": "team-a"}
    openbao.ok(
        "POST", f"secret/metadata/{prefix}{sid}", {"max_versions": 3, "custom_metadata": custom}
    )
    await store.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
    meta = _metadata(openbao, f"{prefix}{sid}")
    assert (
        meta["max_versions"],
        meta["custom_metadata"]["owner"],
        meta["custom_metadata"]["secretmirror.version"],
    ) == (3, "team-a", "2")


# -- fencing and tombstones -----------------------------------------------------


async def test_stale_put_creates_no_kv_version(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """An older secretmirror version is refused before any write: Vault keeps one version."""
    sid = str(uuid.uuid4())
    await store.put(sid, 3, {"a": "3"}, _hash(sid, {"a": "3"}))
    assert PutOutcome.UNCHANGED is await store.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
    assert _metadata(openbao, f"{prefix}{sid}")["current_version"] == 1


async def test_redelivery_creates_no_kv_version(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """The same version delivered twice leaves one KV version."""
    sid = str(uuid.uuid4())
    for _ in range(3):
        await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    assert _metadata(openbao, f"{prefix}{sid}")["current_version"] == 1


async def test_delete_destroys_every_version_and_keeps_a_tombstone(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """A delete destroys all data versions and leaves the metadata marked deleted at its version."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    await store.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
    await store.delete(sid, 3)
    meta = _metadata(openbao, f"{prefix}{sid}")
    assert all(v["destroyed"] for v in meta["versions"].values())
    assert (
        meta["custom_metadata"]["secretmirror.deleted"],
        meta["custom_metadata"]["secretmirror.version"],
    ) == ("true", "3")
    assert Entry(sid, 3, None, deleted=True) == (await _entries(store))[sid]


async def test_interrupted_delete_is_finished_by_redelivery(
    store: HashicorpStore, openbao: OpenBao, prefix: str, ctx: StoreContext
) -> None:
    """A tombstone whose data was not yet destroyed is completed when the delete comes again."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    tombstone = {
        "secretmirror.deployment": ctx.deployment_id,
        "secretmirror.version": "2",
        "secretmirror.deleted": "true",
    }
    openbao.ok("POST", f"secret/metadata/{prefix}{sid}", {"custom_metadata": tombstone})
    await store.delete(sid, 2)
    assert _metadata(openbao, f"{prefix}{sid}")["versions"]["1"]["destroyed"]


async def test_interrupted_create_reads_as_missing_until_redelivered(
    store: HashicorpStore, openbao: OpenBao, prefix: str, ctx: StoreContext
) -> None:
    """Metadata written without its data is not an entry; the redelivered put completes it."""
    sid, values = str(uuid.uuid4()), {"a": "1"}
    claimed = {
        "secretmirror.deployment": ctx.deployment_id,
        "secretmirror.version": "1",
        "secretmirror.hash": _hash(sid, values),
        "secretmirror.kv-version": "1",
    }
    openbao.ok("POST", f"secret/metadata/{prefix}{sid}", {"custom_metadata": claimed})
    assert None is await store.get(sid)
    assert sid not in await _entries(store)
    assert PutOutcome.WRITTEN is await store.put(sid, 1, values, _hash(sid, values))
    got = await store.get(sid)
    assert got is not None
    assert values == got.values


# -- cost in Vault API calls ----------------------------------------------------


async def test_create_costs_three_calls(store: HashicorpStore) -> None:
    """A new entry: one metadata read (404), the metadata, then the data."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    assert dict(store.calls) == {"GET metadata": 1, "POST metadata": 1, "POST data": 1}


async def test_steady_state_update_costs_three_calls(store: HashicorpStore) -> None:
    """Each update reads the metadata (the ownership check), then writes data and metadata."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    for version in range(2, 6):
        store.calls.clear()
        values = {"a": str(version)}
        assert PutOutcome.WRITTEN is await store.put(sid, version, values, _hash(sid, values))
        assert dict(store.calls) == {"GET metadata": 1, "POST data": 1, "POST metadata": 1}


async def test_update_from_a_cold_process_costs_three_calls(
    store: HashicorpStore, openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """A process that has not seen the entry reads its metadata first."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    async with opened(ctx, url=openbao.url, token=openbao.root_token, path_prefix=prefix) as cold:
        cold.calls.clear()
        await cold.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
    assert dict(cold.calls) == {"GET metadata": 1, "POST data": 1, "POST metadata": 1}


async def test_update_after_another_process_wrote_costs_no_failed_write(
    store: HashicorpStore, openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """Another process wrote meanwhile: the read sees it, the cas write succeeds first time."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    async with opened(ctx, url=openbao.url, token=openbao.root_token, path_prefix=prefix) as other:
        await other.put(sid, 2, {"a": "2"}, _hash(sid, {"a": "2"}))
    store.calls.clear()
    await store.put(sid, 3, {"a": "3"}, _hash(sid, {"a": "3"}))
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "3"})
    assert dict(store.calls) == {
        "POST data": 1,
        "GET metadata": 1,
        "POST metadata": 1,
        "GET data": 1,
    }


async def test_redelivery_costs_one_read(store: HashicorpStore) -> None:
    """A version the store already holds costs one metadata read and no write."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    store.calls.clear()
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    assert dict(store.calls) == {"GET metadata": 1}


async def test_get_costs_one_call(store: HashicorpStore) -> None:
    """A read is one data read: the values and the custom metadata come together."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    store.calls.clear()
    await store.get(sid)
    assert dict(store.calls) == {"GET data": 1}


async def test_list_pages_through_detailed_metadata(
    store: HashicorpStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenBao's detailed listing costs one call per page, no read per entry."""
    monkeypatch.setattr(hashicorp, "_PAGE", 2)
    sids = sorted(str(uuid.uuid4()) for _ in range(5))
    for sid in sids:
        await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
    store.calls.clear()
    assert sids == sorted(await _entries(store))
    assert dict(store.calls) == {"LIST detailed-metadata": 3}


async def test_list_without_detailed_metadata_reads_each_entry(
    openbao: OpenBao, ctx: StoreContext, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where detailed listing is refused (HashiCorp Vault), LIST pages plus one read per entry."""
    monkeypatch.setattr(hashicorp, "_PAGE", 2)
    policy = _write_policy(
        openbao, least_privilege_policy("secret", prefix, detailed_listing=False)
    )
    token = _token(openbao, policy)
    sids = sorted(str(uuid.uuid4()) for _ in range(5))
    async with opened(ctx, url=openbao.url, token=token, path_prefix=prefix) as store:
        for sid in sids:
            await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
        store.calls.clear()
        listed = await _entries(store)
    assert sids == sorted(listed)
    assert store.calls["GET metadata"] == 5
    assert store.calls["LIST metadata"] == 3


# -- drift ----------------------------------------------------------------------


@pytest.fixture
async def drifted(store: HashicorpStore, openbao: OpenBao, prefix: str) -> tuple[str, str]:
    """An entry at version 1 whose value someone changed in Vault, custom metadata kept."""
    sid = str(uuid.uuid4())
    await store.put(sid, 1, {"password": "ours"}, _hash(sid, {"password": "ours"}))
    openbao.ok("POST", f"secret/data/{prefix}{sid}", {"data": {"password": "changed by hand"}})
    return sid, _hash(sid, {"password": "ours"})


async def test_list_flags_a_value_written_behind_our_back(
    store: HashicorpStore, drifted: tuple[str, str]
) -> None:
    """The listing sees the KV version moved past secretmirror's: foreign_write, same hash."""
    sid, ours = drifted
    assert Entry(sid, 1, ours, foreign_write=True) == (await _entries(store))[sid]


async def test_get_serves_secretmirror_values_after_drift(
    store: HashicorpStore, drifted: tuple[str, str]
) -> None:
    """A read returns the version secretmirror wrote, never the hand-written value."""
    sid, ours = drifted
    got = await store.get(sid)
    assert got is not None
    assert (1, {"password": "ours"}, ours) == (got.version, got.values, got.hash)


async def test_get_serves_secretmirror_values_when_the_hand_written_version_is_deleted(
    store: HashicorpStore, openbao: OpenBao, prefix: str, drifted: tuple[str, str]
) -> None:
    """A soft-deleted foreign version on top does not hide the version secretmirror wrote."""
    sid, _ = drifted
    openbao.ok("DELETE", f"secret/data/{prefix}{sid}")
    got = await store.get(sid)
    assert got is not None
    assert got.values == {"password": "ours"}


async def test_put_of_the_same_version_repairs_drift(
    store: HashicorpStore, openbao: OpenBao, prefix: str, drifted: tuple[str, str]
) -> None:
    """Re-putting the held version over a foreign write writes it again."""
    sid, ours = drifted
    assert PutOutcome.WRITTEN is await store.put(sid, 1, {"password": "ours"}, ours)
    current = openbao.ok("GET", f"secret/data/{prefix}{sid}")["data"]["data"]
    assert current == {"password": "ours"}
    assert not (await _entries(store))[sid].foreign_write


async def test_value_deleted_by_hand_is_missing_until_put_again(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """A soft delete of secretmirror's current value: not listed, not read; put restores it."""
    sid, values = str(uuid.uuid4()), {"a": "1"}
    await store.put(sid, 1, values, _hash(sid, values))
    openbao.ok("DELETE", f"secret/data/{prefix}{sid}")
    assert sid not in await _entries(store)
    assert None is await store.get(sid)
    assert PutOutcome.WRITTEN is await store.put(sid, 1, values, _hash(sid, values))
    got = await store.get(sid)
    assert got is not None
    assert got.values == values


async def test_forged_metadata_hides_drift_from_list_but_not_from_the_hash(
    store: HashicorpStore, openbao: OpenBao, prefix: str
) -> None:
    """Limit: a hand edit that also fixes kv-version looks in sync to list; hashing get() tells."""
    sid = str(uuid.uuid4())
    ours = _hash(sid, {"password": "ours"})
    await store.put(sid, 1, {"password": "ours"}, ours)
    openbao.ok("POST", f"secret/data/{prefix}{sid}", {"data": {"password": "forged"}})
    custom = {**_metadata(openbao, f"{prefix}{sid}")["custom_metadata"]}
    custom["secretmirror.kv-version"] = "2"
    openbao.ok("POST", f"secret/metadata/{prefix}{sid}", {"custom_metadata": custom})
    assert Entry(sid, 1, ours) == (await _entries(store))[sid]
    got = await store.get(sid)
    assert got is not None
    assert ours == got.hash
    assert ours != _hash(sid, got.values)


# -- errors ---------------------------------------------------------------------


async def test_missing_mount_is_unavailable_not_missing(
    openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """A mount that does not exist is an outage, not an empty store."""
    store = HashicorpStore(
        HashicorpStoreSettings(url=openbao.url, token=openbao.root_token, mount="nomount"), ctx
    )
    try:
        with pytest.raises(StoreUnavailable, match="nomount"):
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.get(str(uuid.uuid4()))
    finally:
        await store.close()


async def test_kv_version_1_mount_is_refused(openbao: OpenBao, ctx: StoreContext) -> None:
    """A KV v1 mount would store data/<path> literally: the store refuses to use it."""
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    openbao.ok("POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "1"}})
    store = HashicorpStore(
        HashicorpStoreSettings(url=openbao.url, token=openbao.root_token, mount=mount), ctx
    )
    try:
        with pytest.raises(StoreUnavailable, match="not a KV version 2"):
            await store.open()
    finally:
        await store.close()
        openbao.ok("DELETE", f"sys/mounts/{mount}")


@pytest.fixture
def rate_limited_mount(openbao: OpenBao) -> Iterator[str]:
    """A KV v2 mount of its own with a rate-limit quota of 1 request per minute."""
    mount, quota = f"rl-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    openbao.ok("POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
    openbao.ok("POST", "sys/quotas/config", {"enable_rate_limit_response_headers": True})
    openbao.ok(
        "POST", f"sys/quotas/rate-limit/{quota}", {"path": f"{mount}/", "rate": 1, "interval": "1m"}
    )
    yield mount
    openbao.ok("DELETE", f"sys/quotas/rate-limit/{quota}")
    openbao.ok("DELETE", f"sys/mounts/{mount}")


async def test_rate_limit_is_throttled_with_retry_after(
    openbao: OpenBao, ctx: StoreContext, rate_limited_mount: str
) -> None:
    """A 429 becomes StoreThrottled carrying the server's Retry-After."""
    settings = {"url": openbao.url, "token": openbao.root_token, "mount": rate_limited_mount}
    async with opened(ctx, **settings) as store:
        await store.get(str(uuid.uuid4()))
        with pytest.raises(StoreThrottled) as raised:
            await store.get(str(uuid.uuid4()))
    assert raised.value.retry_after_s is not None
    assert raised.value.retry_after_s > 0


# -- namespaces and TLS ------------------------------------------------------------


async def test_namespace_header_scopes_every_call(
    openbao: OpenBao, ctx: StoreContext, prefix: str
) -> None:
    """With ``namespace`` set, entries land in that namespace's mount and nowhere else."""
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    openbao.ok("POST", f"sys/namespaces/{namespace}", {})
    openbao.ok(
        "POST",
        "sys/mounts/secret",
        {"type": "kv", "options": {"version": "2"}},
        namespace=namespace,
    )
    sid = str(uuid.uuid4())
    settings = {"token": openbao.root_token, "namespace": namespace, "path_prefix": prefix}
    async with opened(ctx, url=openbao.url, **settings) as store:
        await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
        assert f"{openbao.url}/v1/{namespace}/secret/data/{prefix}" == store.location
    inside = openbao.ok("GET", f"secret/data/{prefix}{sid}", namespace=namespace)
    assert inside["data"]["data"] == {"a": "1"}
    assert openbao.request("GET", f"secret/data/{prefix}{sid}")[0] == 404


@pytest.fixture(scope="module")
def tls_openbao() -> Iterator[tuple[str, str, Path]]:
    """A second dev server serving HTTPS with a generated CA: (url, root token, CA file)."""
    server = start_bao(tls=True)
    try:
        yield server.url, server.root_token, server.ca_file
    finally:
        server.stop()


async def test_ca_cert_verifies_the_server(
    tls_openbao: tuple[str, str, Path], ctx: StoreContext, prefix: str
) -> None:
    """With ca_cert the store talks HTTPS to a server signed by that CA."""
    url, token, ca_file = tls_openbao
    sid = str(uuid.uuid4())
    async with opened(ctx, url=url, token=token, ca_cert=ca_file, path_prefix=prefix) as store:
        await store.put(sid, 1, {"a": "1"}, _hash(sid, {"a": "1"}))
        assert None is not await store.get(sid)


async def test_unknown_ca_is_unavailable(
    tls_openbao: tuple[str, str, Path], ctx: StoreContext
) -> None:
    """Without the CA the certificate is not trusted and nothing is sent."""
    url, token, _ = tls_openbao
    store = HashicorpStore(HashicorpStoreSettings(url=url, token=token), ctx)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.open()
    finally:
        await store.close()


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "auth_method token needs token"),
        ({"auth_method": "approle", "role_id": "r"}, "needs role_id and secret_id"),
        ({"token": "t", "path_prefix": "/abs/"}, "path_prefix"),
        ({"token": "t", "url": "vault.example.com"}, "url must look like"),
        ({"token": "t", "ca_cert": "/nonexistent/ca.pem"}, "ca_cert"),
    ],
)
def test_invalid_settings_are_config_errors(
    ctx: StoreContext, settings: dict[str, Any], message: str
) -> None:
    """Settings the store cannot work with stop start-up with the field named."""
    with pytest.raises(ConfigError, match=message):
        HashicorpStore(HashicorpStoreSettings(**settings), ctx)


def test_location_names_url_namespace_mount_and_prefix(ctx: StoreContext) -> None:
    """Two stores share a location only with the same url, namespace, mount and prefix."""
    store = HashicorpStore(
        HashicorpStoreSettings(
            url="https://vault.example.com:8200/",
            token="t",
            namespace="team/",
            mount="kv",
            path_prefix="sm/",
        ),
        ctx,
    )
    assert store.location == "https://vault.example.com:8200/v1/team/kv/data/sm/"
