"""One contract every value store passes: fenced versions, tombstones, listing, ownership."""

from __future__ import annotations

import base64
import importlib
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from secretmirror.crypto import Keyring, content_hash
from secretmirror.model import canonical
from secretmirror.stores.base import PutOutcome, SecretStore, StoreContext
from tests.stores import KINDS

HASH_KEY = secrets.token_bytes(32)


def _hash(secret_id: str, values: dict[str, str]) -> str:
    return content_hash(HASH_KEY, secret_id, canonical(values))


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SecretStore]:
    ctx = StoreContext(
        deployment_id=str(uuid.uuid4()),
        keyring=Keyring([base64.b64decode(base64.b64encode(secrets.token_bytes(32)))]),
        pool=None,
        data_dir=str(request.getfixturevalue("tmp_path")),
    )
    module: Any = importlib.import_module(f"tests.stores.{request.param}")
    async with module.make(ctx, request) as opened:
        assert isinstance(opened, SecretStore)
        yield opened


def _sid() -> str:
    return str(uuid.uuid4())


async def _put(store: SecretStore, sid: str, version: int, values: dict[str, str]) -> PutOutcome:
    return await store.put(sid, version, values, _hash(sid, values))


async def test_put_then_get(store: SecretStore) -> None:
    """A put version reads back with its values and hash."""
    sid = _sid()
    values = {"user": "app", "password": "p@ss w0rd ü"}
    assert await _put(store, sid, 1, values) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values, got.hash) == (1, values, _hash(sid, values))


async def test_get_missing_is_none(store: SecretStore) -> None:
    """A secret the store never saw reads as None."""
    assert await store.get(_sid()) is None


async def test_redelivery_is_a_noop(store: SecretStore) -> None:
    """Putting the version the store already holds changes nothing."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    got = await store.get(sid)
    assert got is not None
    assert got.values == {"a": "1"}


async def test_never_goes_back(store: SecretStore) -> None:
    """An older version arriving late is ignored."""
    sid = _sid()
    await _put(store, sid, 3, {"a": "three"})
    assert await _put(store, sid, 2, {"a": "two"}) is PutOutcome.UNCHANGED
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "three"})


async def test_newer_version_replaces(store: SecretStore) -> None:
    """A newer version replaces all values."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1", "b": "2"})
    assert await _put(store, sid, 2, {"c": "3"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (2, {"c": "3"})


async def test_delete_leaves_versioned_tombstone(store: SecretStore) -> None:
    """After a delete the entry reads as missing and an older put does not revive it."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await store.delete(sid, 2)
    assert await store.get(sid) is None
    await _put(store, sid, 1, {"a": "1"})
    assert await store.get(sid) is None


async def test_put_after_tombstone_with_newer_version(store: SecretStore) -> None:
    """A version newer than the tombstone brings the entry back."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await store.delete(sid, 2)
    assert await _put(store, sid, 3, {"a": "back"}) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "back"})


async def test_delete_of_missing_is_safe(store: SecretStore) -> None:
    """Deleting an entry the store never held succeeds."""
    await store.delete(_sid(), 1)


async def test_list_reports_versions_and_hashes(store: SecretStore) -> None:
    """Listing returns every live entry of this deployment with version and hash."""
    expected = {}
    for i in range(5):
        sid = _sid()
        values = {"k": f"v{i}"}
        await _put(store, sid, i + 1, values)
        expected[sid] = (i + 1, _hash(sid, values))
    gone = _sid()
    await _put(store, gone, 1, {"k": "x"})
    await store.delete(gone, 2)
    listed = {e.secret_id: e async for e in store.list()}
    live = {sid: (e.version, e.hash) for sid, e in listed.items() if not e.deleted}
    for sid, (version, hash_) in expected.items():
        assert live[sid][0] == version
        assert live[sid][1] in (hash_, None)
    assert gone not in live


async def test_health(store: SecretStore) -> None:
    """A reachable store is healthy."""
    await store.health()
