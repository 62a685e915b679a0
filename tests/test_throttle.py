"""The one throttling rule of the cloud stores (``ratelimit.Throttle``), without a provider.

A throttle answer holds every further call of the store until the hint
passes: short holds are waited out locally (off the store's clock), long ones
and ones past the caller's time limit fail fast as ``StoreThrottled``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from secretmirror.errors import StoreThrottled, StoreUnavailable
from secretmirror.ratelimit import HOLD_MAX_S, Throttle
from secretmirror.remote_clock import RemoteClock


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_no_hold_passes_at_once() -> None:
    """A store that was never throttled is called without waiting."""
    started = time.monotonic()
    await Throttle().wait()
    assert time.monotonic() - started < 0.5  # a hold is a whole hint (1 s without one)


async def test_a_short_hold_is_waited_out() -> None:
    """A hold shorter than the wait limit delays the next call by the hint."""
    throttle = Throttle()
    throttle.noted(StoreThrottled("slow down", retry_after_s=0.3))
    started = time.monotonic()
    await throttle.wait()
    assert time.monotonic() - started >= 0.25


async def test_a_long_hold_fails_fast_with_what_is_left() -> None:
    """A hold beyond the wait limit raises StoreThrottled at once, carrying the time left."""
    clock = _Clock()
    throttle = Throttle(wait_max_s=5, clock=clock)
    throttle.hold(30)
    clock.now += 10
    with pytest.raises(StoreThrottled) as held:
        await throttle.wait()
    assert held.value.retry_after_s == pytest.approx(20)


def test_a_hint_is_capped_and_a_missing_one_is_a_second() -> None:
    """No hint holds the store longer than HOLD_MAX_S; no hint at all holds it one second."""
    clock = _Clock()
    throttle = Throttle(clock=clock)
    throttle.hold(10_000)
    assert throttle._until - clock.now == HOLD_MAX_S
    throttle = Throttle(clock=clock)
    throttle.noted(StoreThrottled("slow down"))
    assert throttle._until - clock.now == 1.0


def test_other_errors_hold_nothing() -> None:
    """Only StoreThrottled holds the store."""
    throttle = Throttle()
    throttle.noted(StoreUnavailable("down"))
    assert throttle._until == 0.0


async def test_a_hold_past_the_callers_limit_is_throttled_not_a_timeout() -> None:
    """A caller whose time limit ends before the hold does is told throttled at once."""
    throttle = Throttle()
    throttle.hold(1.0)
    clock = RemoteClock(10.0, wall_s=0.5)
    with pytest.raises(StoreThrottled) as raised:
        async with clock.running():
            await throttle.wait()
    assert not clock.expired
    assert raised.value.local  # waited out but for the caller's limit: nothing was sent


async def test_a_hold_past_what_is_ever_waited_is_the_stores_throttling() -> None:
    """A hold longer than this process ever waits is the store's answer (an attempt)."""
    throttle = Throttle()
    throttle.hold(60.0)
    with pytest.raises(StoreThrottled) as raised:
        await throttle.wait()
    assert not raised.value.local


async def test_waiting_out_a_hold_does_not_count_against_the_store() -> None:
    """The local wait stops the store's clock: a 0.3 s hold fits a 0.2 s remote budget."""
    throttle = Throttle()
    throttle.hold(0.3)
    clock = RemoteClock(0.2)
    async with clock.running():
        await throttle.wait()
        await asyncio.sleep(0)
    assert clock.queued_s >= 0.25
