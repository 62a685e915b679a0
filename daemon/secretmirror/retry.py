"""When to try a failed delivery again: a small pure object (attempts live in the database)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from secretmirror.errors import StoreForeignEntry, StoreRejected, StoreThrottled


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
        if attempts >= self.max_attempts:
            return Decision(0.0, dead=True)
        delay = self.backoff(attempts)
        if isinstance(error, StoreThrottled) and error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.max_s))
        return Decision(delay, dead=False)
