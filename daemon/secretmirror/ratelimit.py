"""Pacing and serialization primitives shared by the store back-ends.

``TokenBucket`` keeps a store's writes under a provider's request quota (AWS
Secrets Manager: about 50 writes/s per account and region, shared by every
client). It *reserves* slots: each caller is told how long to wait for its
own slot, so N concurrent callers are spread over time instead of all waking
at once and bursting together. The default burst of one makes it pure pacing:
no one-second window ever holds more than ``rate`` (+1 at the boundary) writes.
A waiter that is cancelled before its slot comes gives the slot back: the
next reservation takes it instead of queueing behind it, so callers that give
up (a caller's time limit) do not leave holes that slow everyone after them.
A caller whose slot lies beyond its time limit gives it back at once and is
told it is throttled, instead of waiting out the limit first.

Both wait *locally* (``remote_clock.waiting_locally``): the time a store call
spends queued here never counts against the store's own timeout.

``Throttle`` is a provider's "slow down" (a 429 with its Retry-After): the
store holds every further call until the hint passes. A short hold is waited
out locally, so quota refills of a second or so cost no failed delivery; a
long one (or one past the caller's time limit) fails fast as
``StoreThrottled`` carrying what is left, so the retry policy defers the
work instead of parking workers, leases and API requests behind it.

``KeyedLock`` serializes work per key (a secret id) inside one process, so a
read-check-write on one entry is never interleaved with another on the same
entry, while different keys proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from secretmirror.errors import StoreThrottled
from secretmirror.remote_clock import patience_left, waiting_locally


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, ``burst`` at once."""

    def __init__(
        self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()
        #: Start times of slots given back by cancelled waiters, earliest first.
        self._returned: list[float] = []

    def reserve(self) -> float:
        """Claim the next slot; return how many seconds to wait before using it.

        A slot given back that is still ahead is taken first. Otherwise tokens
        may go negative: each reservation queues behind the earlier ones, so
        waits grow by ``1 / rate`` per caller while the bucket is empty.
        """
        now = self._clock()
        while self._returned and self._returned[0] < now:
            heapq.heappop(self._returned)  # its time passed unused: using it late would burst
        if self._returned:
            return heapq.heappop(self._returned) - now
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def give_back(self, at: float) -> None:
        """A slot starting at ``at`` (the bucket's clock) will not be used."""
        if at > self._clock():
            heapq.heappush(self._returned, at)

    async def acquire(self) -> None:
        """Wait for a slot, locally; a waiter cancelled before its slot gives it back.

        A slot further ahead than the caller's time limit (an inline write) is
        given back at once: ``StoreThrottled`` now instead of after the limit.
        """
        delay = self.reserve()
        if delay <= 0:
            return
        at = self._clock() + delay
        left = patience_left()
        if left is not None and delay > left:
            self.give_back(at)
            raise StoreThrottled(
                f"the store's write pace is booked {delay:.1f}s ahead, past the time limit",
                retry_after_s=delay,
                local=True,
            )
        try:
            with waiting_locally():
                await asyncio.sleep(delay)
        except BaseException:
            self.give_back(at)
            raise


#: Holds at most this long are waited out locally; longer ones fail fast.
WAIT_MAX_S = 5.0
#: No hint holds a store longer than this (a misread or hostile Retry-After).
HOLD_MAX_S = 300.0
#: The hold when the provider gave no hint: cloud quotas refill per second.
HOLD_DEFAULT_S = 1.0

E = TypeVar("E", bound=BaseException)


class Throttle:
    """Holds a store's calls after a throttle answer until the provider's hint passes."""

    def __init__(
        self,
        wait_max_s: float = WAIT_MAX_S,
        hold_max_s: float = HOLD_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wait_max_s = wait_max_s
        self._hold_max_s = hold_max_s
        self._clock = clock
        self._until = 0.0

    def hold(self, seconds: float | None) -> None:
        """Hold calls ``seconds`` from now (the hint; None: the default), at most ``hold_max_s``."""
        seconds = HOLD_DEFAULT_S if seconds is None else max(0.0, seconds)
        self._until = max(self._until, self._clock() + min(seconds, self._hold_max_s))

    def noted(self, error: E) -> E:
        """``error``, after holding the store's calls when it is ``StoreThrottled``."""
        if isinstance(error, StoreThrottled):
            self.hold(error.retry_after_s)
        return error

    def clear(self) -> None:
        """Forget the hold (tests, or a store reopened)."""
        self._until = 0.0

    async def wait(self) -> None:
        """Return once the store may be called; ``StoreThrottled`` when the hold is too long.

        Too long: beyond ``wait_max_s``, or beyond what is left of the caller's
        time limit. The wait is local (``waiting_locally``): it never counts
        against the store's own timeout.
        """
        left = self._until - self._clock()
        if left <= 0:
            return
        patience = patience_left()
        if left > self._wait_max_s or (patience is not None and left > patience):
            raise StoreThrottled(
                f"the store asked to slow down; calls are held {left:.1f}s more",
                retry_after_s=left,
                # A hold this process would have waited out but for the caller's time
                # limit: nothing was sent, so not an attempt of the write.
                local=left <= self._wait_max_s,
            )
        with waiting_locally():
            await asyncio.sleep(left)


class KeyedLock:
    """One ``asyncio.Lock`` per key, dropped again once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            with waiting_locally():
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            _, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys are held or awaited right now."""
        return len(self._locks)
