"""Replication and reconcile end to end with Azure Key Vault (the in-repo fake).

``secretmirror serve`` runs as a subprocess configured only through
``SECRETMIRROR_*`` variables (``__TYPE=azure``, ``__VAULT_URL``, a service
principal), plus what any Azure deployment behind a private CA would set:
``SSL_CERT_FILE`` (trust the fake's throwaway CA) and ``AZURE_AUTHORITY_HOST``
(azure-identity asks the fake's token endpoint). Drift is made in the fake
with the official SDK, as an operator's tooling would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ResourceNotFoundError

from secretmirror.crypto import Keyring
from secretmirror.settings import FileStoreSettings
from secretmirror.stores.azure import TAG_DEPLOYMENT, TAG_HASH, TAG_VERSION, AzureStore
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from tests.azurefake import AzureFake, azure_settings, sdk_client
from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess
from tests.load import Load
from tests.stores.azure import azure_store
from tests.test_reconcile_aws import drift_counts, wait_job
from tests.test_replication_e2e import (
    VersionProbe,
    check_converged,
    daemons,  # noqa: F401 (a fixture)
    deployment_id,
    drained,
    key,  # noqa: F401 (a fixture)
    new_daemon,
    seed,
    status,
    store_env,
    until,
)

pytestmark = pytest.mark.acceptance


def azure_env(role: str, fake: AzureFake, prefix: str, **overrides: Any) -> dict[str, str]:
    """A daemon's environment for an ``azure`` store on the fake (no write limit by default)."""
    fields = azure_settings(fake, prefix, **{"max_writes_per_s": 5000, **overrides})
    return {**store_env(role, {"type": "azure", **fields}), **fake.env()}


@contextlib.asynccontextmanager
async def azure_view(database: str, fake: AzureFake, prefix: str) -> AsyncIterator[AzureStore]:
    """An ``azure`` store of the daemon's deployment, to look at what Key Vault holds."""
    ctx = StoreContext(await deployment_id(database), Keyring([b"\0" * 32]))
    store = azure_store(fake, ctx, prefix)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def azure_versions(store: AzureStore) -> dict[str, int]:
    return {e.secret_id: e.version async for e in store.list() if not e.deleted}


async def reconcile(daemon: DaemonProcess, mode: str) -> dict[str, Any]:
    job = await asyncio.to_thread(daemon.post, "/admin/v1/reconcile", {"mode": mode})
    return await wait_job(daemon, job["id"])


# -- convergence ------------------------------------------------------------------------------


async def test_convergence_with_azure_as_the_backup(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    azure_fake: AzureFake,
    azure_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """1,200 random writes over 300 secrets converge in Key Vault, never going backwards."""
    env = azure_env("backup", azure_fake, azure_prefix)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        azure_view(database, azure_fake, azure_prefix) as view,
        Load([daemon.url]) as load,
    ):
        async with VersionProbe(lambda: azure_versions(view)) as probe:
            ids = await seed(load, 300)
            await load.run(ids, 900, clients=8)
            await until(lambda: drained(daemon), 120, "the azure backup to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert probe.polls > 3
        assert probe.backwards == []
        assert (await status(daemon))["replication"]["backup"]["dead"] == 0
        await check_converged(load, ids, view)


async def test_convergence_with_azure_as_the_primary(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    azure_fake: AzureFake,
    azure_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """An azure primary with a file backup: reads come from Key Vault, both stores converge."""
    backup_dir = tmp_path / "file-backup"
    env = {
        **azure_env("primary", azure_fake, azure_prefix),
        **store_env("backup", {"type": "file", "path": backup_dir}),
    }
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        azure_view(database, azure_fake, azure_prefix) as view,
        Load([daemon.url]) as load,
    ):
        ids = await seed(load, 150)
        await load.run(ids, 600, clients=8)
        await until(lambda: drained(daemon), 120, "both stores to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.stale_reads == []
        body = await status(daemon)
        assert body["stores"]["primary"]["type"] == "azure"
        assert all(t["dead"] == 0 for t in body["replication"].values())
        live = [sid for sid in ids if (a := load.acked.get(sid)) and a.values is not None]
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        sources: list[str] = []
        async with aiohttp.ClientSession(headers=headers) as http:

            async def from_primary() -> bool:
                # A read the primary does not answer within its 2 s falls back, rightly.
                async with http.get(f"{daemon.url}/api/v1/secrets/{live[0]}") as response:
                    sources.append(response.headers["X-Secret-Source"])
                return sources[-1] == "primary"

            await until(from_primary, 20, f"a read from the primary {sources}")
        await check_converged(load, ids, view)
        ctx = StoreContext(await deployment_id(database), Keyring([base64.b64decode(key)]))
        await check_converged(load, ids, FileStore(FileStoreSettings(path=backup_dir), ctx))


async def test_kill_9_adds_no_duplicate_key_vault_versions(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    azure_fake: AzureFake,
    azure_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """kill -9 twice under load: everything lands, and no secretmirror version is set twice."""
    env = azure_env("backup", azure_fake, azure_prefix)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        azure_view(database, azure_fake, azure_prefix) as view,
        Load([daemon.url]) as load,
    ):
        ids = await seed(load, 150)

        async def killer() -> None:
            for _ in range(2):
                await asyncio.sleep(1.0)  # let deliveries get under way before the crash
                await asyncio.to_thread(daemon.kill)
                await asyncio.to_thread(daemon.start)

        await asyncio.gather(load.run(ids, 800, clients=8), killer())
        await until(lambda: drained(daemon), 120, "the drain after the crashes")
        assert load.failed_requests == 0, load.failures[:5]
        assert (await status(daemon))["replication"]["backup"]["dead"] == 0
        await check_converged(load, ids, view)
    checked = 0
    async with sdk_client(azure_fake) as sdk:
        for sid in ids:
            name = f"{azure_prefix}{sid}"
            try:
                tagged = [
                    (v.tags or {}).get(TAG_VERSION)
                    async for v in sdk.list_properties_of_secret_versions(name)
                ]
            except ResourceNotFoundError:
                continue  # deleted: soft-deleted secrets list no versions
            assert len(tagged) == len(set(tagged)), (sid, tagged)
            checked += 1
    assert checked >= 50


# -- drift, throttling, soft delete -------------------------------------------------------------


async def test_verify_and_repair_fix_drift_made_in_key_vault(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    azure_fake: AzureFake,
    azure_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """Purged, hand-deleted, rolled-back, hand-overwritten (also with secretmirror's tags copied
    onto the new version, or the latest version disabled) and orphan entries: found, then fixed."""
    daemon = new_daemon(
        daemons, tmp_path, database, key, azure_env("backup", azure_fake, azure_prefix)
    )
    await asyncio.to_thread(daemon.start)
    async with Load([daemon.url]) as load, sdk_client(azure_fake) as sdk:
        ids = await seed(load, 10, clients=1)
        await until(lambda: drained(daemon), 60, "the first drain")
        purged, hand_deleted, rolled_back, overwritten, tags_kept, disabled = ids[:6]
        name = {sid: f"{azure_prefix}{sid}" for sid in ids}
        first = await sdk.get_secret(name[rolled_back])
        await load._call("PATCH", f"/api/v1/secrets/{rolled_back}", {"values": {"v": "newer"}})
        await until(lambda: drained(daemon), 60, "the second version to land")

        await sdk.delete_secret(name[purged])
        await sdk.purge_deleted_secret(name[purged])
        await sdk.delete_secret(name[hand_deleted])
        # A rollback by hand: the first version's value and tags set again.
        await sdk.set_secret(
            name[rolled_back],
            first.value,
            content_type="application/json",
            tags=first.properties.tags,
        )
        await sdk.set_secret(name[overwritten], '{"v":"changed behind our back"}')
        # A new version carries only the tags it is given: these copy ours, so the listing
        # shows exactly what secretmirror wrote; only the value differs.
        ours = await sdk.get_secret(name[tags_kept])
        await sdk.set_secret(
            name[tags_kept],
            '{"v":"edited, tags copied"}',
            content_type="application/json",
            tags=ours.properties.tags,
        )
        await sdk.update_secret_properties(name[disabled], enabled=False)
        orphan = str(uuid.uuid4())
        own = first.properties.tags[TAG_DEPLOYMENT]
        await sdk.set_secret(
            f"{azure_prefix}{orphan}",
            "{}",
            tags={TAG_DEPLOYMENT: own, TAG_VERSION: "1", TAG_HASH: "0" * 32},
        )
        foreign = f"{azure_prefix}{uuid.uuid4()}"
        await sdk.set_secret(foreign, "not ours")

        found = await reconcile(daemon, "verify")
        assert found["status"] == "succeeded", found
        assert drift_counts(found, "backup") == (2, 1, 3, 1)
        samples = found["samples"]["backup"]
        assert sorted(samples["missing"]) == sorted([purged, hand_deleted])
        assert sorted(samples["mismatch"]) == sorted([overwritten, tags_kept, disabled])
        assert (samples["stale"], samples["orphan"]) == ([rolled_back], [orphan])

        repaired = await reconcile(daemon, "repair")
        assert repaired["status"] == "succeeded", repaired
        await until(lambda: drained(daemon), 60, "re-issued versions to land")
        clean = await reconcile(daemon, "verify")
        assert drift_counts(clean, "backup") == (0, 0, 0, 0), clean
        assert clean["counts"]["stores"]["backup"]["in_sync"] == len(ids)
        async with azure_view(database, azure_fake, azure_prefix) as view:
            for sid in ids:
                got = await view.get(sid)
                truth = await load.truth(sid)
                assert got is not None, sid
                assert (got.version, got.values) == truth, sid
        assert (await sdk.get_deleted_secret(f"{azure_prefix}{orphan}")).name is not None
        assert (await sdk.get_secret(foreign)).value == "not ours"


async def test_a_burst_of_429s_is_absorbed(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    azure_fake: AzureFake,
    azure_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """60 throttled answers with Retry-After slow replication down: no failure, no dead letter."""
    env = azure_env("backup", azure_fake, azure_prefix)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        azure_view(database, azure_fake, azure_prefix) as view,
        Load([daemon.url]) as load,
    ):
        ids = await seed(load, 60)
        await until(lambda: drained(daemon), 60, "the first drain")
        mark = azure_fake.mark()
        azure_fake.throttle(60, retry_after_s=1)
        await load.run(ids, 300, clients=8)
        await until(lambda: drained(daemon), 120, "the drain through the throttling")
        assert azure_fake.injections_left() == 0
        throttled = [c for c in azure_fake.call_log(mark, azure_prefix) if c["status"] == 429]
        assert len(throttled) >= 30  # others may meet health probes, which name no secret
        assert load.failed_requests == 0, load.failures[:5]
        body = await status(daemon)
        assert body["replication"]["backup"]["dead"] == 0
        await check_converged(load, ids, view)


async def test_a_delete_by_hand_is_recovered_by_the_next_write(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    azure_fake: AzureFake,
    azure_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """An entry soft-deleted in Key Vault comes back, recovered, with the secret's next version."""
    daemon = new_daemon(
        daemons, tmp_path, database, key, azure_env("backup", azure_fake, azure_prefix)
    )
    await asyncio.to_thread(daemon.start)
    async with (
        Load([daemon.url]) as load,
        sdk_client(azure_fake) as sdk,
        azure_view(database, azure_fake, azure_prefix) as view,
    ):
        [sid] = await seed(load, 1, clients=1)
        await until(lambda: drained(daemon), 60, "the first drain")
        name = f"{azure_prefix}{sid}"
        before = await sdk.get_secret(name)
        await sdk.delete_secret(name)
        mark = azure_fake.mark()
        await load._call("PATCH", f"/api/v1/secrets/{sid}", {"values": {"v": "after"}})
        await until(lambda: drained(daemon), 60, "the next version to land")
        assert "recover" in azure_fake.calls(mark, name)
        got = await view.get(sid)
        assert got is not None
        assert (got.version, got.values) == await load.truth(sid)
        assert got.values["v"] == "after"
        versions = [v async for v in sdk.list_properties_of_secret_versions(name)]
        assert before.properties.version in {v.version for v in versions}
