"""Reconcile against AWS (moto): drift of every kind found and repaired, and the §8 migration."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from types_aiobotocore_secretsmanager import SecretsManagerClient

from secretmirror.runtime import Runtime
from secretmirror.stores.aws import TAG_DEPLOYMENT, TAG_MANAGED, parse_token
from tests.conftest import Api
from tests.daemon_proc import DaemonProcess
from tests.load import Load
from tests.moto import ACCESS_KEY, REGION, SECRET_KEY, aws_settings
from tests.test_reconcile import run_job
from tests.test_replication import drained, until, worker
from tests.test_replication_e2e import (
    aws_env,
    check_converged,
    daemons,  # noqa: F401 (a fixture)
    key,  # noqa: F401 (a fixture)
    new_daemon,
    seed,
    status,
)
from tests.test_replication_e2e import until as until_e2e


@pytest.fixture
def settings_overrides(moto_server: str, aws_prefix: str) -> dict[str, Any]:
    return {
        "backup": {"type": "aws", **aws_settings(moto_server, aws_prefix, max_writes_per_s=5000)},
        "replication": {"poll_interval_s": 0.2},
        "reconcile": {"verify_interval_s": 0},
    }


@pytest.fixture
async def sm(moto_server: str) -> AsyncIterator[SecretsManagerClient]:
    async with get_session().create_client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        yield client


def drift_counts(job: dict[str, Any], store: str) -> tuple[int, int, int, int]:
    counts = job["counts"]["stores"][store]
    return counts["missing"], counts["stale"], counts["mismatch"], counts["orphan"]


async def test_verify_finds_each_kind_and_repair_fixes_all(
    api: Api, runtime: Runtime, sm: SecretsManagerClient, aws_prefix: str
) -> None:
    """Missing, stale, mismatch and orphan entries made in moto are found, repaired, then clean."""
    ids = [(await api.create(f"d{i}", {"k": f"v{i}"}))["id"] for i in range(8)]
    missing, stale, mismatch = ids[0], ids[1], ids[2]
    async with worker(runtime):
        await until(lambda: drained(runtime))
        # A second AWS version to roll back to (pending versions would coalesce into one).
        await api.request("PATCH", f"/api/v1/secrets/{stale}", json={"values": {"k": "newer"}})
        await until(lambda: drained(runtime))

    await sm.delete_secret(SecretId=f"{aws_prefix}{missing}", ForceDeleteWithoutRecovery=True)
    listed = await sm.list_secret_version_ids(SecretId=f"{aws_prefix}{stale}")
    first = next(v for v in listed["Versions"] if (parse_token(v["VersionId"]) or (0,))[0] == 1)
    current = next(v for v in listed["Versions"] if "AWSCURRENT" in v.get("VersionStages", []))
    await sm.update_secret_version_stage(  # a console rollback to the previous version
        SecretId=f"{aws_prefix}{stale}",
        VersionStage="AWSCURRENT",
        MoveToVersionId=first["VersionId"],
        RemoveFromVersionId=current["VersionId"],
    )
    await sm.put_secret_value(
        SecretId=f"{aws_prefix}{mismatch}",
        SecretString=json.dumps({"k": "changed behind our back"}),
    )
    orphan = str(uuid.uuid4())
    await sm.create_secret(
        Name=f"{aws_prefix}{orphan}",
        SecretString="{}",
        Tags=[
            {"Key": TAG_DEPLOYMENT, "Value": runtime.deployment_id},
            {"Key": TAG_MANAGED, "Value": "true"},
        ],
    )
    foreign = f"{aws_prefix}{uuid.uuid4()}"
    await sm.create_secret(Name=foreign, SecretString="not ours")

    found = await run_job(api, "verify")
    assert drift_counts(found, "backup") == (1, 1, 1, 1)
    assert found["samples"]["backup"] == {
        "missing": [missing],
        "stale": [stale],
        "mismatch": [mismatch],
        "orphan": [orphan],
    }
    assert drift_counts(found, "primary") == (0, 0, 0, 0)

    dry = await run_job(api, "repair", dry_run=True)
    assert drift_counts(dry, "backup") == (1, 1, 1, 1)
    assert drift_counts(await run_job(api, "verify"), "backup") == (1, 1, 1, 1)

    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    async with worker(runtime):
        await until(lambda: drained(runtime))
    clean = await run_job(api, "verify")
    assert drift_counts(clean, "backup") == (0, 0, 0, 0)
    assert clean["counts"]["stores"]["backup"]["in_sync"] == 8
    assert runtime.backup is not None
    for sid in (missing, stale, mismatch):
        _, body, _ = await api.request("GET", f"/api/v1/secrets/{sid}")
        got = await runtime.backup.get(sid)
        assert got is not None
        assert (got.version, got.values) == (body["version"], body["values"])
    described = await sm.describe_secret(SecretId=f"{aws_prefix}{orphan}")
    assert described.get("DeletedDate") is not None
    assert (await sm.get_secret_value(SecretId=foreign))["SecretString"] == "not ours"


async def test_second_backup_skips_everything(api: Api, runtime: Runtime) -> None:
    """Backup into an empty AWS copies all; the next one copies nothing."""
    for i in range(20):
        await api.create(f"b{i}", {"k": f"v{i}"})
    first = await run_job(api, "backup")
    assert (first["status"], first["counts"]["copied"]) == ("succeeded", 20)
    second = await run_job(api, "backup")
    assert (second["counts"]["copied"], second["counts"]["skipped"]) == (0, 20)


async def test_migration_sql_to_aws_under_writes(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    moto_server: str,
    aws_prefix: str,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """Spec §8 from sql to aws with rolling restarts under 4 writers: no failure, nothing lost."""
    pair = [new_daemon(daemons, tmp_path, database, key, {}) for _ in range(2)]
    for daemon in pair:
        await asyncio.to_thread(daemon.start)

    async def rolling_restart(env: dict[str, str], drop: tuple[str, ...] = ()) -> None:
        for daemon in pair:
            await asyncio.to_thread(daemon.stop)
            for name in drop:
                daemon.env.pop(name, None)
            daemon.env.update(env)
            await asyncio.to_thread(daemon.start)

    async with Load([d.url for d in pair], seed=8) as load:
        ids = await seed(load, 150, clients=4)
        stop = asyncio.Event()

        async def writers() -> None:
            while not stop.is_set():
                await load.run(ids, 20, clients=4)

        writing = asyncio.create_task(writers())
        await asyncio.sleep(0.5)
        # 1. B (aws) as the backup, restart.
        backup_env = aws_env("backup", moto_server, aws_prefix)
        await rolling_restart(backup_env)
        # 2. Copy what A already holds.
        job = await asyncio.to_thread(pair[0].post, "/admin/v1/reconcile", {"mode": "backup"})
        job = await wait_job(pair[0], job["id"])
        assert job["status"] == "succeeded", (job["error"], job["failures"][:3])
        # 3. B reports no missing, stale or mismatch.
        verify = await wait_job(
            pair[0],
            (await asyncio.to_thread(pair[0].post, "/admin/v1/reconcile", {"mode": "verify"}))[
                "id"
            ],
        )
        assert drift_counts(verify, "backup")[:3] == (0, 0, 0), verify
        # 4. B as the primary, A removed, restart.
        primary_env = aws_env("primary", moto_server, aws_prefix)
        await rolling_restart(primary_env, drop=tuple(backup_env))
        await asyncio.sleep(1.0)
        stop.set()
        await writing
        await until_e2e(lambda: drained_daemon(pair[0]), 60, "the new primary to catch up")
        assert load.failed_requests == 0, load.failures[:5]
        assert load.stale_reads == []
        final = await wait_job(
            pair[1],
            (await asyncio.to_thread(pair[1].post, "/admin/v1/reconcile", {"mode": "verify"}))[
                "id"
            ],
        )
        assert final["status"] == "succeeded"
        assert drift_counts(final, "primary") == (0, 0, 0, 0), final
        body = await status(pair[1])
        assert body["stores"]["primary"]["type"] == "aws"
        assert "backup" not in body["stores"]
        from tests.test_replication_e2e import aws_view

        async with aws_view(database, moto_server, aws_prefix) as view:
            await check_converged(load, ids, view)


async def drained_daemon(daemon: DaemonProcess) -> bool:
    return all(t["pending"] == 0 for t in (await status(daemon))["replication"].values())


async def wait_job(daemon: DaemonProcess, job_id: str) -> dict[str, Any]:
    for _ in range(1200):
        job: dict[str, Any] = await asyncio.to_thread(daemon.get, f"/admin/v1/jobs/{job_id}")
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("job did not finish")


class TestForceDelete:
    @pytest.fixture
    def settings_overrides(self, moto_server: str, aws_prefix: str) -> dict[str, Any]:
        fields = aws_settings(moto_server, aws_prefix, recovery_window_days=0)
        return {"backup": {"type": "aws", **fields}, "reconcile": {"verify_interval_s": 0}}

    async def test_emptying_a_store_that_keeps_no_tombstone_is_refused(self, api: Api) -> None:
        """A restore with delete_secrets would force-delete the aws backup's entries: AWS
        keeps nothing of them, so verify would count each missing and repair would write it
        back. Refused with 422 and no job made; without delete_secrets it runs."""
        before = (await api.request("GET", "/admin/v1/jobs"))[1]["items"]
        body = {"mode": "restore", "delete_secrets": True}
        status, answer, _ = await api.request("POST", "/admin/v1/reconcile", json=body)
        assert status == 422, answer
        assert "recovery_window_days = 0" in json.dumps(answer)
        assert (await api.request("GET", "/admin/v1/jobs"))[1]["items"] == before
        job = await run_job(api, "restore")
        assert job["status"] == "succeeded", job
