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
            )
        try:
            with waiting_locally():
                await asyncio.sleep(delay)
        except BaseException:
            self.give_back(at)
            raise


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
