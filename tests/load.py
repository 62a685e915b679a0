"""A write load against running daemons that records what was acknowledged.

Clients create, update and delete secrets at random. A write whose response
never arrived (the daemon was killed, the connection reset) has an unknown
outcome: the secret is marked uncertain and re-read from the API at the end.
``open_loop`` sends requests on a schedule instead, answered or not.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.conftest import ADMIN_TOKEN

_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def quantile(values: Iterable[float], fraction: float) -> float:
    """The nearest-rank quantile of ``values`` (at least one)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


async def open_loop(one: Callable[[int], Awaitable[None]], rate: float, count: int) -> list[float]:
    """``one(n)`` for each n below ``count``, each started on schedule at ``rate`` per second
    whether the earlier ones have answered or not, then all awaited; how late each started
    (seconds after its due time)."""
    begin = time.perf_counter() + 0.05
    late: list[float] = []
    tasks = []
    for n in range(count):
        due = begin + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(time.perf_counter() - due)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return late


@dataclass
class Acked:
    """The last acknowledged state of one secret: its version and values (None: deleted)."""

    version: int
    values: dict[str, str] | None


@dataclass
class Load:
    urls: list[str]
    seed: int = 1
    acked: dict[str, Acked] = field(default_factory=dict)
    failed_requests: int = 0
    failures: list[tuple[str, int, Any]] = field(default_factory=list)
    unknown_outcomes: int = 0
    ops_done: int = 0
    #: Versions a read returned below the last acknowledged write (must stay empty).
    stale_reads: list[tuple[str, int, int]] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._session: aiohttp.ClientSession | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(
            headers=_HEADERS, timeout=aiohttp.ClientTimeout(total=30)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    def _url(self) -> str:
        return self._rng.choice(self.urls)

    async def _call(
        self, method: str, path: str, body: Any = None, *, retry_unreachable: bool = True
    ) -> tuple[int, Any] | None:
        """(status, json) or None when the outcome is unknown."""
        assert self._session is not None
        for _ in range(600):
            try:
                async with self._session.request(method, self._url() + path, json=body) as resp:
                    data = await resp.json() if resp.content_type == "application/json" else None
                    return resp.status, data
            except aiohttp.ClientConnectorError:
                if not retry_unreachable:
                    return None
                await asyncio.sleep(0.05)  # not connected: nothing was sent; try again
            except (aiohttp.ClientError, TimeoutError):
                return None  # sent, no answer: the write may or may not have committed
        return None

    async def create(self, name: str) -> str | None:
        values = {"v": f"{name}-0", "owner": "load"}
        result = await self._call("POST", "/api/v1/secrets", {"name": name, "values": values})
        if result is None:
            self.unknown_outcomes += 1
            return None
        status, body = result
        if status != 201:
            self.failed_requests += 1
            self.failures.append((name, status, body))
            return None
        self.acked[body["id"]] = Acked(body["version"], body["values"])
        return str(body["id"])

    async def step(self, ids: list[str]) -> None:
        """One random operation; operations on one secret never overlap (clean bookkeeping)."""
        sid = self._rng.choice(ids)
        async with self._locks.setdefault(sid, asyncio.Lock()):
            await self._step(sid)

    async def _step(self, sid: str) -> None:
        state = self.acked.get(sid)
        if state is not None and state.values is None:
            return
        roll = self._rng.random()
        if roll < 0.08:
            result = await self._call("DELETE", f"/api/v1/secrets/{sid}")
            ok = {204}
        elif roll < 0.25:
            result = await self._call("GET", f"/api/v1/secrets/{sid}")
            ok = {200}
        else:
            values = {"v": f"{sid[:8]}-{self._rng.randrange(10**9)}"}
            result = await self._call("PATCH", f"/api/v1/secrets/{sid}", {"values": values})
            ok = {200}
        self.ops_done += 1
        if result is None:
            self.unknown_outcomes += 1
            self.acked.pop(sid, None)  # unknown now: the final check re-reads it
            return
        status, body = result
        if status == 404 and state is None:
            return  # an earlier delete with an unknown outcome went through
        if status == 404 and roll < 0.08:
            # aiohttp resends an idempotent DELETE once when the connection drops
            # (a killed daemon): the first copy may have committed. Unknown outcome.
            self.unknown_outcomes += 1
            self.acked.pop(sid, None)
            return
        if status not in ok:
            self.failed_requests += 1
            self.failures.append((sid, status, body))
            return
        if status == 204:
            version = (state.version + 1) if state else 0
            self.acked[sid] = Acked(version, None)
        elif roll < 0.25:
            if state is not None and body["version"] < state.version:
                self.stale_reads.append((sid, body["version"], state.version))
        else:
            if state is None or body["version"] > state.version:
                self.acked[sid] = Acked(body["version"], body["values"])

    async def run(self, ids: list[str], ops: int, clients: int) -> None:
        remaining = [ops]

        async def client() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                await self.step(ids)

        await asyncio.gather(*(client() for _ in range(clients)))

    async def truth(self, sid: str) -> tuple[int, dict[str, str]] | None:
        """The secret's current version and values from the API, or None when deleted."""
        result = await self._call("GET", f"/api/v1/secrets/{sid}")
        assert result is not None
        status, body = result
        if status == 404:
            return None
        assert status == 200, body
        return body["version"], body["values"]
