"""GCP Secret Manager end to end: daemon subprocesses (and an in-process runtime for reconcile)
against the Secret Manager fake, with real service-account auth through its token endpoint.

Replication converges with gcp as the backup and as the primary, a burst of
429s is absorbed without a failed delivery, verify and repair find and fix
drift made in the fake with the official SDK, and the spec §8 migration runs
from aws (moto) to gcp under writes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import secrets
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import secretmanager

from secretmirror.crypto import Keyring
from secretmirror.runtime import Runtime
from secretmirror.settings import FileStoreSettings, GcpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from secretmirror.stores.gcp import GcpStore, label_value
from tests.conftest import Api
from tests.daemon_proc import DaemonProcess
from tests.gcpfake import PROJECT, GcpFake, gcp_settings, sdk_client
from tests.load import Load
from tests.test_reconcile import run_job
from tests.test_reconcile_aws import drained_daemon, drift_counts, wait_job
from tests.test_replication import drained, until, worker
from tests.test_replication_e2e import (
    VersionProbe,
    aws_env,
    check_converged,
    daemons,  # noqa: F401 (a fixture)
    deployment_id,
    key,  # noqa: F401 (a fixture)
    new_daemon,
    seed,
    status,
    store_env,
)
from tests.test_replication_e2e import until as until_e2e

pytestmark = pytest.mark.acceptance

PARENT = f"projects/{PROJECT}"


def gcp_env(role: str, fake: GcpFake, key_file: Path, prefix: str, **extra: Any) -> dict[str, str]:
    """``SECRETMIRROR_<ROLE>__*`` for the gcp store on the fake (writes unpaced unless told)."""
    fields = gcp_settings(fake.url, key_file, prefix, max_writes_per_s=5000, **extra)
    return store_env(role, {"type": "gcp", **fields})


@contextlib.asynccontextmanager
async def gcp_view(
    database: str, fake: GcpFake, key_file: Path, prefix: str
) -> AsyncIterator[GcpStore]:
    """A ``gcp`` store of the daemon's deployment, to look at what the fake holds."""
    ctx = StoreContext(await deployment_id(database), Keyring([secrets.token_bytes(32)]))
    store = GcpStore(GcpStoreSettings(**gcp_settings(fake.url, key_file, prefix)), ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def gcp_versions(store: GcpStore) -> dict[str, int]:
    return {e.secret_id: e.version async for e in store.list() if not e.deleted}


@pytest.fixture
def sdk(gcp_fake: GcpFake, gcp_key_file: Path) -> secretmanager.SecretManagerServiceClient:
    """The official client, for drift made behind secretmirror's back."""
    return sdk_client(gcp_fake.url, gcp_key_file)


def _metric_total(daemon: DaemonProcess, prefix: str) -> float:
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


# -- replication -----------------------------------------------------------------------


async def test_convergence_with_gcp_as_backup(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    gcp_fake_clean: GcpFake,
    gcp_key_file: Path,
    gcp_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """Random writes over 150 secrets from 8 clients converge in GCP, never going backwards."""
    env = gcp_env("backup", gcp_fake_clean, gcp_key_file, gcp_prefix)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        gcp_view(database, gcp_fake_clean, gcp_key_file, gcp_prefix) as view,
        Load([daemon.url]) as load,
    ):
        async with VersionProbe(lambda: gcp_versions(view)) as probe:
            ids = await seed(load, 150)
            await load.run(ids, 600, clients=8)
            await until_e2e(lambda: drained_daemon(daemon), 120, "the backup to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.unknown_outcomes == 0
        assert probe.polls > 3
        assert probe.backwards == []
        assert (await status(daemon))["replication"]["backup"]["dead"] == 0
        await check_converged(load, ids, view)


async def test_convergence_with_gcp_as_primary(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    gcp_fake_clean: GcpFake,
    gcp_key_file: Path,
    gcp_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """gcp primary with a file backup: reads come from GCP and both stores converge."""
    backup_dir = tmp_path / "file-backup"
    env = {
        **gcp_env("primary", gcp_fake_clean, gcp_key_file, gcp_prefix),
        **store_env("backup", {"type": "file", "path": backup_dir}),
    }
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        gcp_view(database, gcp_fake_clean, gcp_key_file, gcp_prefix) as view,
        Load([daemon.url]) as load,
    ):
        ids = await seed(load, 100)
        await load.run(ids, 400, clients=8)
        await until_e2e(lambda: drained_daemon(daemon), 120, "both stores to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.stale_reads == []
        await check_converged(load, ids, view)
        ctx = StoreContext(await deployment_id(database), Keyring([base64.b64decode(key)]))
        await check_converged(load, ids, FileStore(FileStoreSettings(path=backup_dir), ctx))
        live = next(sid for sid in ids if (a := load.acked.get(sid)) and a.values is not None)
        body = await asyncio.to_thread(daemon.get, "/admin/v1/status")
        assert body["stores"]["primary"]["type"] == "gcp"
        assert body["stores"]["primary"]["up"] is True
        request = urllib.request.Request(
            f"{daemon.url}/api/v1/secrets/{live}",
            headers={"Authorization": f"Bearer {daemon.env['SECRETMIRROR_ADMIN_TOKEN']}"},
        )
        sources: list[str] = []

        async def from_primary() -> bool:
            # A read the primary does not answer within its 2 s falls back, rightly: again.
            with urllib.request.urlopen(request, timeout=10) as response:
                sources.append(response.headers["X-Secret-Source"])
            return sources[-1] == "primary"

        await until_e2e(from_primary, 20, f"a read from the primary {sources}")


async def test_burst_of_429s_is_absorbed(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    gcp_fake_clean: GcpFake,
    gcp_key_file: Path,
    gcp_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """40 RESOURCE_EXHAUSTED answers mid-load: no failed request, no dead letter, converged."""
    env = gcp_env("backup", gcp_fake_clean, gcp_key_file, gcp_prefix)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with (
        gcp_view(database, gcp_fake_clean, gcp_key_file, gcp_prefix) as view,
        Load([daemon.url]) as load,
    ):
        ids = await seed(load, 60)
        await until_e2e(lambda: drained_daemon(daemon), 60, "the first drain")
        gcp_fake_clean.throttle(40)
        await load.run(ids, 300, clients=8)

        async def burst_spent() -> bool:
            return gcp_fake_clean.throttles_left == 0

        await until_e2e(burst_spent, 60, "the burst of 429s to be answered")
        await until_e2e(lambda: drained_daemon(daemon), 120, "the drain after the burst")
        assert load.failed_requests == 0, load.failures[:5]
        body = await status(daemon)
        assert body["replication"]["backup"]["dead"] == 0
        throttled = await asyncio.to_thread(
            _metric_total,
            daemon,
            'secretmirror_replication_errors_total{reason="throttled",target="backup"}',
        )
        assert throttled > 0
        await check_converged(load, ids, view)


async def test_two_daemons_share_gcp_writes_in_order(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    gcp_fake_clean: GcpFake,
    gcp_key_file: Path,
    gcp_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """Two serve processes write the same GCP entries in turn: never backwards, converged."""
    env = gcp_env("backup", gcp_fake_clean, gcp_key_file, gcp_prefix)
    first = new_daemon(daemons, tmp_path, database, key, env)
    second = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(first.start)
    await asyncio.to_thread(second.start)
    async with (
        gcp_view(database, gcp_fake_clean, gcp_key_file, gcp_prefix) as view,
        Load([first.url, second.url]) as load,
    ):
        async with VersionProbe(lambda: gcp_versions(view)) as probe:
            ids = await seed(load, 80)
            await load.run(ids, 500, clients=8)
            await until_e2e(lambda: drained_daemon(first), 120, "the drain")
        assert probe.backwards == []
        assert load.failed_requests == 0, load.failures[:5]
        assert (await status(first))["replication"]["backup"]["dead"] == 0
        await check_converged(load, ids, view)
    for daemon in (first, second):
        applied = await asyncio.to_thread(
            _metric_total, daemon, 'secretmirror_replication_applied_total{target="backup"}'
        )
        assert applied > 0


# -- verify and repair (in-process runtime) ------------------------------------------


@pytest.fixture
def settings_overrides(gcp_fake: GcpFake, gcp_key_file: Path, gcp_prefix: str) -> dict[str, Any]:
    return {
        "backup": {
            "type": "gcp",
            **gcp_settings(gcp_fake.url, gcp_key_file, gcp_prefix, max_writes_per_s=5000),
        },
        "replication": {"poll_interval_s": 0.2},
        "reconcile": {"verify_interval_s": 0},
    }


async def test_verify_finds_drift_made_in_gcp_and_repair_fixes_it(
    api: Api,
    runtime: Runtime,
    sdk: secretmanager.SecretManagerServiceClient,
    gcp_prefix: str,
) -> None:
    """Missing, stale, mismatch and orphan entries made with the SDK are found, then repaired."""
    ids = [(await api.create(f"d{i}", {"k": f"v{i}"}))["id"] for i in range(8)]
    missing, stale, mismatch = ids[0], ids[1], ids[2]
    name = {sid: f"{PARENT}/secrets/{gcp_prefix}{sid}" for sid in ids}
    async with worker(runtime):
        await until(lambda: drained(runtime))
        first_labels = dict(sdk.get_secret(request={"name": name[stale]}).labels)
        await api.request("PATCH", f"/api/v1/secrets/{stale}", json={"values": {"k": "newer"}})
        await until(lambda: drained(runtime))

    sdk.delete_secret(request={"name": name[missing]})
    # stale: an older copy restored by hand (its value on top, its labels back)
    old = sdk.access_secret_version(request={"name": f"{name[stale]}/versions/1"})
    added = sdk.add_secret_version(
        request={"parent": name[stale], "payload": {"data": old.payload.data}}
    )
    rolled_back = {**first_labels, "secretmirror_gcp_version": added.name.rsplit("/", 1)[-1]}
    _set_labels(sdk, name[stale], rolled_back)
    # mismatch: the labels claim other content at the same version
    labels = dict(sdk.get_secret(request={"name": name[mismatch]}).labels)
    _set_labels(sdk, name[mismatch], {**labels, "secretmirror_hash": "0" * 32})
    orphan = str(uuid.uuid4())
    sdk.create_secret(
        request={
            "parent": PARENT,
            "secret_id": f"{gcp_prefix}{orphan}",
            "secret": {
                "replication": {"automatic": {}},
                "labels": {
                    "secretmirror_managed": "true",
                    "secretmirror_deployment": label_value(runtime.deployment_id),
                    "secretmirror_version": "1",
                    "secretmirror_hash": "1" * 32,
                    "secretmirror_gcp_version": "1",
                },
            },
        }
    )
    sdk.add_secret_version(
        request={"parent": f"{PARENT}/secrets/{gcp_prefix}{orphan}", "payload": {"data": b"{}"}}
    )
    foreign = f"{PARENT}/secrets/{gcp_prefix}{uuid.uuid4()}"
    sdk.create_secret(
        request={
            "parent": PARENT,
            "secret_id": foreign.rsplit("/", 1)[-1],
            "secret": {"replication": {"automatic": {}}},
        }
    )
    sdk.add_secret_version(request={"parent": foreign, "payload": {"data": b"not ours"}})

    found = await run_job(api, "verify")
    assert drift_counts(found, "backup") == (1, 1, 1, 1), found["counts"]
    assert found["samples"]["backup"] == {
        "missing": [missing],
        "stale": [stale],
        "mismatch": [mismatch],
        "orphan": [orphan],
    }
    assert drift_counts(found, "primary") == (0, 0, 0, 0)

    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    async with worker(runtime):
        await until(lambda: drained(runtime))
    clean = await run_job(api, "verify")
    assert drift_counts(clean, "backup") == (0, 0, 0, 0), clean["counts"]
    assert clean["counts"]["stores"]["backup"]["in_sync"] == 8
    assert runtime.backup is not None
    for sid in (missing, stale, mismatch):
        _, body, _ = await api.request("GET", f"/api/v1/secrets/{sid}")
        got = await runtime.backup.get(sid)
        assert got is not None
        assert (got.version, got.values) == (body["version"], body["values"])
    orphan_labels = sdk.get_secret(
        request={"name": f"{PARENT}/secrets/{gcp_prefix}{orphan}"}
    ).labels
    assert orphan_labels["secretmirror_deleted"] == "true"
    latest = sdk.access_secret_version(request={"name": f"{foreign}/versions/latest"})
    assert latest.payload.data == b"not ours"


def _set_labels(
    sdk: secretmanager.SecretManagerServiceClient, name: str, labels: dict[str, str]
) -> None:
    sdk.update_secret(
        request={"secret": {"name": name, "labels": labels}, "update_mask": {"paths": ["labels"]}}
    )


async def test_backup_into_gcp_then_nothing_to_copy(api: Api, runtime: Runtime) -> None:
    """Backup into an empty GCP copies all; the next one copies nothing."""
    for i in range(12):
        await api.create(f"b{i}", {"k": f"v{i}"})
    first = await run_job(api, "backup")
    assert (first["status"], first["counts"]["copied"]) == ("succeeded", 12)
    second = await run_job(api, "backup")
    assert (second["counts"]["copied"], second["counts"]["skipped"]) == (0, 12)


# -- migration aws -> gcp ----------------------------------------------------------------


async def test_migration_aws_to_gcp_under_writes(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    moto_server: str,
    aws_prefix: str,
    gcp_fake_clean: GcpFake,
    gcp_key_file: Path,
    gcp_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """Spec §8 from aws to gcp with rolling restarts under 4 writers: no failure, nothing lost."""
    aws_primary = aws_env("primary", moto_server, aws_prefix)
    pair = [new_daemon(daemons, tmp_path, database, key, aws_primary) for _ in range(2)]
    for daemon in pair:
        await asyncio.to_thread(daemon.start)

    async def rolling_restart(env: dict[str, str], drop: tuple[str, ...] = ()) -> None:
        for daemon in pair:
            await asyncio.to_thread(daemon.stop)
            for name in drop:
                daemon.env.pop(name, None)
            daemon.env.update(env)
            await asyncio.to_thread(daemon.start)

    async def run(daemon: DaemonProcess, mode: str) -> dict[str, Any]:
        job = await asyncio.to_thread(daemon.post, "/admin/v1/reconcile", {"mode": mode})
        return await wait_job(daemon, job["id"])

    async with Load([d.url for d in pair], seed=11) as load:
        ids = await seed(load, 120, clients=4)
        stop = asyncio.Event()

        async def writers() -> None:
            while not stop.is_set():
                await load.run(ids, 20, clients=4)

        writing = asyncio.create_task(writers())
        await asyncio.sleep(0.5)
        # 1. B (gcp) as the backup, restart.
        await rolling_restart(gcp_env("backup", gcp_fake_clean, gcp_key_file, gcp_prefix))
        # 2. Copy what A already holds.
        job = await run(pair[0], "backup")
        assert job["status"] == "succeeded", (job["error"], job["failures"][:3])
        # 3. B reports no missing, stale or mismatch.
        verify = await run(pair[0], "verify")
        assert drift_counts(verify, "backup")[:3] == (0, 0, 0), verify["counts"]
        # 4. B as the primary, A removed, restart.
        gcp_primary = gcp_env("primary", gcp_fake_clean, gcp_key_file, gcp_prefix)
        backup_keys = tuple(gcp_env("backup", gcp_fake_clean, gcp_key_file, gcp_prefix))
        await rolling_restart(gcp_primary, drop=(*aws_primary, *backup_keys))
        await asyncio.sleep(1.0)
        stop.set()
        await writing
        await until_e2e(lambda: drained_daemon(pair[0]), 60, "the new primary to catch up")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.stale_reads == []
        final = await run(pair[1], "verify")
        assert final["status"] == "succeeded"
        assert drift_counts(final, "primary") == (0, 0, 0, 0), final["counts"]
        body = await status(pair[1])
        assert body["stores"]["primary"]["type"] == "gcp"
        assert "backup" not in body["stores"]
        async with gcp_view(database, gcp_fake_clean, gcp_key_file, gcp_prefix) as view:
            await check_converged(load, ids, view)


async def test_verify_sees_the_latest_version_changed_by_hand(
    api: Api,
    runtime: Runtime,
    sdk: secretmanager.SecretManagerServiceClient,
    gcp_prefix: str,
    gcp_fake: GcpFake,
) -> None:
    """A version added, disabled or destroyed by hand (labels untouched, as a console edit
    leaves them) is a mismatch; repair puts secretmirror's value back on top."""
    ids = [(await api.create(f"h{i}", {"k": f"v{i}"}))["id"] for i in range(5)]
    added, disabled, destroyed = ids[:3]
    name = {sid: f"{PARENT}/secrets/{gcp_prefix}{sid}" for sid in ids}
    async with worker(runtime):
        await until(lambda: drained(runtime))
    sdk.add_secret_version(request={"parent": name[added], "payload": {"data": b"console edit"}})
    sdk.disable_secret_version(request={"name": f"{name[disabled]}/versions/1"})
    sdk.destroy_secret_version(request={"name": f"{name[destroyed]}/versions/1"})

    found = await run_job(api, "verify")
    assert drift_counts(found, "backup") == (0, 0, 3, 0), found["counts"]
    assert sorted(found["samples"]["backup"]["mismatch"]) == sorted([added, disabled, destroyed])

    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    async with worker(runtime):  # the mismatches are re-issued through the outbox
        await until(lambda: drained(runtime))
    clean = await run_job(api, "verify")
    assert drift_counts(clean, "backup") == (0, 0, 0, 0), clean["counts"]
    for sid in (added, disabled, destroyed):
        _, body, _ = await api.request("GET", f"/api/v1/secrets/{sid}")
        latest = sdk.access_secret_version(request={"name": f"{name[sid]}/versions/latest"})
        assert json.loads(latest.payload.data) == body["values"]


async def test_verify_asks_each_live_entry_once(
    api: Api, runtime: Runtime, gcp_fake: GcpFake
) -> None:
    """What verify costs on GCP: one listing page, and one access of ``latest`` per entry."""
    for i in range(6):
        await api.create(f"c{i}", {"k": f"v{i}"})
    async with worker(runtime):
        await until(lambda: drained(runtime))
    mark = gcp_fake.mark()
    found = await run_job(api, "verify")
    assert found["counts"]["stores"]["backup"]["in_sync"] == 6
    assert collections.Counter(gcp_fake.ops(mark)) == {"secrets.list": 1, "versions.access": 6}


async def test_verify_sees_a_version_added_by_hand_to_a_tombstone(
    api: Api,
    runtime: Runtime,
    sdk: secretmanager.SecretManagerServiceClient,
    gcp_prefix: str,
) -> None:
    """A deleted secret's GCP secret with a version added by hand serves a value again: an
    orphan; repair destroys it."""
    gone = (await api.create("tomb", {"k": "v"}))["id"]
    await api.create("kept", {"k": "v"})
    async with worker(runtime):
        await until(lambda: drained(runtime))
        status, _, _ = await api.request("DELETE", f"/api/v1/secrets/{gone}")
        assert status == 204
        await until(lambda: drained(runtime))
    name = f"{PARENT}/secrets/{gcp_prefix}{gone}"
    sdk.add_secret_version(request={"parent": name, "payload": {"data": b"revived by hand"}})

    found = await run_job(api, "verify")
    assert drift_counts(found, "backup") == (0, 0, 0, 1), found["counts"]
    assert found["samples"]["backup"]["orphan"] == [gone]

    repaired = await run_job(api, "repair")
    assert (repaired["status"], repaired["counts"]["deleted"]) == ("succeeded", 1), repaired
    with pytest.raises(gexc.BadRequest, match="DESTROYED"):
        sdk.access_secret_version(request={"name": f"{name}/versions/latest"})
    clean = await run_job(api, "verify")
    assert drift_counts(clean, "backup") == (0, 0, 0, 0), clean["counts"]
    assert clean["counts"]["stores"]["backup"]["in_sync"] == 1  # the other secret
