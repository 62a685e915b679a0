"""Vault end to end on a real OpenBao and a real PostgreSQL: replication and reconcile.

Replication runs ``secretmirror serve`` subprocesses that log in with an
AppRole holding only the least-privilege policy the README documents,
under a path prefix of their own, with Vault as the backup and as the primary.
Reconcile runs in process (runtime, API and worker) against drift made by hand
through Vault's HTTP API, as an operator or another tool would make it.

What each kind of drift is in the ``hashicorp`` store's model:

- missing: the entry removed with its metadata, or secretmirror's current KV
  version soft-deleted (it lists and reads as missing);
- mismatch: a value written through the KV API after secretmirror's, so the
  entry's ``current_version`` is past the recorded ``secretmirror.kv-version``;
- stale: an older secretmirror version's values written back as a new KV
  version, with that version's custom metadata (version, hash) recording it:
  a consistent entry that holds an older version;
- orphan: an entry carrying this deployment's metadata with no live secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secretmirror.crypto import Keyring
from secretmirror.runtime import Runtime
from secretmirror.settings import FileStoreSettings, HashicorpStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from secretmirror.stores.hashicorp import HashicorpStore
from tests.conftest import Api
from tests.daemon_proc import DaemonProcess
from tests.load import Load
from tests.openbao import OpenBao
from tests.stores.hashicorp import unique_prefix
from tests.test_hashicorp_store import (
    _role,
    _write_policy,
    approle,  # noqa: F401 (a fixture)
    least_privilege_policy,
)
from tests.test_reconcile import run_job
from tests.test_reconcile_aws import drift_counts, wait_job
from tests.test_replication import drained, until, worker
from tests.test_replication_e2e import (
    VersionProbe,
    check_converged,
    daemons,  # noqa: F401 (a fixture)
    deployment_id,
    key,  # noqa: F401 (a fixture)
    new_daemon,
    seed,
    status,
    store_env,
)
from tests.test_replication_e2e import drained as daemon_drained
from tests.test_replication_e2e import until as until_e2e

MOUNT = "secret"


@pytest.fixture
def vault_prefix() -> str:
    return unique_prefix()


@pytest.fixture
def vault_login(approle: OpenBao, vault_prefix: str) -> dict[str, str]:  # noqa: F811
    """Store fields for an AppRole whose only policy is the documented least-privilege one."""
    policy = _write_policy(approle, least_privilege_policy(MOUNT, vault_prefix))
    role_id, secret_id = _role(approle, policy)
    return {"auth_method": "approle", "role_id": role_id, "secret_id": secret_id}


def vault_env(role: str, bao: OpenBao, prefix: str, login: dict[str, str]) -> dict[str, str]:
    fields = {"type": "hashicorp", "url": bao.url, "mount": MOUNT, "path_prefix": prefix}
    return store_env(role, {**fields, **login})


@contextlib.asynccontextmanager
async def vault_view(database: str, bao: OpenBao, prefix: str) -> AsyncIterator[HashicorpStore]:
    """A ``hashicorp`` store of the daemon's deployment, to look at what Vault holds."""
    ctx = StoreContext(await deployment_id(database), Keyring([secrets.token_bytes(32)]))
    settings = HashicorpStoreSettings(url=bao.url, token=bao.root_token, path_prefix=prefix)
    store = HashicorpStore(settings, ctx)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def vault_versions(store: HashicorpStore) -> dict[str, int]:
    """Every listed entry's secretmirror version, tombstones included."""
    return {e.secret_id: e.version async for e in store.list()}


async def check_listing(load: Load, ids: list[str], store: HashicorpStore) -> None:
    """The listing holds every live secret as a clean entry, and nothing but the load's ids.

    A secret deleted before its first write reached Vault may have no entry at all:
    the delete of an entry that does not exist leaves nothing behind.
    """
    listed = {e.secret_id: e async for e in store.list()}
    assert set(listed) <= set(ids)
    live = {sid for sid in ids if await load.truth(sid) is not None}
    assert {sid for sid, e in listed.items() if not e.deleted} == live
    assert not [e for e in listed.values() if e.foreign_write]


async def verify_daemon(daemon: DaemonProcess) -> dict[str, Any]:
    job = await asyncio.to_thread(daemon.post, "/admin/v1/reconcile", {"mode": "verify"})
    return await wait_job(daemon, job["id"])


# -- replication -----------------------------------------------------------------


async def test_convergence_with_vault_as_the_backup(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    openbao: OpenBao,
    vault_prefix: str,
    vault_login: dict[str, str],
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """600 random writes over 150 secrets from 8 clients converge in Vault, never backwards."""
    env = vault_env("backup", openbao, vault_prefix, vault_login)
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with vault_view(database, openbao, vault_prefix) as view, Load([daemon.url]) as load:
        async with VersionProbe(lambda: vault_versions(view)) as probe:
            ids = await seed(load, 150)
            await load.run(ids, 450, clients=8)
            await until_e2e(lambda: daemon_drained(daemon), 120, "Vault to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.unknown_outcomes == 0
        assert load.stale_reads == []
        assert probe.polls > 3
        assert probe.backwards == []
        assert (await status(daemon))["replication"]["backup"]["dead"] == 0
        await check_converged(load, ids, view)
        await check_listing(load, ids, view)
    verified = await verify_daemon(daemon)
    assert verified["status"] == "succeeded", verified
    assert drift_counts(verified, "backup") == (0, 0, 0, 0), verified["counts"]


async def test_convergence_with_vault_as_the_primary(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    openbao: OpenBao,
    vault_prefix: str,
    vault_login: dict[str, str],
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """The same load with a Vault primary and a file backup: both converge, Vault never back."""
    backup_dir = tmp_path / "file-backup"
    env = {
        **vault_env("primary", openbao, vault_prefix, vault_login),
        **store_env("backup", {"type": "file", "path": backup_dir}),
    }
    daemon = new_daemon(daemons, tmp_path, database, key, env)
    await asyncio.to_thread(daemon.start)
    async with vault_view(database, openbao, vault_prefix) as view, Load([daemon.url]) as load:
        async with VersionProbe(lambda: vault_versions(view)) as probe:
            ids = await seed(load, 150)
            await load.run(ids, 450, clients=8)
            await until_e2e(lambda: daemon_drained(daemon), 120, "both stores to drain")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.unknown_outcomes == 0
        assert load.stale_reads == []
        assert probe.polls > 3
        assert probe.backwards == []
        body = await status(daemon)
        assert body["stores"]["primary"]["type"] == "hashicorp"
        assert [t["dead"] for t in body["replication"].values()] == [0] * len(body["replication"])
        await check_converged(load, ids, view)
        await check_listing(load, ids, view)
        ctx = StoreContext(await deployment_id(database), Keyring([base64.b64decode(key)]))
        await check_converged(load, ids, FileStore(FileStoreSettings(path=backup_dir), ctx))
    verified = await verify_daemon(daemon)
    assert verified["status"] == "succeeded", verified
    assert drift_counts(verified, "primary") == (0, 0, 0, 0), verified["counts"]
    assert drift_counts(verified, "backup") == (0, 0, 0, 0), verified["counts"]


# -- reconcile against drift made by hand ----------------------------------------------


@pytest.fixture
def settings_overrides(openbao: OpenBao, vault_prefix: str) -> dict[str, Any]:
    return {
        "backup": {
            "type": "hashicorp",
            "url": openbao.url,
            "token": openbao.root_token,
            "mount": MOUNT,
            "path_prefix": vault_prefix,
        },
        "replication": {"poll_interval_s": 0.2},
        "reconcile": {"verify_interval_s": 0},
    }


def entry_state(bao: OpenBao, path: str) -> tuple[Any, ...]:
    """Everything Vault holds at ``path``: metadata (versions, custom metadata) and the value."""
    meta_status, meta = bao.request("GET", f"{MOUNT}/metadata/{path}")
    data_status, data = bao.request("GET", f"{MOUNT}/data/{path}")
    return (
        meta_status,
        (meta or {}).get("data"),
        data_status,
        ((data or {}).get("data") or {}).get("data"),
    )


def vault_state(bao: OpenBao, prefix: str) -> dict[str, tuple[Any, ...]]:
    """``entry_state`` of every name under ``prefix``."""
    folder = prefix.rstrip("/")
    listed, body = bao.request("GET", f"{MOUNT}/metadata/{folder}?list=true")
    assert listed == 200, body
    return {name: entry_state(bao, prefix + name) for name in body["data"]["keys"]}


@dataclass
class Drift:
    """Secrets whose Vault entries were changed by hand, and entries that are not ours."""

    ids: list[str]
    removed: str
    soft_deleted: str
    stale: str
    mismatch: str
    orphan: str
    #: Vault paths of entries someone else wrote under the prefix, and their state then.
    foreign: dict[str, tuple[Any, ...]]


@pytest.fixture
async def drift(api: Api, runtime: Runtime, openbao: OpenBao, vault_prefix: str) -> Drift:
    """Eight secrets replicated to Vault, then every kind of drift made there by hand."""
    ids = [(await api.create(f"d{i}", {"k": f"v{i}"}))["id"] for i in range(8)]
    removed, soft_deleted, stale, mismatch = ids[:4]
    async with worker(runtime):
        await until(lambda: drained(runtime))
        first = openbao.ok("GET", f"{MOUNT}/metadata/{vault_prefix}{stale}")["data"]
        patched, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{stale}", json={"values": {"k": "newer"}}
        )
        assert patched == 200
        await until(lambda: drained(runtime))

    openbao.ok("DELETE", f"{MOUNT}/metadata/{vault_prefix}{removed}")
    openbao.ok("DELETE", f"{MOUNT}/data/{vault_prefix}{soft_deleted}")
    # A rollback by hand: version 1's values written again, and version 1's mark recording them.
    old = openbao.ok("GET", f"{MOUNT}/data/{vault_prefix}{stale}?version=1")["data"]["data"]
    rolled = openbao.ok("POST", f"{MOUNT}/data/{vault_prefix}{stale}", {"data": old})
    mark = {**first["custom_metadata"], "secretmirror.kv-version": str(rolled["data"]["version"])}
    openbao.ok("POST", f"{MOUNT}/metadata/{vault_prefix}{stale}", {"custom_metadata": mark})
    openbao.ok("POST", f"{MOUNT}/data/{vault_prefix}{mismatch}", {"data": {"k": "changed by hand"}})
    orphan = str(uuid.uuid4())
    ours = {**first["custom_metadata"], "secretmirror.kv-version": "1"}
    openbao.ok("POST", f"{MOUNT}/metadata/{vault_prefix}{orphan}", {"custom_metadata": ours})
    openbao.ok("POST", f"{MOUNT}/data/{vault_prefix}{orphan}", {"data": {"k": "left behind"}})

    theirs, other_deployment = uuid.uuid4(), uuid.uuid4()
    foreign = {
        # Someone else's value under our prefix, named like a secret id, no custom metadata.
        f"{vault_prefix}{theirs}": None,
        # The same with custom metadata of their own.
        f"{vault_prefix}not-a-secret-id": {"owner": "team-b"},
        # Another deployment's entry (it would be an orphan of theirs, never ours).
        f"{vault_prefix}{other_deployment}": {
            **ours,
            "secretmirror.deployment": str(uuid.uuid4()),
        },
    }
    for path, custom in foreign.items():
        openbao.ok("POST", f"{MOUNT}/data/{path}", {"data": {"theirs": "keep out"}})
        if custom is not None:
            openbao.ok("POST", f"{MOUNT}/metadata/{path}", {"custom_metadata": custom})
    return Drift(
        ids,
        removed,
        soft_deleted,
        stale,
        mismatch,
        orphan,
        {path: entry_state(openbao, path) for path in foreign},
    )


async def test_verify_finds_each_kind_of_drift_made_in_vault(api: Api, drift: Drift) -> None:
    """Removed and soft-deleted (missing), rolled back (stale), hand-written, orphan: all found."""
    found = await run_job(api, "verify")
    assert found["status"] == "succeeded", found
    assert drift_counts(found, "backup") == (2, 1, 1, 1)
    samples = found["samples"]["backup"]
    assert sorted(samples.pop("missing")) == sorted([drift.removed, drift.soft_deleted])
    assert samples == {
        "stale": [drift.stale],
        "mismatch": [drift.mismatch],
        "orphan": [drift.orphan],
    }
    assert drift_counts(found, "primary") == (0, 0, 0, 0)
    assert found["counts"]["stores"]["backup"]["in_sync"] == 4


async def test_dry_run_repair_changes_nothing_in_vault(
    api: Api, drift: Drift, openbao: OpenBao, vault_prefix: str
) -> None:
    """A dry-run repair reports the drift and leaves every entry under the prefix as it was."""
    before = vault_state(openbao, vault_prefix)
    dry = await run_job(api, "repair", dry_run=True)
    assert dry["status"] == "succeeded", dry
    assert drift_counts(dry, "backup") == (2, 1, 1, 1)
    assert (dry["counts"]["copied"], dry["counts"]["deleted"]) == (0, 0)
    assert vault_state(openbao, vault_prefix) == before
    assert drift_counts(await run_job(api, "verify"), "backup") == (2, 1, 1, 1)


async def test_repair_fixes_each_kind_and_the_next_verify_is_clean(
    api: Api, runtime: Runtime, drift: Drift, openbao: OpenBao, vault_prefix: str
) -> None:
    """After repair every entry equals the API, the orphan is a tombstone, verify is clean."""
    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    assert repaired["counts"]["deleted"] == 1
    async with worker(runtime):  # the mismatch is re-issued through the outbox
        await until(lambda: drained(runtime))
    clean = await run_job(api, "verify")
    assert drift_counts(clean, "backup") == (0, 0, 0, 0), clean["counts"]
    assert clean["counts"]["stores"]["backup"]["in_sync"] == len(drift.ids)
    assert runtime.backup is not None
    for sid in drift.ids:
        _, body, _ = await api.request("GET", f"/api/v1/secrets/{sid}")
        got = await runtime.backup.get(sid)
        assert got is not None, sid
        assert (got.version, got.values) == (body["version"], body["values"]), sid
        current = openbao.ok("GET", f"{MOUNT}/data/{vault_prefix}{sid}")["data"]["data"]
        assert current == body["values"], sid  # what any other Vault client reads
    orphan_status, orphan_value = openbao.request(
        "GET", f"{MOUNT}/data/{vault_prefix}{drift.orphan}"
    )
    assert orphan_status == 404, orphan_value
    meta = openbao.ok("GET", f"{MOUNT}/metadata/{vault_prefix}{drift.orphan}")["data"]
    assert meta["custom_metadata"]["secretmirror.deleted"] == "true"
    assert all(v["destroyed"] for v in meta["versions"].values())


async def test_repair_never_touches_entries_of_others_under_the_prefix(
    api: Api, runtime: Runtime, drift: Drift, openbao: OpenBao
) -> None:
    """Entries without this deployment's mark are neither listed, written nor deleted."""
    assert runtime.backup is not None
    listed = {e.secret_id async for e in runtime.backup.list()}
    assert not {path.rpartition("/")[2] for path in drift.foreign} & listed
    assert (await run_job(api, "repair"))["status"] == "succeeded"
    async with worker(runtime):  # the re-issued mismatch, delivered
        await until(lambda: drained(runtime))
    for path, before in drift.foreign.items():
        assert entry_state(openbao, path) == before, path


async def test_foreign_entry_in_a_secrets_place_is_never_overwritten(
    api: Api, runtime: Runtime, openbao: OpenBao, vault_prefix: str
) -> None:
    """Someone else's entry at a secret's path: its delivery dead-letters, repair fails, kept."""
    sid = (await api.create("victim", {"k": "ours"}))["id"]
    other = (await api.create("bystander", {"k": "ours"}))["id"]
    path = f"{vault_prefix}{sid}"
    async with worker(runtime):
        await until(lambda: drained(runtime))
    openbao.ok("DELETE", f"{MOUNT}/metadata/{path}")
    openbao.ok("POST", f"{MOUNT}/data/{path}", {"data": {"theirs": "keep out"}})
    before = entry_state(openbao, path)
    for target in (sid, other):
        patched, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{target}", json={"values": {"k": "next"}}
        )
        assert patched == 200

    async def dead_lettered() -> bool:
        _, body, _ = await api.request("GET", "/admin/v1/status")
        return bool(body["replication"]["backup"]["dead"] == 1)

    async with worker(runtime):
        await until(dead_lettered)
        await until(lambda: drained(runtime))
    assert runtime.backup is not None
    bystander = await runtime.backup.get(other)
    assert bystander is not None
    assert bystander.values == {"k": "next"}
    repaired = await run_job(api, "repair")
    assert [f["secret_id"] for f in repaired["failures"]] == [sid], repaired
    assert entry_state(openbao, path) == before
