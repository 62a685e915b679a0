"""One contract every value store passes, run against every kind in ``tests.stores.KINDS``.

Fenced versions, tombstones, listing, ownership, the size limit and the error
taxonomy. Each kind's module (``tests/stores/<kind>.py``) says where its entries
live and how to tamper with them: by hand with the provider's own API, or with
faults the provider answers as it documents them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from secretmirror.crypto import Keyring, content_hash
from secretmirror.errors import (
    StoreContended,
    StoreForeignEntry,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
)
from secretmirror.model import canonical
from secretmirror.stores.base import PutOutcome, SecretStore, StoreContext
from tests.stores import KINDS, Fault, NoEquivalent, Place

HASH_KEY = secrets.token_bytes(32)

#: Store defects the suite found, per (case, kind) or (case, test id such as "file-5xx"):
#: each case runs as a strict xfail until the store is fixed (then the entry goes, or
#: the xfail fails the run).
DEFECTS: dict[tuple[str, str], str] = {}

OpenStore = Callable[[StoreContext], Awaitable[SecretStore]]


def _hash(secret_id: str, values: dict[str, str]) -> str:
    return content_hash(HASH_KEY, secret_id, canonical(values))


def _ctx(request: pytest.FixtureRequest) -> StoreContext:
    return StoreContext(
        deployment_id=str(uuid.uuid4()),
        keyring=Keyring([secrets.token_bytes(32)]),
        pool=None,
        data_dir=str(request.getfixturevalue("tmp_path")),
        content_hash=lambda secret_id, blob: content_hash(HASH_KEY, secret_id, blob),
    )


@pytest.fixture(params=KINDS)
async def place(request: pytest.FixtureRequest) -> AsyncIterator[Place]:
    case = request.node.originalname
    defect = DEFECTS.get((case, request.node.callspec.id)) or DEFECTS.get((case, request.param))
    if defect is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=defect))
    module: Any = importlib.import_module(f"tests.stores.{request.param}")
    async with module.place(request) as opened:
        yield opened


@pytest.fixture
async def open_store(place: Place) -> AsyncIterator[OpenStore]:
    """Open a store of a deployment at the test's place (another process, or another deployment)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(ctx: StoreContext) -> SecretStore:
            store = place.store(ctx)
            assert isinstance(store, SecretStore)
            await store.open()
            stack.push_async_callback(store.close)
            return store

        yield make


@pytest.fixture
def ctx(request: pytest.FixtureRequest) -> StoreContext:
    return _ctx(request)


@pytest.fixture
async def store(open_store: OpenStore, ctx: StoreContext) -> SecretStore:
    return await open_store(ctx)


def _sid() -> str:
    return str(uuid.uuid4())


async def _put(store: SecretStore, sid: str, version: int, values: dict[str, str]) -> PutOutcome:
    return await store.put(sid, version, values, _hash(sid, values))


async def _listed(store: SecretStore) -> dict[str, Any]:
    return {e.secret_id: e async for e in store.list()}


async def _hook(outcome: Awaitable[Any]) -> Any:
    """Await a hook; skip the case with the hook's reason where the kind has no equivalent."""
    try:
        return await outcome
    except NoEquivalent as exc:
        pytest.skip(str(exc))


@contextlib.asynccontextmanager
async def _answering(
    place: Place, fault: Fault, count: int | None = None
) -> AsyncIterator[float | None]:
    """``place.answering(fault, count)``; skips the case where the kind has no such answer."""
    try:
        hook = place.answering(fault, count)
        hint = await hook.__aenter__()
    except NoEquivalent as exc:
        pytest.skip(str(exc))
    try:
        yield hint
    finally:
        await hook.__aexit__(None, None, None)


def _values_of_size(size: int) -> dict[str, str]:
    """Values whose canonical JSON is exactly ``size`` bytes."""
    return {"k": "x" * (size - len(canonical({"k": ""})))}


# -- fenced versions ------------------------------------------------------------------------


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


# -- tombstones and redelivery ------------------------------------------------------------


async def test_redelivery_after_a_tombstone_changes_nothing(store: SecretStore) -> None:
    """The same delete again, the deleted version again and an older one: all no-ops."""
    sid = _sid()
    await _put(store, sid, 1, {"a": "1"})
    await store.delete(sid, 2)
    await store.delete(sid, 2)
    assert await _put(store, sid, 2, {"a": "2"}) is PutOutcome.UNCHANGED
    assert await _put(store, sid, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    assert await store.get(sid) is None


async def test_an_older_delete_leaves_a_newer_version(store: SecretStore) -> None:
    """A delete of a version older than the stored one arriving late is ignored."""
    sid = _sid()
    await _put(store, sid, 3, {"a": "three"})
    await store.delete(sid, 2)
    got = await store.get(sid)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "three"})


async def test_a_delete_at_the_held_version_leaves_a_tombstone(store: SecretStore) -> None:
    """A delete at the version the entry holds deletes it (a backup job with
    ``delete_secrets`` empties the source at the version it copied), and that version
    put again does not bring it back."""
    sid = _sid()
    await _put(store, sid, 4, {"a": "four"})
    await store.delete(sid, 4)
    assert await store.get(sid) is None
    assert await _put(store, sid, 4, {"a": "four"}) is PutOutcome.UNCHANGED
    assert await store.get(sid) is None
    listed = [e async for e in store.list() if e.secret_id == sid]
    assert [(e.version, e.deleted) for e in listed] in ([], [(4, True)])


async def test_a_tombstone_lists_as_deleted_at_its_version(store: SecretStore) -> None:
    """A tombstone lists as deleted at the delete's version; a revived entry lists live."""
    gone, back = _sid(), _sid()
    for sid in (gone, back):
        await _put(store, sid, 1, {"a": "1"})
        await store.delete(sid, 2)
    await _put(store, back, 3, {"a": "3"})
    listed = await _listed(store)
    assert (listed[gone].deleted, listed[gone].version) == (True, 2)
    assert (listed[back].deleted, listed[back].version) == (False, 3)
    assert listed[back].hash in (_hash(back, {"a": "3"}), None)


async def test_listing_after_a_redelivered_older_version_keeps_the_newest(
    store: SecretStore,
) -> None:
    """An older version delivered again does not show in the listing."""
    sid = _sid()
    await _put(store, sid, 2, {"a": "2"})
    await _put(store, sid, 1, {"a": "1"})
    await _put(store, sid, 2, {"a": "2"})
    entry = (await _listed(store))[sid]
    assert (entry.deleted, entry.version) == (False, 2)
    assert entry.hash in (_hash(sid, {"a": "2"}), None)


async def test_another_process_keeps_the_fence(
    store: SecretStore, open_store: OpenStore, ctx: StoreContext
) -> None:
    """A fresh process of the deployment (nothing remembered) honours versions and tombstones."""
    live, gone = _sid(), _sid()
    await _put(store, live, 3, {"a": "3"})
    await _put(store, gone, 1, {"a": "1"})
    await store.delete(gone, 2)
    fresh = await open_store(ctx)
    assert await _put(fresh, live, 2, {"a": "2"}) is PutOutcome.UNCHANGED
    assert await _put(fresh, live, 3, {"a": "3"}) is PutOutcome.UNCHANGED
    assert await _put(fresh, gone, 1, {"a": "1"}) is PutOutcome.UNCHANGED
    await fresh.delete(gone, 2)
    assert await fresh.get(gone) is None
    got = await fresh.get(live)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "3"})
    assert await _put(fresh, gone, 3, {"a": "back"}) is PutOutcome.WRITTEN
    got = await store.get(gone)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "back"})


async def test_a_listing_teaches_a_process_what_another_wrote(
    store: SecretStore, open_store: OpenStore, ctx: StoreContext
) -> None:
    """After a listing, a process fences on what another process of the deployment wrote."""
    newer, deleted = _sid(), _sid()
    for sid in (newer, deleted):
        await _put(store, sid, 1, {"a": "1"})
    other = await open_store(ctx)
    await _put(other, newer, 3, {"a": "3"})
    await other.delete(deleted, 4)
    await _listed(store)
    assert await _put(store, newer, 2, {"a": "2"}) is PutOutcome.UNCHANGED
    assert await _put(store, deleted, 3, {"a": "3"}) is PutOutcome.UNCHANGED
    got = await store.get(newer)
    assert got is not None
    assert (got.version, got.values) == (3, {"a": "3"})
    assert await store.get(deleted) is None


async def test_shared_entries_trust_the_entry_not_what_a_process_remembers(
    open_store: OpenStore, ctx: StoreContext
) -> None:
    """``shared_entries`` (a mirror by name: secrets write an entry in turn, from any
    process): a process that wrote an entry and then saw another process write a newer
    version never lets its late, older tombstone or put undo the newer one."""
    shared = dataclasses.replace(ctx, shared_entries=True)
    one, two = await open_store(shared), await open_store(shared)
    sid = _sid()
    await _put(one, sid, 5, {"a": "5"})
    assert await _put(two, sid, 7, {"a": "7"}) is PutOutcome.WRITTEN
    await one.delete(sid, 6)
    assert await _put(one, sid, 6, {"a": "6"}) is PutOutcome.UNCHANGED
    for reader in (one, two):
        got = await reader.get(sid)
        assert got is not None
        assert (got.version, got.values) == (7, {"a": "7"})
    await two.delete(sid, 8)
    assert await _put(one, sid, 7, {"a": "7"}) is PutOutcome.UNCHANGED
    assert await one.get(sid) is None


# -- ownership ------------------------------------------------------------------------------


async def test_another_deployments_entry_is_never_touched(
    request: pytest.FixtureRequest, place: Place, store: SecretStore, open_store: OpenStore
) -> None:
    """Another deployment's entry is not listed or served; ours never writes or deletes it."""
    sid = _sid()
    other = await open_store(_ctx(request))
    await _put(other, sid, 4, {"theirs": "x"})
    assert sid not in await _listed(store)
    assert await store.get(sid) is None
    if place.namespaced:  # ours sits beside theirs
        assert await _put(store, sid, 5, {"a": "ours"}) is PutOutcome.WRITTEN
        await store.delete(sid, 6)
    else:
        with pytest.raises(StoreForeignEntry):
            await _put(store, sid, 5, {"a": "ours"})
        with pytest.raises(StoreForeignEntry):
            await store.delete(sid, 6)
        assert sid not in await _listed(store)
    theirs = await other.get(sid)
    assert theirs is not None
    assert (theirs.version, theirs.values) == (4, {"theirs": "x"})


async def test_an_entry_made_by_hand_is_never_touched(place: Place, store: SecretStore) -> None:
    """An entry at our name made with the provider's own API: never written, deleted or listed."""
    sid = _sid()
    await _hook(place.plant_foreign(sid))
    before = await place.raw(sid)
    with pytest.raises(StoreForeignEntry):
        await _put(store, sid, 1, {"a": "ours"})
    with pytest.raises(StoreForeignEntry):
        await store.delete(sid, 2)
    assert sid not in await _listed(store)
    assert await store.get(sid) is None
    assert await place.raw(sid) == before


# -- the size limit -------------------------------------------------------------------------


async def test_a_value_over_the_limit_is_rejected_and_nothing_written(store: SecretStore) -> None:
    """One byte over ``max_value_bytes``: StoreRejected, the entry keeps what it held."""
    limit = store.max_value_bytes
    if limit is None:
        pytest.skip(
            f"{store.type} has no size limit of its own "
            "(test_a_value_at_the_limit_round_trips writes 1 MiB)"
        )
    kept, fresh = _sid(), _sid()
    await _put(store, kept, 1, {"a": "1"})
    for sid in (kept, fresh):
        with pytest.raises(StoreRejected):
            await _put(store, sid, 2, _values_of_size(limit + 1))
    got = await store.get(kept)
    assert got is not None
    assert (got.version, got.values) == (1, {"a": "1"})
    assert await store.get(fresh) is None
    assert fresh not in await _listed(store)


async def test_a_value_at_the_limit_round_trips(store: SecretStore) -> None:
    """Exactly ``max_value_bytes`` (or 1 MiB where the store has no limit) is written and read."""
    values = _values_of_size(store.max_value_bytes or 1024 * 1024)
    sid = _sid()
    assert await _put(store, sid, 1, values) is PutOutcome.WRITTEN
    got = await store.get(sid)
    assert got is not None
    assert got.values == values


# -- errors ---------------------------------------------------------------------------------


async def _every_call_is_unavailable(store: SecretStore, held: str, fresh: str) -> None:
    """health, put (new and held entry), get, delete and list all raise StoreUnavailable."""
    with pytest.raises(StoreUnavailable):
        await store.health()
    with pytest.raises(StoreUnavailable):
        await _put(store, fresh, 1, {"a": "1"})
    with pytest.raises(StoreUnavailable):
        await _put(store, held, 2, {"a": "2"})
    with pytest.raises(StoreUnavailable):
        await store.get(held)
    with pytest.raises(StoreUnavailable):
        await store.delete(held, 3)
    with pytest.raises(StoreUnavailable):
        await _listed(store)


async def test_an_unreachable_store_is_unavailable(place: Place, ctx: StoreContext) -> None:
    """Nothing answers: open (where it connects) and every operation raise StoreUnavailable."""
    store = place.unreachable(ctx)
    try:
        with contextlib.suppress(StoreUnavailable):
            await store.open()
        sid = _sid()
        await _every_call_is_unavailable(store, sid, sid)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "fault", [Fault.UNAUTHENTICATED, Fault.FORBIDDEN, Fault.SERVER_ERROR], ids=lambda f: f.value
)
async def test_refused_credentials_and_server_errors_are_unavailable(
    place: Place, store: SecretStore, fault: Fault
) -> None:
    """401, 403 and 5xx (or their equivalents) make every call StoreUnavailable, until they end."""
    held, fresh = _sid(), _sid()
    await _put(store, held, 1, {"a": "1"})
    async with _answering(place, fault):
        await _every_call_is_unavailable(store, held, fresh)
    await store.health()
    assert await _put(store, held, 2, {"a": "2"}) is PutOutcome.WRITTEN
    assert await _put(store, fresh, 1, {"a": "1"}) is PutOutcome.WRITTEN
    got = await store.get(held)
    assert got is not None
    assert (got.version, got.values) == (2, {"a": "2"})


async def test_a_listing_asks_a_failed_read_again(place: Place, store: SecretStore) -> None:
    """A 5xx (or its equivalent) answering one read of a listing: the read is asked again
    and the listing completes as if nothing had failed (a verify or repair used to end at
    the first failed page)."""
    ids = [_sid() for _ in range(3)]
    for n, sid in enumerate(ids):
        await _put(store, sid, 1, {"a": str(n)})
    async with _answering(place, Fault.SERVER_ERROR, count=1):
        listed = await _listed(store)
    assert {sid: listed[sid].version for sid in ids} == dict.fromkeys(ids, 1)


async def test_not_found_reads_as_missing(place: Place, store: SecretStore) -> None:
    """The provider answering 'no such entry': get is None and a delete has nothing to do."""
    sid = _sid()
    async with _answering(place, Fault.NOT_FOUND):
        assert await store.get(sid) is None
        await store.delete(sid, 2)
    assert await _put(store, sid, 3, {"a": "3"}) is PutOutcome.WRITTEN


async def test_a_lost_race_is_contended_and_the_store_stays_up(
    place: Place, store: SecretStore
) -> None:
    """Every write losing to a concurrent change: StoreContended, reads still served."""
    held, fresh = _sid(), _sid()
    await _put(store, held, 1, {"a": "1"})
    async with _answering(place, Fault.CONTENDED):
        with pytest.raises(StoreContended):
            await _put(store, fresh, 1, {"a": "1"})
        await store.health()
        got = await store.get(held)
        assert got is not None
        assert got.version == 1
    assert await _put(store, fresh, 1, {"a": "1"}) is PutOutcome.WRITTEN
    got = await store.get(fresh)
    assert got is not None
    assert (got.version, got.values) == (1, {"a": "1"})


async def test_throttling_is_store_throttled_carrying_the_hint(
    place: Place, store: SecretStore
) -> None:
    """429 (or the provider's throttling answer): StoreThrottled with its Retry-After.

    One rule for every provider: the store then holds its calls until the hint passes,
    even once the provider would answer again.
    """
    sid = _sid()
    async with _answering(place, Fault.THROTTLED) as hint:
        with pytest.raises(StoreThrottled) as raised:
            await _put(store, sid, 1, {"a": "1"})
        with pytest.raises(StoreThrottled):
            await store.get(sid)
    retry_after = raised.value.retry_after_s
    assert retry_after is not None
    if hint is None:  # the provider sends none: the store waits a while of its own
        assert 0 < retry_after <= 60
        return
    assert retry_after == pytest.approx(hint, abs=0.5)
    with pytest.raises(StoreThrottled):  # the store holds its calls until the hint passes
        await store.get(sid)
