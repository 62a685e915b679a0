"""A store in its role: up/down tracking, timeouts and metrics (pure logic, a scripted back-end)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from secretmirror import metrics
from secretmirror.errors import (
    StoreCutOff,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
    may_have_landed,
)
from secretmirror.ratelimit import KeyedLock, TokenBucket
from secretmirror.stores.base import Entry, PutOutcome, StoredValue
from secretmirror.stores.instrumented import RoleStore


class Scripted:
    """Answers put with the next scripted outcome: an exception to raise or a result."""

    type = "scripted"
    location = "scripted://"
    max_value_bytes = None

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def health(self) -> None: ...

    async def put(self, *_args: Any) -> PutOutcome:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            await asyncio.sleep(3600)
        return PutOutcome.WRITTEN

    async def get(self, secret_id: str) -> StoredValue | None:
        return None

    async def delete(self, secret_id: str, version: int) -> None: ...

    async def list(self) -> AsyncIterator[Entry]:
        for _ in ():
            yield _


def store_up_metric(role: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("secretmirror_store_up", {"store": role})


async def test_success_after_an_outage_marks_the_store_up_again() -> None:
    """An unavailable answer marks the store down; the next success marks it up."""
    role = RoleStore("backup", Scripted(StoreUnavailable("gone"), "ok"))  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        await role.put("s", 1, {"k": "v"}, "h")
    assert (role.up, role.last_error, store_up_metric("backup")) == (False, "gone", 0)
    assert await role.put("s", 1, {"k": "v"}, "h") is PutOutcome.WRITTEN
    assert (role.up, role.last_error, store_up_metric("backup")) == (True, None, 1)


async def test_a_timeout_counts_as_unavailable() -> None:
    """A call that does not answer within the timeout marks the store down."""
    role = RoleStore("primary", Scripted("hang"), timeout_s=0.05)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable, match="did not answer in time"):
        await role.put("s", 1, {"k": "v"}, "h")
    assert role.up is False


async def test_a_rejection_does_not_mark_the_store_down() -> None:
    """A permanent rejection is about one request; the store itself answered."""
    role = RoleStore("backup", Scripted(StoreRejected("no")))  # type: ignore[arg-type]
    with pytest.raises(StoreRejected):
        await role.put("s", 1, {"k": "v"}, "h")
    assert role.up is True


class Queued:
    """A back-end whose put first queues locally (a pacing slot), then calls its remote."""

    type = "queued"
    location = "queued://"
    max_value_bytes = None

    def __init__(self, queue_s: float, remote_s: float) -> None:
        self.bucket = TokenBucket(1 / queue_s)
        self.bucket.reserve()  # the slot ahead of every put: the first put waits queue_s
        self.remote_s = remote_s
        self.lock = KeyedLock()

    async def put(self, secret_id: str, *_args: Any) -> PutOutcome:
        async with self.lock.hold(secret_id):
            await self.bucket.acquire()
            await asyncio.sleep(self.remote_s)  # the remote's own time
        return PutOutcome.WRITTEN


def queue_observations(role: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("secretmirror_store_queue_seconds_count", {"store": role})
        or 0.0
    )


async def test_queueing_for_a_slot_does_not_count_against_the_store() -> None:
    """A put queued locally past the timeout still succeeds: only the remote's time counts."""
    # Queued twice the budget; the remote's 0.05 s leaves 0.55 s to a stalled machine.
    role = RoleStore("backup", Queued(queue_s=1.2, remote_s=0.05), timeout_s=0.6)  # type: ignore[arg-type]
    before = queue_observations("backup")
    assert await role.put("s", 1, {"k": "v"}, "h") is PutOutcome.WRITTEN
    assert (role.up, store_up_metric("backup")) == (True, 1)
    assert queue_observations("backup") == before + 1


async def test_waiting_for_the_entry_lock_does_not_count_against_the_store() -> None:
    """Puts of one entry queued behind each other each get the whole budget for themselves."""
    # The last waits 0.6 s, past the 0.5 s budget; each remote's 0.15 s leaves 0.35 s.
    store = Queued(queue_s=0.001, remote_s=0.15)
    role = RoleStore("backup", store, timeout_s=0.5)  # type: ignore[arg-type]
    outcomes = await asyncio.gather(*(role.put("same", 1, {"k": "v"}, "h") for _ in range(4)))
    assert outcomes == [PutOutcome.WRITTEN] * 4
    assert role.up is True


async def test_a_callers_limit_spent_queueing_is_throttling_not_an_outage() -> None:
    """The caller's time limit running out behind the entry lock: throttled, the store stays up."""
    store = Queued(queue_s=0.001, remote_s=1.0)
    role = RoleStore("primary", store, timeout_s=10)  # type: ignore[arg-type]
    ahead = asyncio.create_task(role.put("s", 1, {"k": "v"}, "h"))
    while not len(store.lock):  # until it holds the entry's lock
        await asyncio.sleep(0.001)
    with pytest.raises(StoreThrottled, match="queued locally") as raised:
        await role.put("s", 2, {"k": "v"}, "h", timeout_s=0.1)
    assert raised.value.local  # nothing was sent: not an attempt of the write
    assert await ahead is PutOutcome.WRITTEN
    assert (role.up, store_up_metric("primary")) == (True, 1)


async def test_a_callers_limit_that_cuts_a_request_off_is_a_write_that_may_land() -> None:
    """The caller's limit running out while the request is in flight, after queueing (the
    store's own time not spent): throttled, the store stays up, but a write that may still
    land, so its caller keeps the lease as after a timeout."""
    role = RoleStore("primary", Queued(queue_s=0.2, remote_s=3600), timeout_s=10)  # type: ignore[arg-type]
    with pytest.raises(StoreCutOff, match="cut off by the time limit") as raised:
        await role.put("s", 1, {"k": "v"}, "h", timeout_s=0.5)
    assert may_have_landed(raised.value)
    assert not raised.value.local
    assert (role.up, store_up_metric("primary")) == (True, 1)


async def test_a_limit_on_the_whole_call_leaves_the_store_its_own_time() -> None:
    """``within_s`` (a worker's lease) cutting off a request that never queued: the store had
    not used its own timeout, so it stays up, and the write may still land."""
    role = RoleStore("backup", Scripted("hang"), timeout_s=10)  # type: ignore[arg-type]
    with pytest.raises(StoreCutOff):
        await role.put("s", 1, {"k": "v"}, "h", within_s=0.2)
    assert (role.up, store_up_metric("backup")) == (True, 1)


async def test_a_slot_beyond_the_callers_limit_is_refused_at_once() -> None:
    """A pacing slot further ahead than the caller's limit: throttled now, and the slot given
    back for the next caller."""
    store = Queued(queue_s=5.0, remote_s=0.0)
    role = RoleStore("primary", store, timeout_s=10)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreThrottled, match="past the time limit") as raised:
        await role.put("s", 1, {"k": "v"}, "h", timeout_s=2)
    assert raised.value.local
    assert asyncio.get_running_loop().time() - started < 2
    assert role.up is True
    assert 4 < store.bucket.reserve() <= 5  # the slot given back, not one behind it


async def test_a_remote_that_hangs_after_queueing_is_still_down() -> None:
    """Queueing first does not hide a remote that then does not answer."""
    role = RoleStore("backup", Queued(queue_s=0.2, remote_s=3600), timeout_s=0.1)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable, match="did not answer in time"):
        await role.put("s", 1, {"k": "v"}, "h")
    assert role.up is False


async def test_a_cancelled_waiter_gives_its_slot_back() -> None:
    """A waiter cancelled before its slot leaves the slot to the next caller."""
    bucket = TokenBucket(2)  # a slot every 0.5 s
    bucket.reserve()
    first = asyncio.create_task(bucket.acquire())  # slot at +0.5 s
    await asyncio.sleep(0.05)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert bucket.reserve() < 0.5  # the returned slot (+0.5 s from the start), not +1.0 s
    assert bucket.reserve() > 0.5  # then the queue goes on behind it
