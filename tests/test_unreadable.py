"""A ciphertext that does not decrypt is a failed read of its source (issue #11 part 3, spec §14).

The primary is the ``sql`` store in the main database, the backup a ``file``
store; entries are corrupted the way a disk, a bad restore or a hand edit
would: a flipped byte, or another secret's ciphertext copied in.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from secretmirror.runtime import Runtime
from secretmirror.stores.file import file_name
from tests.conftest import Api
from tests.test_reconcile import run_job
from tests.test_replication import drained, until, worker


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backup-store"


@pytest.fixture
def settings_overrides(backup_dir: Path) -> dict[str, Any]:
    return {
        "backup": {"type": "file", "path": str(backup_dir)},
        "replication": {"poll_interval_s": 0.2},
        "reconcile": {"verify_interval_s": 0},
    }


async def seeded(api: Api, runtime: Runtime, n: int) -> list[str]:
    ids = [(await api.create(f"u{i}", {"k": f"v{i}"}))["id"] for i in range(n)]
    async with worker(runtime):
        await until(lambda: drained(runtime))
    return ids


async def flip_sql(runtime: Runtime, sid: str) -> None:
    """Flip one byte in the middle of the sql store's ciphertext of ``sid``."""
    await runtime.pool.execute(
        "UPDATE secretmirror_values"
        " SET ciphertext = set_byte(ciphertext, length(ciphertext) / 2,"
        "     get_byte(ciphertext, length(ciphertext) / 2) # 1)"
        " WHERE secret_id = $1",
        uuid.UUID(sid),
    )


async def copy_sql(runtime: Runtime, source: str, dest: str) -> None:
    """Put ``source``'s ciphertext (and version and hash) into ``dest``'s row."""
    await runtime.pool.execute(
        "UPDATE secretmirror_values d SET ciphertext = s.ciphertext, hash = s.hash"
        " FROM secretmirror_values s WHERE s.secret_id = $1 AND d.secret_id = $2",
        uuid.UUID(source),
        uuid.UUID(dest),
    )


def flip_file(backup_dir: Path, sid: str) -> None:
    """Flip the last byte of the file store entry of ``sid`` (inside the envelope)."""
    path = backup_dir / file_name(sid)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


async def get(api: Api, sid: str) -> tuple[int, Any, str | None]:
    status, body, headers = await api.request("GET", f"/api/v1/secrets/{sid}")
    return status, body, headers.get("X-Secret-Source")


async def test_a_corrupt_primary_value_is_read_from_the_backup(api: Api, runtime: Runtime) -> None:
    """A flipped byte in the sql store: GET answers from the backup, not 500."""
    ids = await seeded(api, runtime, 2)
    await flip_sql(runtime, ids[0])
    status, body, source = await get(api, ids[0])
    assert (status, body["values"], source) == (200, {"k": "v0"}, "backup")
    status, body, _ = await api.request("GET", "/api/v1/secrets", params={"values": "true"})
    assert status == 200
    assert {i["id"]: i["values"] for i in body["items"]} == {
        ids[0]: {"k": "v0"},
        ids[1]: {"k": "v1"},
    }


async def test_another_rows_ciphertext_falls_back(api: Api, runtime: Runtime) -> None:
    """A ciphertext copied from another secret's row is bound to that secret: never served."""
    ids = await seeded(api, runtime, 2)
    await copy_sql(runtime, ids[1], ids[0])
    status, body, source = await get(api, ids[0])
    assert (status, body["values"], source) == (200, {"k": "v0"}, "backup")


async def test_corrupt_in_both_stores_reads_the_log(
    api: Api, runtime: Runtime, backup_dir: Path
) -> None:
    """With the sql value and the file store entry both corrupt, the event log serves."""
    ids = await seeded(api, runtime, 1)
    await flip_sql(runtime, ids[0])
    flip_file(backup_dir, ids[0])
    status, body, source = await get(api, ids[0])
    assert (status, body["values"], source) == (200, {"k": "v0"}, "log")
    # A write over the corrupt value still works: it reads the current values the same way.
    status, body, _ = await api.request(
        "PATCH", f"/api/v1/secrets/{ids[0]}", json={"values": {"k2": "x"}}
    )
    assert (status, body["values"]) == (200, {"k": "v0", "k2": "x"})


async def test_verify_reports_unreadable_and_repair_rewrites(
    api: Api, runtime: Runtime, backup_dir: Path
) -> None:
    """Verify counts unreadable entries per store; repair rewrites them; then all in sync."""
    ids = await seeded(api, runtime, 4)
    await flip_sql(runtime, ids[0])
    await copy_sql(runtime, ids[2], ids[1])
    flip_file(backup_dir, ids[3])
    job = await run_job(api, "verify")
    assert job["status"] == "succeeded"
    primary, backup = job["counts"]["stores"]["primary"], job["counts"]["stores"]["backup"]
    assert (primary["unreadable"], primary["in_sync"]) == (2, 2)
    assert (backup["unreadable"], backup["in_sync"]) == (1, 3)
    assert sorted(job["samples"]["primary"]["unreadable"]) == sorted(ids[:2])
    assert job["samples"]["backup"] == {"unreadable": [ids[3]]}
    async with api.client.get("/metrics") as response:
        text = await response.text()
    assert 'secretmirror_divergent_secrets{kind="unreadable",store="primary"} 2.0' in text

    repair = await run_job(api, "repair")
    assert repair["status"] == "succeeded"
    assert repair["counts"]["copied"] == 3
    async with worker(runtime):
        await until(lambda: drained(runtime))
    clean = await run_job(api, "verify")
    for store in ("primary", "backup"):
        counts = clean["counts"]["stores"][store]
        assert (counts["in_sync"], counts["unreadable"]) == (4, 0)
    for n, sid in enumerate(ids):
        status, body, source = await get(api, sid)
        assert (status, body["values"], source) == (200, {"k": f"v{n}"}, "primary")


async def test_a_file_copied_over_another_secrets_is_unreadable_and_repaired(
    api: Api, runtime: Runtime, backup_dir: Path
) -> None:
    """A file store entry replaced by another secret's file is reported unreadable (not
    stale or in sync by its header), and repair writes the right entry over it."""
    ids = await seeded(api, runtime, 2)
    assert runtime.backup is not None
    for _ in range(3):  # the copied secret's entry is newer than the one it replaces
        status, _, _ = await api.request(
            "PATCH", f"/api/v1/secrets/{ids[1]}", json={"values": {"k": f"x{_}"}}
        )
        assert status == 200
    async with worker(runtime):
        await until(lambda: drained(runtime))
    (backup_dir / file_name(ids[0])).write_bytes((backup_dir / file_name(ids[1])).read_bytes())
    job = await run_job(api, "verify")
    assert job["samples"]["backup"] == {"unreadable": [ids[0]]}
    assert (await run_job(api, "repair"))["status"] == "succeeded"
    async with worker(runtime):
        await until(lambda: drained(runtime))
    stored = await runtime.backup.get(ids[0])
    assert stored is not None
    assert stored.values == {"k": "v0"}
    clean = await run_job(api, "verify")
    assert clean["counts"]["stores"]["backup"]["in_sync"] == 2
