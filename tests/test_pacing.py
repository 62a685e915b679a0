"""Waiting for the pace is not an outage: a slow-paced cloud primary under load stays up.

At a low ``max_writes_per_s`` the API's inline writes, the worker's puts and
the entry locks queue far longer than a store call's timeout (2 s inline, 10 s
for the worker) while a backup job reads the primary beside them. That queue
is this process's, not the store's: ``store_up`` must never drop, nothing may
be dead-lettered, and everything drains (issue #11 part 2). Real moto server
and the Secret Manager fake; the backup is a ``file`` store.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from secretmirror import deliveries, metrics
from secretmirror.runtime import Runtime
from tests.conftest import Api
from tests.gcpfake import GcpFake, gcp_settings
from tests.moto import aws_settings
from tests.test_reconcile import run_job, wait_finished
from tests.test_replication import drained, until, worker

CLIENTS = 16
UPDATES = 200
SECRETS = 32


def _unavailable_requests(role: str) -> float:
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        if family.name == "secretmirror_store_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels.get("store") == role
        and sample.labels.get("outcome") == "unavailable"
    )


@contextlib.asynccontextmanager
async def watching_store_up(runtime: Runtime, role: str) -> AsyncIterator[list[str]]:
    """Sample the store's ``up`` and its ``secretmirror_store_up`` gauge throughout."""
    store = runtime.store_for(role)
    drops: list[str] = []

    async def watch() -> None:
        while True:
            gauge = metrics.REGISTRY.get_sample_value("secretmirror_store_up", {"store": role})
            if not store.up or gauge != 1:
                drops.append(f"up={store.up} gauge={gauge} last_error={store.last_error}")
            await asyncio.sleep(0.01)

    unavailable = _unavailable_requests(role)
    watcher = asyncio.create_task(watch())
    try:
        yield drops
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if _unavailable_requests(role) > unavailable:
            drops.append("a store request ended as unavailable")


async def paced_load(api: Api, runtime: Runtime) -> None:
    """200 updates from 16 clients and a backup job against a slow-paced primary.

    Asserts the primary never looked down, nothing was dead-lettered, the job
    succeeded, everything drained, and verify finds both stores in sync.
    """
    ids = [(await api.create(f"paced-{i}", {"k": "0"}))["id"] for i in range(SECRETS)]
    rng = random.Random(11)
    plan = [rng.choice(ids) for _ in range(UPDATES)]

    async def client(n: int) -> None:
        for i, secret_id in enumerate(plan[n::CLIENTS]):
            status, body, _ = await api.request(
                "PATCH", f"/api/v1/secrets/{secret_id}", json={"values": {"k": f"{n}-{i}"}}
            )
            assert status == 200, body

    async with watching_store_up(runtime, "primary") as drops, worker(runtime):
        status, job, _ = await api.request("POST", "/admin/v1/reconcile", json={"mode": "backup"})
        assert status == 202, job
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        finished = await wait_finished(api, job["id"])
        await until(lambda: drained(runtime), timeout=120)
    assert drops == []
    assert (finished["status"], finished["counts"]["failed"]) == ("succeeded", 0), finished
    state = await deliveries.status(runtime.pool, runtime.target_keys)
    assert [(s.pending, s.dead) for s in state.values()] == [(0, 0), (0, 0)]
    verified = await run_job(api, "verify")
    for store in ("primary", "backup"):
        found = verified["counts"]["stores"][store]
        assert (found["in_sync"], found["missing"], found["stale"]) == (SECRETS, 0, 0), verified


class TestAws:
    @pytest.fixture
    def settings_overrides(
        self, moto_server: str, aws_prefix: str, tmp_path: Path
    ) -> dict[str, Any]:
        return {
            "primary": {"type": "aws", **aws_settings(moto_server, aws_prefix, max_writes_per_s=5)},
            "backup": {"type": "file", "path": str(tmp_path / "backup")},
            "replication": {"poll_interval_s": 0.2},
            "reconcile": {"verify_interval_s": 0},
        }

    async def test_a_primary_paced_at_5_per_s_stays_up_under_load(
        self, api: Api, runtime: Runtime
    ) -> None:
        """moto at 5 writes/s: queueing for slots never marks the primary down."""
        await paced_load(api, runtime)


class TestGcp:
    @pytest.fixture
    def settings_overrides(
        self, gcp_fake: GcpFake, gcp_key_file: Path, gcp_prefix: str, tmp_path: Path
    ) -> dict[str, Any]:
        return {
            "primary": {
                "type": "gcp",
                **gcp_settings(gcp_fake.url, gcp_key_file, gcp_prefix, max_writes_per_s=8),
            },
            "backup": {"type": "file", "path": str(tmp_path / "backup")},
            "replication": {"poll_interval_s": 0.2},
            "reconcile": {"verify_interval_s": 0},
        }

    async def test_a_primary_paced_at_8_per_s_stays_up_under_load(
        self, api: Api, runtime: Runtime
    ) -> None:
        """The Secret Manager fake at 8 writes/s (3 per change): the primary never looks down."""
        await paced_load(api, runtime)
