"""When to try a failed store call again.

``RetryPolicy``: a delivery's next attempt, a small pure object (attempts live in the
database). ``asked_again``: one call asked again in place, by a listing or a job.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from secretmirror.errors import (
    StoreContended,
    StoreForeignEntry,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
)

T = TypeVar("T")

#: The waits before a call that failed in a way that may pass is asked again.
AGAIN_WAITS_S = (0.25, 1.0)
#: How often ``asked_again(..., waits_out_throttling=True)`` waits a throttle hint out.
THROTTLED_WAITS = 4


@dataclass(frozen=True, slots=True)
class Decision:
    #: Seconds until the next attempt (ignored when ``dead``).
    retry_in_s: float
    #: Dead-letter the delivery: it waits for a newer version or a manual retry.
    dead: bool


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring throttling hints."""

    initial_s: float = 0.5
    max_s: float = 300.0
    max_attempts: int = 20

    def backoff(self, attempts: int) -> float:
        ceiling = min(self.max_s, self.initial_s * 2 ** max(attempts - 1, 0))
        return random.uniform(0, ceiling)

    def decide(self, attempts: int, error: BaseException) -> Decision:
        if isinstance(error, StoreRejected | StoreForeignEntry):
            return Decision(0.0, dead=True)
        if isinstance(error, StoreThrottled | StoreContended) and error.local:
            # Held back here, nothing sent: not an attempt, so never the last one.
            hint = error.retry_after_s if isinstance(error, StoreThrottled) else None
            return Decision(min(hint or self.initial_s, self.max_s), dead=False)
        if attempts >= self.max_attempts:
            return Decision(0.0, dead=True)
        delay = self.backoff(attempts)
        if isinstance(error, StoreThrottled) and error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.max_s))
        return Decision(delay, dead=False)


async def asked_again(
    call: Callable[[], Awaitable[T]],
    *,
    waits_out_throttling: bool = False,
    until: float | None = None,
) -> T:
    """``call``, asked again after a failure that may pass (a timeout, a 5xx, a dropped
    connection: ``StoreUnavailable``) after each of ``AGAIN_WAITS_S``; a store that stays
    down still fails it. ``StoreThrottled`` counts as such a failure (the store holds its
    next call for the hint itself), or with ``waits_out_throttling`` is waited out as the
    hint says, ``THROTTLED_WAITS`` times.

    For reads (a listing's pages, verify's second look) and for a job's writes, which hold
    the secret's delivery lease and whose puts and deletes are idempotent. ``until``
    (``time.monotonic``): no try starts after it (a job's lease less the store's timeout),
    the last failure is raised instead. A delivery's write is retried by ``RetryPolicy``.
    """
    waits = iter(AGAIN_WAITS_S)
    hints = iter(range(THROTTLED_WAITS))
    while True:
        try:
            return await call()
        except StoreThrottled as exc:
            if not waits_out_throttling:
                wait = next(waits, None)
            elif (hinted := next(hints, None)) is not None:
                wait = exc.retry_after_s or 0.5 * 2**hinted
            else:
                wait = None
            if wait is None or _past(until, wait):
                raise
            await asyncio.sleep(wait)
        except StoreUnavailable:
            wait = next(waits, None)
            if wait is None or _past(until, wait):
                raise
            await asyncio.sleep(wait)


def _past(until: float | None, wait: float) -> bool:
    return until is not None and time.monotonic() + wait > until
