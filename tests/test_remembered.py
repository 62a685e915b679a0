"""The bounded memory of entry states a cloud store keeps in one process (unit, no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from secretmirror.stores.remembered import Remembered


def _filled(most: int, *secret_ids: str) -> Remembered[int]:
    remembered: Remembered[int] = Remembered(most)
    for number, secret_id in enumerate(secret_ids):
        remembered.remember(secret_id, number)
    return remembered


def _complete_listing(remembered: Remembered[int], *shown: str) -> None:
    listing = remembered.listing(lambda state: True)
    for secret_id in shown:
        listing.saw(secret_id)
    listing.complete()


def test_eviction_drops_the_least_recently_used() -> None:
    """Past ``most``, the entry used longest ago goes; ``get`` counts as a use."""
    remembered = _filled(3, "a", "b", "c")
    assert remembered.get("a") == 0
    remembered.remember("d", 3)
    assert [remembered.peek(sid) for sid in ("b", "a", "c", "d")] == [None, 0, 2, 3]
    assert len(remembered) == 3


def test_peek_is_not_a_use() -> None:
    """``peek`` reads without saving the entry from eviction."""
    remembered = _filled(2, "a", "b")
    assert remembered.peek("a") == 0
    remembered.remember("c", 2)
    assert ("a" in remembered, "b" in remembered) == (False, True)


def test_remember_again_refreshes_and_replaces() -> None:
    """Remembering a known entry replaces its state and makes it the most recent."""
    remembered = _filled(2, "a", "b")
    remembered.remember("a", 10)
    remembered.remember("c", 2)
    assert [remembered.peek(sid) for sid in ("a", "b", "c")] == [10, None, 2]


def test_a_complete_listing_forgets_believed_entries_it_did_not_show() -> None:
    """Believed entries missing from a complete listing are forgotten; others stay."""
    remembered = _filled(10, "shown", "gone", "not-believed")
    listing = remembered.listing(lambda state: state != 2)
    listing.saw("shown")
    listing.complete()
    kept = tuple(sid in remembered for sid in ("shown", "gone", "not-believed"))
    assert kept == (True, False, True)


def test_an_unfinished_listing_forgets_nothing() -> None:
    """Only a listing that ran to the end tells what is gone."""
    remembered = _filled(10, "a", "b")
    remembered.listing(lambda state: True).saw("a")
    assert (len(remembered), remembered.listed_all) == (2, False)


def test_complete_listing_sets_listed_all_and_eviction_clears_it() -> None:
    """A complete listing within the bound sets the flag; dropping an entry for space clears it."""
    remembered = _filled(3, "a", "b")
    assert not remembered.listed_all
    _complete_listing(remembered, "a", "b")
    assert remembered.listed_all
    remembered.remember("c", 2)
    assert remembered.listed_all
    remembered.remember("d", 3)
    assert not remembered.listed_all


def test_forgetting_one_entry_keeps_listed_all() -> None:
    """A forgotten entry (failed write, changed behind our back) does not clear the flag."""
    remembered = _filled(3, "a", "b")
    _complete_listing(remembered, "a", "b")
    remembered.forget("a")
    assert (remembered.listed_all, "a" in remembered) == (True, False)


def test_only_entries_never_forgotten_since_the_listing_count_as_unlisted() -> None:
    """An entry forgotten after, or during, a complete listing may exist: it is not new."""
    remembered = _filled(10, "a", "b")
    listing = remembered.listing(lambda state: True)
    listing.saw("a")
    listing.saw("b")
    remembered.forget("b")  # the listing disagreed with what was remembered of it
    listing.complete()
    remembered.forget("a")
    assert [remembered.unlisted(sid) for sid in ("a", "b", "c")] == [False, False, True]


def test_a_listing_that_fills_the_memory_does_not_set_listed_all() -> None:
    """At the bound some entry may have been dropped, so unknown does not mean new."""
    remembered = _filled(2, "a", "b")
    _complete_listing(remembered, "a", "b")
    assert not remembered.listed_all


async def test_writing_keeps_the_entry_when_the_body_succeeds() -> None:
    """A write that ends normally keeps what it remembered."""
    remembered = _filled(10, "a")
    async with remembered.writing("a"):
        remembered.remember("a", 5)
    assert remembered.peek("a") == 5


async def test_writing_forgets_the_entry_when_the_body_raises() -> None:
    """A failed write may have landed: the entry is forgotten and the error passes through."""
    remembered = _filled(10, "a", "b")
    with pytest.raises(LookupError):
        async with remembered.writing("a"):
            raise LookupError
    assert ("a" in remembered, "b" in remembered) == (False, True)


async def test_writing_forgets_the_entry_when_cancelled() -> None:
    """A write cancelled mid-way (a caller's timeout) forgets the entry, even one it just learnt."""
    remembered = _filled(10, "a")
    inside, never = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with remembered.writing("a"):
            remembered.remember("a", 5)
            inside.set()
            await never.wait()

    task = asyncio.create_task(write())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "a" not in remembered


async def test_writing_releases_the_lock_after_a_failure() -> None:
    """The next writer of the key gets in after one that raised."""
    remembered: Remembered[int] = Remembered()
    with pytest.raises(LookupError):
        async with remembered.writing("a"):
            raise LookupError
    async with asyncio.timeout(5), remembered.writing("a"):
        remembered.remember("a", 1)
    assert remembered.peek("a") == 1


async def test_writers_of_one_key_run_one_at_a_time() -> None:
    """A second writer of a key waits until the first leaves."""
    remembered: Remembered[int] = Remembered()
    log: list[str] = []
    first_in, release, second_trying = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with remembered.writing("k"):
            log.append("first in")
            first_in.set()
            await release.wait()
            log.append("first out")

    async def second() -> None:
        second_trying.set()
        async with remembered.writing("k"):
            log.append("second in")

    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        tasks.create_task(first())
        await first_in.wait()
        tasks.create_task(second())
        # Runs once the second writer has blocked (it does not yield before the lock).
        await second_trying.wait()
        assert log == ["first in"]
        release.set()
    assert log == ["first in", "first out", "second in"]


async def test_writers_of_two_keys_do_not_wait_for_each_other() -> None:
    """A held key does not delay a writer of another key."""
    remembered: Remembered[int] = Remembered()
    first_in, release, second_in = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with remembered.writing("k1"):
            first_in.set()
            await release.wait()

    async def second() -> None:
        async with remembered.writing("k2"):
            second_in.set()

    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        tasks.create_task(first())
        await first_in.wait()
        tasks.create_task(second())
        await second_in.wait()  # while the first still holds k1
        assert not release.is_set()
        release.set()
