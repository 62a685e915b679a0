"""What verify's per-entry checks cost where a listing cannot see a hand edit (issue #11 part 5)."""

from __future__ import annotations

import asyncio
import collections
import functools
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.azurefake import AzureFake
from tests.gcpfake import GcpFake, gcp_settings
from tests.stores.azure import azure_store

from bench._common import knob, measured, run_standalone
from bench._harness import running
from secretmirror.crypto import Keyring, content_hash
from secretmirror.model import canonical
from secretmirror.settings import GcpStoreSettings
from secretmirror.stores.base import Entry, StoreContext
from secretmirror.stores.gcp import GcpStore, _State

ENTRIES = knob("SECRETMIRROR_BENCH_VERIFY_ENTRIES", 1000, 200)
ROUNDS = 3


class _UncheckedGcp(GcpStore):
    """The GCP listing as it was before the per-entry check: labels only (the template's
    ``_listed_entry`` hook left at its default)."""

    async def _listed_entry(self, secret_id: str, name: str, state: _State) -> Entry:
        return state.entry(secret_id)


async def _fill(store: Any, hash_key: bytes) -> None:
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        secret_id, values = str(uuid.uuid4()), {"k": f"v{i}"}
        async with gate:
            await store.put(
                secret_id, 1, values, content_hash(hash_key, secret_id, canonical(values))
            )

    await asyncio.gather(*(one(i) for i in range(ENTRIES)))


async def _listings(
    stores: dict[str, Any], calls: Callable[[int], list[str]], mark: Callable[[], int]
) -> dict[str, Any]:
    """Each store's full listing ``ROUNDS`` times, alternating: entries, calls, median seconds."""
    seconds: dict[str, list[float]] = {name: [] for name in stores}
    found: dict[str, Any] = {}
    for _ in range(ROUNDS):
        for name, store in stores.items():
            since = mark()
            started = time.perf_counter()
            entries = [e async for e in store.list()]
            seconds[name].append(time.perf_counter() - started)
            found[name] = {
                "entries": len(entries),
                "foreign": sum(e.foreign_write for e in entries),
                "calls": dict(sorted(collections.Counter(calls(since)).items())),
            }
    for name in stores:
        found[name]["seconds_median"] = round(statistics.median(seconds[name]), 3)
        found[name]["seconds"] = [round(s, 3) for s in seconds[name]]
    return found


async def _both(
    checked: Any, raw: Any, hash_key: bytes, calls: Callable[[int], list[str]], mark: Any
) -> dict[str, Any]:
    """Fill ``checked``; then list it and ``raw`` (the same entries without the checks)."""
    for store in (checked, raw):
        await store.open()
    try:
        await _fill(checked, hash_key)
        return await _listings({"checked": checked, "raw": raw}, calls, mark)
    finally:
        for store in (checked, raw):
            await store.close()


async def _gcp(workdir: Path) -> dict[str, Any]:
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]))
    async with running(GcpFake().start) as fake:
        key_file = fake.service_account_file(workdir)
        settings = GcpStoreSettings(
            **gcp_settings(fake.url, key_file, "bench-", max_writes_per_s=5000)
        )
        checked, raw = GcpStore(settings, ctx), _UncheckedGcp(settings, ctx)
        return await _both(checked, raw, secrets.token_bytes(32), fake.ops, fake.mark)


async def _azure() -> dict[str, Any]:
    hash_key = secrets.token_bytes(32)
    ctx = StoreContext(
        str(uuid.uuid4()),
        Keyring([secrets.token_bytes(32)]),
        content_hash=functools.partial(content_hash, hash_key),
    )
    prefix = f"b{uuid.uuid4().hex[:8]}-"
    async with running(AzureFake) as fake:
        checked = azure_store(fake, ctx, prefix, max_writes_per_s=5000)
        raw = azure_store(fake, StoreContext(ctx.deployment_id, ctx.keyring), prefix)
        return await _both(checked, raw, hash_key, lambda since: fake.calls(since), fake.mark)


def _target(name: str, expected: int, found: dict[str, Any]) -> dict[str, Any]:
    calls = sum(found["checked"]["calls"].values()) - sum(found["raw"]["calls"].values())
    return {
        "target": f"== {expected}",
        "measured": calls,
        "pass": calls == expected and found["checked"]["foreign"] == 0,
        "what": f"{name}: extra calls of a listing of {ENTRIES} entries with the checks",
    }


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    out["entries"] = ENTRIES
    out["gcp"] = await _gcp(workdir)
    out["azure"] = await _azure()


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    return {
        "gcp_extra_calls": _target("gcp", ENTRIES, out["gcp"]),
        "azure_extra_calls": _target("azure", ENTRIES, out["azure"]),
    }


def _summary(out: dict[str, Any]) -> None:
    for provider in ("gcp", "azure"):
        found = out[provider]
        print(
            f"{provider}: {ENTRIES} entries  checked {found['checked']['calls']} "
            f"{found['checked']['seconds_median']} s  raw {found['raw']['calls']} "
            f"{found['raw']['seconds_median']} s"
        )


async def main() -> dict[str, Any]:
    config = {"entries": ENTRIES, "rounds": ROUNDS}
    return await measured(
        "verify_cost", _measure, config=config, targets=_targets, summary=_summary
    )


if __name__ == "__main__":
    run_standalone("verify_cost", main)
