"""``retry.asked_again``: which failures a listing's read or a job's write asks again, and how long
it waits between (pure logic: the sleeps are recorded, not slept)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from secretmirror import retry
from secretmirror.errors import StoreError, StoreRejected, StoreThrottled, StoreUnavailable


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)
    return waits


def failing(*errors: StoreError) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    """A call that raises ``errors`` in turn, then answers "ok"; and its count of calls."""
    calls = [0]

    async def call() -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return "ok"

    return calls, call


async def test_an_unavailable_store_is_asked_again_after_each_wait(slept: list[float]) -> None:
    calls, call = failing(StoreUnavailable("5xx"), StoreUnavailable("5xx"))
    assert await retry.asked_again(call) == "ok"
    assert (calls[0], slept) == (3, list(retry.AGAIN_WAITS_S))


async def test_a_store_that_stays_down_fails_after_the_waits(slept: list[float]) -> None:
    calls, call = failing(*[StoreUnavailable("down")] * 5)
    with pytest.raises(StoreUnavailable):
        await retry.asked_again(call, waits_out_throttling=True)
    assert (calls[0], slept) == (3, list(retry.AGAIN_WAITS_S))


async def test_a_permanent_failure_is_never_asked_again(slept: list[float]) -> None:
    calls, call = failing(StoreRejected("too large"))
    with pytest.raises(StoreRejected):
        await retry.asked_again(call, waits_out_throttling=True)
    assert (calls[0], slept) == (1, [])


async def test_a_read_counts_throttling_as_a_failure_that_may_pass(slept: list[float]) -> None:
    """The store itself holds its next call for the hint: a read waits only the short waits."""
    calls, call = failing(*[StoreThrottled("429", retry_after_s=30.0)] * 3)
    with pytest.raises(StoreThrottled):
        await retry.asked_again(call)
    assert (calls[0], slept) == (3, list(retry.AGAIN_WAITS_S))


async def test_a_write_waits_throttling_out_as_the_hint_says(slept: list[float]) -> None:
    hinted = [StoreThrottled("429", retry_after_s=2.0), StoreThrottled("429")]
    calls, call = failing(*hinted, StoreUnavailable("5xx"))
    assert await retry.asked_again(call, waits_out_throttling=True) == "ok"
    assert (calls[0], slept) == (4, [2.0, 1.0, retry.AGAIN_WAITS_S[0]])


async def test_a_write_throttled_past_its_waits_fails(slept: list[float]) -> None:
    calls, call = failing(*[StoreThrottled("429", retry_after_s=1.5)] * 9)
    with pytest.raises(StoreThrottled):
        await retry.asked_again(call, waits_out_throttling=True)
    assert (calls[0], slept) == (retry.THROTTLED_WAITS + 1, [1.5] * retry.THROTTLED_WAITS)


async def test_no_try_starts_after_until(slept: list[float]) -> None:
    """A wait that would end after ``until`` (a job's lease) is not waited: the failure stands."""
    calls, call = failing(StoreThrottled("429", retry_after_s=0.5), StoreThrottled("429", 60.0))
    with pytest.raises(StoreThrottled) as raised:
        await retry.asked_again(call, waits_out_throttling=True, until=time.monotonic() + 30)
    assert raised.value.retry_after_s == 60.0
    assert (calls[0], slept) == (2, [0.5])
