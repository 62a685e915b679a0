"""Pacing and serialization primitives shared by the store back-ends.

``TokenBucket`` keeps a store's writes under a provider's request quota (AWS
Secrets Manager: about 50 writes/s per account and region, shared by every
client). It *reserves* slots: each caller is told how long to wait for its
own slot, so N concurrent callers are spread over time instead of all waking
at once and bursting together. The default burst of one makes it pure pacing:
no one-second window ever holds more than ``rate`` (+1 at the boundary) writes.

``KeyedLock`` serializes work per key (a secret id) inside one process, so a
read-check-write on one entry is never interleaved with another on the same
entry, while different keys proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable


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

    def reserve(self) -> float:
        """Claim the next slot; return how many seconds to wait before using it.

        Tokens may go negative: each reservation queues behind the earlier
        ones, so waits grow by ``1 / rate`` per caller while the bucket is empty.
        """
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        """Wait for a slot. A cancelled waiter's slot is not given back (errs on the slow side)."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


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
            async with lock:
                yield
        finally:
            _, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys are held or awaited right now."""
        return len(self._locks)
