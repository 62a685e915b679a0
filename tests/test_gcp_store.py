"""The gcp store on the Secret Manager fake: calls per operation, dedupe, labels, ownership,
tombstones, pruning, auth, throttling and error mapping.

Drift and foreign writes are made with the official SDK, as an operator's
tool would make them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.cloud import secretmanager
from pydantic import ValidationError

from secretmirror.crypto import Keyring, content_hash
from secretmirror.errors import (
    ConfigError,
    StoreContended,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
)
from secretmirror.model import canonical
from secretmirror.settings import GcpStoreSettings
from secretmirror.stores import gcp
from secretmirror.stores.base import Entry, PutOutcome, StoreContext
from secretmirror.stores.gcp import GcpStore, label_value
from secretmirror.stores.http import Reply, retry_after_s
from tests.gcpfake import PROJECT, GcpFake, gcp_settings, sdk_client

HASH_KEY = secrets.token_bytes(32)
PARENT = f"projects/{PROJECT}"
MakeStore = Callable[..., Awaitable[GcpStore]]


def _hash(sid: str, values: dict[str, str]) -> str:
    return content_hash(HASH_KEY, sid, canonical(values))


async def _put(store: GcpStore, sid: str, version: int, values: dict[str, str]) -> PutOutcome:
    return await store.put(sid, version, values, _hash(sid, values))


@pytest.fixture
def fake(gcp_fake_clean: GcpFake) -> GcpFake:
    return gcp_fake_clean


@pytest.fixture
def deployment() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def make_store(
    fake: GcpFake, gcp_key_file: Path, gcp_prefix: str, deployment: str
) -> AsyncIterator[MakeStore]:
    """Open stores (a fresh one is a fresh process's view); all closed at the end."""
    opened: list[GcpStore] = []

    async def make(deployment_id: str = deployment, **overrides: Any) -> GcpStore:
        fields = gcp_settings(fake.url, gcp_key_file, gcp_prefix, **overrides)
        ctx = StoreContext(deployment_id, Keyring([secrets.token_bytes(32)]))
        store = GcpStore(GcpStoreSettings(**fields), ctx)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> GcpStore:
    return await make_store()


@pytest.fixture
def sdk(fake: GcpFake, gcp_key_file: Path) -> secretmanager.SecretManagerServiceClient:
    """The official client, for changes made behind the store's back."""
    return sdk_client(fake.url, gcp_key_file)


@pytest.fixture
def sid() -> str:
    return str(uuid.uuid4())


def _versions(fake: GcpFake, name: str) -> list[tuple[int, str]]:
    secret = fake.secret(name)
    assert secret is not None
    return [(v.number, v.state) for v in secret.versions]


# -- calls per operation ---------------------------------------------------------------


async def test_first_write_is_one_read_and_two_writes(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A new secret: get (404), create with the claiming labels, add version."""
    mark = fake.mark()
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.WRITTEN
    assert fake.ops(mark, gcp_prefix + sid) == [
        "secrets.get",
        "secrets.create",
        "secrets.addVersion",
    ]


async def test_steady_state_update_is_two_writes(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """An entry this process wrote: add version, then the conditional label update."""
    await _put(store, sid, 1, {"a": "1"})
    mark = fake.mark()
    await _put(store, sid, 2, {"a": "2"})
    assert fake.ops(mark, gcp_prefix + sid) == ["secrets.addVersion", "secrets.patch"]


async def test_redelivery_of_known_version_makes_no_call(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A version the process knows the entry holds costs nothing."""
    await _put(store, sid, 2, {"a": "2"})
    mark = fake.mark()
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.UNCHANGED
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    assert fake.ops(mark, gcp_prefix + sid) == []


async def test_first_touch_reads_secret_and_latest(
    make_store: MakeStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """Another process's first write to an entry: get, access latest, then the two writes."""
    await _put(await make_store(), sid, 1, {"a": "1"})
    other = await make_store()
    mark = fake.mark()
    await _put(other, sid, 2, {"a": "2"})
    assert fake.ops(mark, gcp_prefix + sid) == [
        "secrets.get",
        "versions.access",
        "secrets.addVersion",
        "secrets.patch",
    ]


async def test_get_of_known_entry_is_one_access(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """Reading an entry this process wrote is one access call (the cheap quota)."""
    await _put(store, sid, 1, {"a": "1"})
    mark = fake.mark()
    got = await store.get(sid)
    assert got is not None
    assert fake.ops(mark, gcp_prefix + sid) == ["versions.access"]


# -- dedupe: no conditional add-version, so redelivery must not add twice ------------


async def test_redelivery_after_add_without_labels_adds_nothing(
    make_store: MakeStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A crash between add-version and the label update: the redelivery adopts that version."""
    first = await make_store()
    await _put(first, sid, 1, {"a": "1"})
    name = gcp_prefix + sid
    await first._add_version(name, canonical({"a": "2"}))  # then the process died
    other = await make_store()
    assert await _put(other, sid, 2, {"a": "2"}) is PutOutcome.WRITTEN
    assert _versions(fake, name) == [(1, "ENABLED"), (2, "ENABLED")]
    got = await other.get(sid)
    assert got is not None
    assert (got.version, got.values) == (2, {"a": "2"})


async def test_interrupted_create_is_completed_by_redelivery(
    make_store: MakeStore,
    fake: GcpFake,
    sdk: secretmanager.SecretManagerServiceClient,
    gcp_prefix: str,
    sid: str,
    deployment: str,
) -> None:
    """A create whose add-version never happened: labels claim version 1, a redelivery adds it."""
    values = {"a": "1"}
    name = gcp_prefix + sid
    sdk.create_secret(  # exactly what the store's create leaves when the process dies next
        request={
            "parent": PARENT,
            "secret_id": name,
            "secret": {
                "replication": {"automatic": {}},
                "labels": {
                    "secretmirror_managed": "true",
                    "secretmirror_deployment": label_value(deployment),
                    "secretmirror_version": "1",
                    "secretmirror_hash": _hash(sid, values),
                    "secretmirror_gcp_version": "1",
                },
            },
        }
    )
    assert await (await make_store()).get(sid) is None
    other = await make_store()
    assert await _put(other, sid, 1, values) is PutOutcome.WRITTEN
    assert _versions(fake, name) == [(1, "ENABLED")]
    got = await other.get(sid)
    assert got is not None
    assert got.values == values


async def test_a_put_that_loses_the_label_race_destroys_its_version(
    make_store: MakeStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A stale writer's etag fails: the newer labels win, and the newer value is put back on
    top of the version the stale writer added, which is destroyed."""
    stale = await make_store()
    await _put(stale, sid, 1, {"a": "1"})
    newer = await make_store()
    await _put(newer, sid, 3, {"a": "3"})
    assert await _put(stale, sid, 2, {"a": "2"}) is PutOutcome.UNCHANGED
    name = gcp_prefix + sid
    # 1: v1, 2: v3 (the winner), 3: the loser's v2, destroyed, 4: v3 again on top.
    assert _versions(fake, name) == [
        (1, "ENABLED"),
        (2, "ENABLED"),
        (3, "DESTROYED"),
        (4, "ENABLED"),
    ]
    latest = fake.secret(name)
    assert latest is not None
    assert json.loads(latest.versions[-1].data) == {"a": "3"}
    for reader in (stale, newer, await make_store()):
        got = await reader.get(sid)
        assert got is not None
        assert (got.version, got.values) == (3, {"a": "3"})


async def test_a_create_that_loses_the_label_race_yields_to_the_newer_version(
    make_store: MakeStore, fake: GcpFake, gcp_prefix: str, sid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another daemon writes a newer version between our create and our add: our claim's
    etag fails, and the put yields to the newer labels instead of failing the delivery."""
    first = await make_store()
    other = await make_store()
    real_add = first._add_version

    async def add_after_the_other_writer(name: str, blob: bytes) -> int:
        monkeypatch.setattr(first, "_add_version", real_add)  # once
        assert await _put(other, sid, 3, {"a": "3"}) is PutOutcome.WRITTEN
        return await real_add(name, blob)

    monkeypatch.setattr(first, "_add_version", add_after_the_other_writer)
    assert await _put(first, sid, 2, {"a": "2"}) is PutOutcome.UNCHANGED
    # 1: v3 (the other writer), 2: our v2, destroyed, 3: v3 again on top.
    assert _versions(fake, gcp_prefix + sid) == [(1, "ENABLED"), (2, "DESTROYED"), (3, "ENABLED")]
    for reader in (first, other, await make_store()):
        got = await reader.get(sid)
        assert got is not None
        assert (got.version, got.values) == (3, {"a": "3"})


# -- labels, versions, tombstones ------------------------------------------------------


async def test_labels_say_what_the_entry_holds(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str, deployment: str
) -> None:
    """Deployment (32 hex), version, hash and GCP version are valid lowercase labels."""
    values = {"k": "v"}
    await _put(store, sid, 7, values)
    secret = fake.secret(gcp_prefix + sid)
    assert secret is not None
    assert secret.labels == {
        "secretmirror_managed": "true",
        "secretmirror_deployment": uuid.UUID(deployment).hex,
        "secretmirror_version": "7",
        "secretmirror_hash": _hash(sid, values),
        "secretmirror_gcp_version": "1",
    }
    payload = secret.versions[-1].data
    assert json.loads(payload) == values


def test_label_value_of_other_ids() -> None:
    """A deployment id that is not a UUID still makes a valid label value."""
    assert label_value("plain42") == "plain42"
    odd = label_value("Not A UUID/..")
    assert odd.startswith("h")
    assert len(odd) == 41


async def test_versions_beyond_the_newest_three_are_destroyed(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """Old versions do not pile up: only the newest KEEP_VERSIONS stay enabled."""
    for version in range(1, 7):
        await _put(store, sid, version, {"v": str(version)})
    states = _versions(fake, gcp_prefix + sid)
    assert states == [(n, "DESTROYED") for n in (1, 2, 3)] + [(n, "ENABLED") for n in (4, 5, 6)]


async def test_pruning_continues_in_a_new_process(
    make_store: MakeStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A process that did not write the entry destroys the version that falls out too."""
    first = await make_store()
    for version in range(1, 4):
        await _put(first, sid, version, {"v": str(version)})
    await _put(await make_store(), sid, 4, {"v": "4"})
    assert _versions(fake, gcp_prefix + sid)[0] == (1, "DESTROYED")


async def test_other_tools_labels_are_kept(
    store: GcpStore, sdk: secretmanager.SecretManagerServiceClient, gcp_prefix: str, sid: str
) -> None:
    """A label someone else set survives secretmirror's label updates."""
    await _put(store, sid, 1, {"a": "1"})
    name = f"{PARENT}/secrets/{gcp_prefix}{sid}"
    current = sdk.get_secret(request={"name": name})
    sdk.update_secret(
        request={
            "secret": {"name": name, "labels": {**current.labels, "team": "payments"}},
            "update_mask": {"paths": ["labels"]},
        }
    )
    fresh_store_view = await _put(store, sid, 2, {"a": "2"})
    assert fresh_store_view is PutOutcome.WRITTEN or fresh_store_view is PutOutcome.UNCHANGED
    labels = dict(sdk.get_secret(request={"name": name}).labels)
    assert labels["team"] == "payments"
    assert labels["secretmirror_version"] == "2"


async def test_delete_destroys_values_and_keeps_a_tombstone(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A delete destroys every version and labels the secret as a tombstone that expires."""
    await _put(store, sid, 1, {"a": "1"})
    await _put(store, sid, 2, {"a": "2"})
    await store.delete(sid, 3)
    secret = fake.secret(gcp_prefix + sid)
    assert secret is not None
    assert [state for _, state in _versions(fake, gcp_prefix + sid)] == ["DESTROYED"] * 2
    assert secret.labels["secretmirror_deleted"] == "true"
    assert secret.labels["secretmirror_version"] == "3"
    assert secret.expire is not None
    entries = [e async for e in store.list()]
    assert [(e.secret_id, e.version, e.deleted) for e in entries] == [(sid, 3, True)]


async def test_put_over_a_tombstone_clears_its_expiry(
    store: GcpStore, fake: GcpFake, gcp_prefix: str, sid: str
) -> None:
    """A newer version brings the entry back and it no longer expires."""
    await _put(store, sid, 1, {"a": "1"})
    await store.delete(sid, 2)
    await _put(store, sid, 3, {"a": "back"})
    secret = fake.secret(gcp_prefix + sid)
    assert secret is not None
    assert secret.expire is None
    assert "secretmirror_deleted" not in secret.labels


async def test_tombstone_fences_another_process(make_store: MakeStore, sid: str) -> None:
    """The tombstone lives in GCP: a fresh process refuses an older put."""
    first = await make_store()
    await _put(first, sid, 1, {"a": "1"})
    await first.delete(sid, 2)
    other = await make_store()
    assert await _put(other, sid, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    assert await other.get(sid) is None


async def test_delete_at_the_current_version_moves_the_entry(store: GcpStore, sid: str) -> None:
    """Deleting at the version the store holds leaves a tombstone (backup --delete-secrets)."""
    await _put(store, sid, 4, {"a": "4"})
    await store.delete(sid, 4)
    assert await store.get(sid) is None
    assert await _put(store, sid, 4, {"a": "4"}) is PutOutcome.UNCHANGED


async def test_secret_deleted_behind_our_back_is_recreated(
    store: GcpStore, sdk: secretmanager.SecretManagerServiceClient, gcp_prefix: str, sid: str
) -> None:
    """An entry this process knew, deleted by hand, is created again by the next put."""
    await _put(store, sid, 1, {"a": "1"})
    sdk.delete_secret(request={"name": f"{PARENT}/secrets/{gcp_prefix}{sid}"})
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert got.values == {"a": "2"}


# -- ownership and foreign writes --------------------------------------------------------


async def test_a_version_added_by_someone_else_is_not_served(
    store: GcpStore, sdk: secretmanager.SecretManagerServiceClient, gcp_prefix: str, sid: str
) -> None:
    """A foreign newest version reads as None; the next secretmirror version supersedes it."""
    await _put(store, sid, 1, {"a": "1"})
    name = f"{PARENT}/secrets/{gcp_prefix}{sid}"
    sdk.add_secret_version(request={"parent": name, "payload": {"data": b"console edit"}})
    assert await store.get(sid) is None
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (2, {"a": "2"})


async def test_list_reports_broken_labels_as_foreign(
    store: GcpStore, sdk: secretmanager.SecretManagerServiceClient, gcp_prefix: str, sid: str
) -> None:
    """Labels with a version but no hash (edited by hand) list as a foreign write."""
    await _put(store, sid, 1, {"a": "1"})
    name = f"{PARENT}/secrets/{gcp_prefix}{sid}"
    labels = dict(sdk.get_secret(request={"name": name}).labels)
    del labels["secretmirror_hash"]
    sdk.update_secret(
        request={"secret": {"name": name, "labels": labels}, "update_mask": {"paths": ["labels"]}}
    )
    [entry] = [e async for e in store.list()]
    assert (entry.version, entry.hash, entry.foreign_write) == (1, None, True)


async def test_list_pages_through_every_entry(
    store: GcpStore, fake: GcpFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing follows nextPageToken and sorts each page by id."""
    monkeypatch.setattr(gcp, "_PAGE", 3)
    ids = sorted(str(uuid.uuid4()) for _ in range(7))
    for sid in ids:
        await _put(store, sid, 1, {"a": sid})
    mark = fake.mark()
    listed = [e.secret_id async for e in store.list()]
    assert sorted(listed) == ids
    assert listed[:3] == sorted(listed[:3])
    assert fake.ops(mark).count("secrets.list") == 3


# -- limits, pacing, errors -------------------------------------------------------------


async def test_values_over_64_kib_are_rejected_without_a_call(
    store: GcpStore, fake: GcpFake, sid: str
) -> None:
    """The 64 KiB payload limit is checked before any request."""
    assert store.max_value_bytes == 65536
    mark = fake.mark()
    with pytest.raises(StoreRejected):
        await _put(store, sid, 1, {"k": "x" * 65536})
    assert fake.ops(mark) == []


async def test_writes_are_paced_by_max_writes_per_s(
    make_store: MakeStore, fake: GcpFake, gcp_prefix: str
) -> None:
    """No one-second window holds more than max_writes_per_s writes (+1 at the boundary)."""
    store = await make_store(max_writes_per_s=10)
    mark = fake.mark()
    started = time.monotonic()
    for _ in range(8):
        await _put(store, str(uuid.uuid4()), 1, {"a": "1"})
    took = time.monotonic() - started
    writes = [
        c.at
        for c in fake.calls[mark:]
        if c.op in ("secrets.create", "secrets.addVersion")
        and (c.secret_id or "").startswith(gcp_prefix)
    ]
    assert len(writes) == 16
    assert took >= 1.4
    assert max(sum(1 for t in writes if s <= t < s + 1.0) for s in writes) <= 11


async def test_429_without_hint_waits_a_second(store: GcpStore, fake: GcpFake, sid: str) -> None:
    """Without Retry-After a throttled call is retried after a second."""
    store._throttle.clear()
    fake.throttle(1)
    with pytest.raises(StoreThrottled) as raised:
        await store.get(sid)
    assert raised.value.retry_after_s == 1.0


async def test_429_pauses_the_whole_store(store: GcpStore, fake: GcpFake, sid: str) -> None:
    """After a 429 every request of the store waits out the hint before it is sent."""
    fake.throttle(1, retry_after_s=0.5)
    with pytest.raises(StoreThrottled):
        await store.get(sid)
    started = time.monotonic()
    assert await store.get(str(uuid.uuid4())) is None
    assert time.monotonic() - started >= 0.45


def test_retry_info_detail_is_honoured() -> None:
    """A google.rpc.RetryInfo detail gives the delay when there is no header."""
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]
    assert retry_after_s({}, details) == 2.5


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (500, "INTERNAL", StoreUnavailable),
        (503, "UNAVAILABLE", StoreUnavailable),
        (409, "ABORTED", StoreContended),
        (403, "PERMISSION_DENIED", StoreUnavailable),
        (400, "INVALID_ARGUMENT", StoreRejected),
        (400, "OUT_OF_RANGE", StoreRejected),
        (429, "RESOURCE_EXHAUSTED", StoreThrottled),
    ],
)
async def test_error_mapping(store: GcpStore, status: int, code: str, expected: type) -> None:
    """GCP statuses map to the small set of store errors; messages carry no GCP text."""
    answer = {"error": {"code": status, "message": "secret value p4ss", "status": code}}
    mapped = store._error("secrets.patch", Reply(status, answer, {}))
    assert type(mapped) is expected
    assert "p4ss" not in mapped.message
    store._throttle.clear()


# -- auth and configuration ---------------------------------------------------------------


async def test_expired_token_is_refreshed_once(store: GcpStore, fake: GcpFake, sid: str) -> None:
    """A 401 gets one token refresh (a JWT grant at token_uri) and the call goes through."""
    await _put(store, sid, 1, {"a": "1"})
    issued = fake.tokens_issued
    fake.expire_tokens()
    got = await store.get(sid)
    assert got is not None
    assert fake.tokens_issued == issued + 1


async def test_implicit_auth_uses_application_default_credentials(
    make_store: MakeStore, gcp_key_file: Path, monkeypatch: pytest.MonkeyPatch, sid: str
) -> None:
    """auth_method implicit finds GOOGLE_APPLICATION_CREDENTIALS through google-auth."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcp_key_file))
    store = await make_store(auth_method="implicit", service_account_file=None)
    await _put(store, sid, 1, {"a": "1"})
    got = await store.get(sid)
    assert got is not None


async def test_implicit_without_credentials_is_a_config_error(
    make_store: MakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No application default credentials: a start-up ConfigError that says what to do."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="application default credentials"):
        await make_store(auth_method="implicit", service_account_file=None)


async def test_unreadable_key_file_is_a_config_error(make_store: MakeStore, tmp_path: Path) -> None:
    """A service_account_file that is missing or not a key stops start-up clearly."""
    with pytest.raises(ConfigError, match="cannot read service_account_file"):
        await make_store(service_account_file=str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account"}))
    with pytest.raises(ConfigError, match="not a service-account key"):
        await make_store(service_account_file=str(bad))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"project_id": ""}, "project_id is required"),
        ({"project_id": "p", "auth_method": "service-account"}, "needs service_account_file"),
        ({"project_id": "p", "endpoint_url": "ftp://x"}, "endpoint_url"),
    ],
)
def test_settings_refused_at_start_up(fields: dict[str, Any], needle: str) -> None:
    """Settings GCP would refuse stop start-up with a message naming the field."""
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]))
    with pytest.raises(ConfigError, match=needle):
        GcpStore(GcpStoreSettings(**fields), ctx)


def test_invalid_prefix_names_allowed_characters() -> None:
    """The AWS-style default prefix is refused with the characters GCP allows."""
    with pytest.raises(ValidationError, match="letters, digits, _ and -"):
        GcpStoreSettings(project_id="p", name_prefix="secretmirror/")


def test_location_is_project_and_prefix() -> None:
    """Two prefixes in one project are two locations; the endpoint counts when set."""
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]))
    a = GcpStore(GcpStoreSettings(project_id="p1"), ctx)
    b = GcpStore(GcpStoreSettings(project_id="p1", name_prefix="other-"), ctx)
    assert a.location == "gcp:p1/secretmirror-"
    assert a.location != b.location


def test_missing_extra_names_it(tmp_path: Path) -> None:
    """Without google-auth, building a gcp store is a ConfigError naming secretmirror[gcp]."""
    script = (
        "import sys\n"
        "sys.modules['google.auth'] = None\n"
        "from secretmirror.errors import ConfigError\n"
        "from secretmirror.settings import GcpStoreSettings\n"
        "from secretmirror.stores import build_store\n"
        "from secretmirror.stores.base import StoreContext\n"
        "try:\n"
        "    build_store(GcpStoreSettings(project_id='p'), StoreContext('d', None), '')\n"
        "except ConfigError as exc:\n"
        "    print(exc.message)\n"
    )
    env = {**os.environ, "PYTHONPATH": "daemon"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "pip install 'secretmirror[gcp]'" in out


async def test_payload_is_the_canonical_json(
    store: GcpStore, sdk: secretmanager.SecretManagerServiceClient, gcp_prefix: str, sid: str
) -> None:
    """Other readers of the GCP secret get exactly the values' canonical JSON."""
    values = {"b": "2", "a": "ü"}
    await _put(store, sid, 1, values)
    latest = sdk.access_secret_version(
        request={"name": f"{PARENT}/secrets/{gcp_prefix}{sid}/versions/latest"}
    )
    assert latest.payload.data == canonical(values)
    assert base64.b64encode(latest.payload.data)


async def test_a_write_between_the_listing_and_its_check_is_not_foreign(
    make_store: MakeStore, sid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes the entry after the page was listed: the check looks at the
    labels again instead of calling the newer latest version foreign."""
    lister, writer = await make_store(), await make_store()
    await _put(writer, sid, 1, {"k": "1"})
    access = lister._access
    wrote: list[int] = []

    async def access_after_a_write(name: str, ref: str) -> tuple[int, bytes]:
        if not wrote:
            wrote.append(1)
            await _put(writer, sid, 2, {"k": "2"})  # the page already holds version 1's labels
        return await access(name, ref)

    monkeypatch.setattr(lister, "_access", access_after_a_write)
    listed = {e.secret_id: e async for e in lister.list()}
    assert wrote == [1]
    assert listed[sid] == Entry(sid, 2, _hash(sid, {"k": "2"}))
