"""The clock that judges a store's health counts only the time the store itself takes.

A store call waits locally before and between its requests: for a pacing
slot (``TokenBucket``), for the entry's lock (``KeyedLock``), for a pause a
throttling provider asked for, for Key Vault to finish a delete. None of that
is the remote's fault (style point 20). A timeout that counts it marks a
healthy store down whenever the local queue is longer than the timeout, which
is exactly when the store is busiest (a backup job beside the worker at a low
``max_writes_per_s``), and a store marked down is then worked one probe at a
time.

So ``RoleStore`` runs every call under a ``RemoteClock``, and each local wait
stops that clock while it lasts (``waiting_locally``, used by the pacing and
locking primitives and the stores' own sleeps). The clock finds the store
unresponsive only when its own requests used up the whole budget. A caller may
also bound the whole call, queueing included (``wall_s``: the API's inline
writes and reads, which must answer quickly, and the worker's, which must end
inside their lease); running out of that while queued is throttling, never an
outage, and nothing was in flight. Running out of it while a request ran cuts
that request off: it may still land (``ran_out_queued`` tells the two apart).

The clock is found through a context variable, so the waits need no
parameter threaded through every store method, and tasks a store call spawns
(a concurrent listing) pause the same clock. While any of them waits locally
the clock stands still: it errs towards patience, and a remote that truly
hangs still runs the clock out once the queue ahead of it has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar

_current: ContextVar[RemoteClock | None] = ContextVar("secretmirror_remote_clock", default=None)


class RemoteClock:
    """``remote_s`` of the remote's time, and at most ``wall_s`` in all when given."""

    def __init__(self, remote_s: float, wall_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        started = self._loop.time()
        self._remote_at = started + remote_s
        self._wall_at = None if wall_s is None else started + wall_s
        self._left = remote_s
        self._paused = 0
        self._paused_at = started
        self._timeout: asyncio.Timeout | None = None
        #: Seconds the call spent waiting locally (pacing, locks, pauses).
        self.queued_s = 0.0
        #: The clock ran out (as opposed to a ``TimeoutError`` raised by the body itself).
        self.expired = False
        #: It ran out while the call waited locally, with no request of it in flight.
        self.ran_out_queued = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Time the body; ``TimeoutError`` when the remote's budget or ``wall_s`` runs out."""
        token = _current.set(self)
        try:
            timeout = asyncio.timeout_at(self._when())
            try:
                async with timeout:
                    self._timeout = timeout
                    yield
            finally:
                self.expired = timeout.expired()
        finally:
            self._timeout = None
            _current.reset(token)

    def patience_left(self) -> float | None:
        """Seconds left of the caller's ``wall_s``; None when the caller set no limit."""
        return None if self._wall_at is None else self._wall_at - self._loop.time()

    @property
    def remote_exhausted(self) -> bool:
        """The remote had its whole budget: a timeout is the store's, not the queue's."""
        return self._paused == 0 and self._remote_at <= self._loop.time()

    def _when(self) -> float | None:
        if self._paused:
            return self._wall_at
        if self._wall_at is None:
            return self._remote_at
        return min(self._remote_at, self._wall_at)

    def _pause(self) -> None:
        if self._paused == 0:
            now = self._loop.time()
            self._left = self._remote_at - now
            self._paused_at = now
        self._paused += 1
        self._reschedule()

    def _resume(self) -> None:
        if self._timeout is not None and self._timeout.expired():
            # Only ``wall_s`` runs while paused: it ran out during this local wait.
            self.ran_out_queued = True
        self._paused -= 1
        if self._paused == 0:
            now = self._loop.time()
            self.queued_s += now - self._paused_at
            self._remote_at = now + self._left
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(self._when())


def patience_left() -> float | None:
    """What is left of the current store call's overall time limit (None: no limit)."""
    clock = _current.get()
    return None if clock is None else clock.patience_left()


@contextlib.contextmanager
def waiting_locally() -> Iterator[None]:
    """The body waits on this process, not on the store: stop the current call's clock."""
    clock = _current.get()
    if clock is None:
        yield
        return
    clock._pause()
    try:
        yield
    finally:
        clock._resume()


async def local_sleep(seconds: float) -> None:
    """``asyncio.sleep`` that does not count against the store's time (a pause, a settle)."""
    with waiting_locally():
        await asyncio.sleep(seconds)
