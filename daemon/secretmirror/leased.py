"""A write under a delivery lease: each store call ends before the lease does.

A write that waits locally (a pacing slot, a throttle hold, the entry's lock)
past its lease would land while another process, holding the lease now,
writes a newer version: in a store without a conditional write (AWS, Azure)
the late one could stay current. So each call must end the store's timeout
before the lease does (a write cut off mid-request may land up to that
later); a wait beyond that is ``StoreThrottled`` at once, no request sent.
The replication worker's deliveries and the reconcile jobs' copies both
write through ``LeasedStore``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass

from secretmirror.errors import StoreError, StoreThrottled, may_have_landed
from secretmirror.stores.instrumented import RoleStore


@dataclass(slots=True)
class Lease:
    """A delivery lease held for writes to one (store, secret)."""

    #: The token the lease row is held with ("" for a store no lease guards).
    token: str
    #: When the lease ends (``time.monotonic``); None: no lease bounds the writes.
    ends: float | None
    #: A write under it was cut off mid-request and may land yet: hold it, don't release.
    unsure: bool = False


class LeasedStore:
    """``store``'s writes under ``lease``, each bounded by what is left of it."""

    def __init__(self, store: RoleStore, lease: Lease) -> None:
        self.store = store
        self.lease = lease

    @property
    def until(self) -> float | None:
        """When the last write under the lease must end (``time.monotonic``)."""
        ends = self.lease.ends
        return None if ends is None else ends - self.store.timeout_s

    async def put(self, secret_id: str, version: int, values: dict[str, str], hash_: str) -> None:
        await self._noted(
            self.store.put(secret_id, version, values, hash_, within_s=self._within())
        )

    async def delete(self, secret_id: str, version: int) -> None:
        await self._noted(self.store.delete(secret_id, version, within_s=self._within()))

    def _within(self) -> float | None:
        until = self.until
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            raise StoreThrottled(
                "the lease on the entry ran out before the store was free", local=True
            )
        return left

    async def _noted(self, write: Awaitable[object]) -> None:
        """Await ``write``; a failure that may land yet makes the lease unsure."""
        try:
            await write
        except StoreError as exc:
            self.lease.unsure = self.lease.unsure or may_have_landed(exc)
            raise
