"""A store in its role (primary or backup): timeouts, metrics and health around any back-end.

Everything above the stores (API, worker, reconcile) talks to ``RoleStore``;
back-ends stay free of metrics and timeouts.

The timeout judges the store, so it counts only the store's own time: a call
waiting locally (a pacing slot, the entry's lock, a throttle pause) stops its
``RemoteClock``. Queueing is reported as such, in
``secretmirror_store_queue_seconds``, and a caller's time limit that runs out
while the call queued raises ``StoreThrottled`` (``reason="throttled"``) and
leaves ``store_up`` alone. One that runs out while a request is in flight, the
store's own time not spent, cuts it off: ``StoreCutOff``, throttled too, but a
write that may still land (``may_have_landed``), so callers keep its lease.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import structlog

from secretmirror import metrics
from secretmirror.errors import (
    DecryptionError,
    StoreCutOff,
    StoreError,
    StoreNotFound,
    StoreThrottled,
    StoreUnavailable,
    StoreUnreadable,
)
from secretmirror.remote_clock import RemoteClock
from secretmirror.stores.base import Entry, PutOutcome, SecretStore, StoredValue

T = TypeVar("T")
log = structlog.get_logger("secretmirror.stores")


class RoleStore:
    """``store`` acting as ``role`` ("primary" or "backup")."""

    def __init__(self, role: str, store: SecretStore, timeout_s: float = 10.0) -> None:
        self.role = role
        self.store = store
        self.timeout_s = timeout_s
        self.up = True
        self.last_error: str | None = None
        metrics.store_up.labels(role).set(1)

    @property
    def type(self) -> str:
        return self.store.type

    @property
    def location(self) -> str:
        return self.store.location

    async def _call(
        self,
        operation: str,
        call: Awaitable[T],
        timeout_s: float | None,
        within_s: float | None = None,
    ) -> T:
        """Run ``call``: the store has ``timeout_s`` (else the role's) of its own time.

        A ``timeout_s`` given by the caller also bounds the whole call, local
        queueing included (the API's inline writes must answer quickly).
        ``within_s`` bounds the whole call only, the store keeping the role's timeout
        of its own (a worker's write must end inside its lease).
        """
        started = time.perf_counter()
        wall_s = timeout_s if timeout_s is not None else within_s
        clock = RemoteClock(timeout_s or self.timeout_s, wall_s=wall_s)
        outcome = "ok"
        try:
            async with clock.running():
                result = await call
        except TimeoutError:
            if clock.ran_out_queued:
                outcome = "throttled"
                raise StoreThrottled(
                    f"the {self.role} store's requests queued locally past the time limit",
                    local=True,
                ) from None
            if clock.expired and not clock.remote_exhausted:
                outcome = "throttled"
                raise StoreCutOff(
                    f"the {self.role} store's request was cut off by the time limit after "
                    "queueing locally"
                ) from None
            outcome = "unavailable"
            self._down("the store did not answer in time")
            raise StoreUnavailable(f"the {self.role} store did not answer in time") from None
        except StoreNotFound:
            outcome = "not_found"
            self._up()
            raise
        except DecryptionError as exc:
            # One entry does not decrypt: a failed read of this store, which is up.
            outcome = StoreUnreadable.reason
            self._up()
            raise StoreUnreadable(
                f"the {self.role} store's entry does not decrypt ({exc.message})"
            ) from None
        except StoreError as exc:
            outcome = exc.reason
            if isinstance(exc, StoreUnavailable):
                self._down(exc.message)
            else:
                self._up()
            raise
        finally:
            metrics.store_requests.labels(self.role, operation, outcome).inc()
            metrics.store_queue.labels(self.role).observe(clock.queued_s)
            metrics.store_request_duration.labels(self.role, operation).observe(
                max(time.perf_counter() - started - clock.queued_s, 0.0)
            )
        self._up()
        return result

    def _up(self) -> None:
        if not self.up:
            log.info("store.up", store=self.role)
        self.up = True
        self.last_error = None
        metrics.store_up.labels(self.role).set(1)

    def _down(self, reason: str) -> None:
        if self.up:
            log.warning("store.down", store=self.role, reason=reason)
        self.up = False
        self.last_error = reason
        metrics.store_up.labels(self.role).set(0)

    async def health(self, timeout_s: float | None = None) -> None:
        await self._call("health", self.store.health(), timeout_s)

    async def put(
        self,
        secret_id: str,
        version: int,
        values: dict[str, str],
        content_hash: str,
        timeout_s: float | None = None,
        *,
        within_s: float | None = None,
    ) -> PutOutcome:
        write = self.store.put(secret_id, version, values, content_hash)
        return await self._call("put", write, timeout_s, within_s)

    async def get(self, secret_id: str, timeout_s: float | None = None) -> StoredValue | None:
        return await self._call("get", self.store.get(secret_id), timeout_s)

    async def delete(
        self,
        secret_id: str,
        version: int,
        timeout_s: float | None = None,
        *,
        within_s: float | None = None,
    ) -> None:
        await self._call("delete", self.store.delete(secret_id, version), timeout_s, within_s)

    async def list(self) -> AsyncIterator[Entry]:
        """The back-end's listing, each page's wait timed and counted as one ``list`` request."""
        iterator = aiter(self.store.list())
        while True:
            try:
                entry = await self._call("list", anext(iterator), None)
            except StopAsyncIteration:
                return
            yield entry

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()
