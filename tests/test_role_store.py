"""A store in its role: up/down tracking, timeouts and metrics (pure logic, a scripted back-end)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from secretmirror import metrics
from secretmirror.errors import StoreRejected, StoreUnavailable
from secretmirror.stores.base import Entry, PutOutcome, StoredValue
from secretmirror.stores.instrumented import RoleStore


class Scripted:
    """Answers put with the next scripted outcome: an exception to raise or a result."""

    type = "scripted"
    location = "scripted://"
    max_value_bytes = None

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def health(self) -> None: ...

    async def put(self, *_args: Any) -> PutOutcome:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            await asyncio.sleep(3600)
        return PutOutcome.WRITTEN

    async def get(self, secret_id: str) -> StoredValue | None:
        return None

    async def delete(self, secret_id: str, version: int) -> None: ...

    async def list(self) -> AsyncIterator[Entry]:
        for _ in ():
            yield _


def store_up_metric(role: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("secretmirror_store_up", {"store": role})


async def test_success_after_an_outage_marks_the_store_up_again() -> None:
    """An unavailable answer marks the store down; the next success marks it up."""
    role = RoleStore("backup", Scripted(StoreUnavailable("gone"), "ok"))  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        await role.put("s", 1, {"k": "v"}, "h")
    assert (role.up, role.last_error, store_up_metric("backup")) == (False, "gone", 0)
    assert await role.put("s", 1, {"k": "v"}, "h") is PutOutcome.WRITTEN
    assert (role.up, role.last_error, store_up_metric("backup")) == (True, None, 1)


async def test_a_timeout_counts_as_unavailable() -> None:
    """A call that does not answer within the timeout marks the store down."""
    role = RoleStore("primary", Scripted("hang"), timeout_s=0.05)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable, match="did not answer in time"):
        await role.put("s", 1, {"k": "v"}, "h")
    assert role.up is False


async def test_a_rejection_does_not_mark_the_store_down() -> None:
    """A permanent rejection is about one request; the store itself answered."""
    role = RoleStore("backup", Scripted(StoreRejected("no")))  # type: ignore[arg-type]
    with pytest.raises(StoreRejected):
        await role.put("s", 1, {"k": "v"}, "h")
    assert role.up is True
