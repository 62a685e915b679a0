"""Reconcile jobs per store and verify/repair of mirrors (spec sections 7 and 16), in-process.

File stores stand in for the mirrors (the scan treats every store alike): ``named``
keys entries by secret name (fence: the event seq), ``ids`` by secret id (fence:
the version), ``kept`` by name and retains what leaves it. Drift is made by hand
through the mirror's own store and by deliveries that never reached it (the
worker stopped, the delivery row then marked applied).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from secretmirror.runtime import Runtime
from secretmirror.shared_gauges import read_shared_state
from secretmirror.stores.file import file_name
from tests.conftest import Api
from tests.mirrorconf import file_mirrors, holdings
from tests.test_cli import Cli, run, server_logs, server_url  # noqa: F401 (fixtures)
from tests.test_reconcile import run_job
from tests.test_replication import drained, until, worker

MIRRORS = ("named", "ids", "kept")
DRIFT = ("missing", "stale", "mismatch", "unreadable", "orphan")


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    mirrors = file_mirrors(
        tmp_path,
        named={"include": ["app-*"], "naming": "name"},
        ids={"include": ["app-*"]},
        kept={"include": ["app-*"], "naming": "name", "on_delete": "retain"},
    )
    return {**mirrors, "reconcile": {"verify_interval_s": 0, "concurrency": 4}}


async def current(rt: Runtime, secret_id: str) -> tuple[int, int, str, str]:
    """(version, seq of the current version's event, name, hash) of a live secret."""
    row = await rt.pool.fetchrow(
        "SELECT s.version, e.seq, s.name, s.hash FROM secrets s JOIN events e"
        " ON e.secret_id = s.id AND e.version = s.version WHERE s.id = $1",
        uuid.UUID(secret_id),
    )
    assert row is not None
    return row["version"], row["seq"], row["name"], row["hash"]


async def lose_deliveries(rt: Runtime, secret_id: str, *stores: str) -> None:
    """The pending deliveries of a secret to ``stores`` never reach them (marked applied)."""
    done = await rt.pool.execute(
        "UPDATE deliveries SET applied_version = version, pending_since = NULL"
        " WHERE secret_id = $1 AND target = ANY($2::text[]) AND version > applied_version",
        uuid.UUID(secret_id),
        rt.keys_of(list(stores)),
    )
    assert done != "UPDATE 0"


async def patch(api: Api, secret_id: str, body: dict[str, Any]) -> None:
    status, answer, _ = await api.request("PATCH", f"/api/v1/secrets/{secret_id}", json=body)
    assert status == 200, answer


def drift(job: dict[str, Any], store: str) -> dict[str, int]:
    per = job["counts"]["stores"][store]
    return {cls: per[cls] for cls in DRIFT if per[cls]}


async def test_verify_finds_each_class_in_mirrors_and_repair_fixes_it(
    api: Api, runtime: Runtime
) -> None:
    async with worker(runtime):
        ok = await api.create("app-ok", {"k": "ok"})
        gone = await api.create("app-gone", {"k": "gone"})
        buried = await api.create("app-buried", {"k": "buried"})
        stale = await api.create("app-stale", {"k": "old"})
        forged = await api.create("app-forged", {"k": "real"})
        moved = await api.create("app-moved", {"k": "moved"})
        other = await api.create("db-other", {"k": "other"})
        await until(lambda: drained(runtime))
    assert runtime.backup is not None
    named, ids, kept = (runtime.mirrors[m] for m in MIRRORS)

    # The worker is not running from here on.
    await patch(api, stale["id"], {"values": {"k": "new"}})
    await patch(api, forged["id"], {"values": {"k": "real2"}})
    await patch(api, moved["id"], {"name": "web-moved"})  # renamed out of every selection
    # A delivery on its way is no drift: the rename's removal of app-moved is pending.
    pending = await run_job(api, "verify")
    assert pending["status"] == "succeeded"
    assert "orphan" not in drift(pending, "named")
    assert "orphan" not in drift(pending, "ids")
    for secret in (stale, forged, moved):
        await lose_deliveries(runtime, secret["id"], *MIRRORS)

    # By hand, through each mirror's store.
    (Path(named.location.removeprefix("file:")) / file_name("app-gone")).unlink(missing_ok=False)
    (Path(ids.location.removeprefix("file:")) / file_name(gone["id"])).unlink(missing_ok=False)
    b_version, b_seq, _, _ = await current(runtime, buried["id"])
    await named.delete("app-buried", b_seq + 1)
    await ids.delete(buried["id"], b_version + 1)
    f_version, f_seq, _, f_hash = await current(runtime, forged["id"])
    await named.put("app-forged", f_seq, {"k": "forged"}, "forged-hash")
    await ids.put(forged["id"], f_version, {"k": "forged"}, "forged-hash")
    # Entries for a secret no mirror selects (db-other): orphans, except in "kept".
    o_version, _, _, o_hash = await current(runtime, other["id"])
    await named.put("db-other", 1, {"k": "other"}, o_hash)
    await ids.put(other["id"], o_version, {"k": "other"}, o_hash)
    await kept.put("db-other", 1, {"k": "other"}, o_hash)

    found = await run_job(api, "verify")
    assert found["status"] == "succeeded"
    assert found["stores"] is None  # every store
    assert set(found["counts"]["stores"]) == {"primary", "backup", *MIRRORS}
    expected = {"missing": 2, "stale": 1, "mismatch": 1, "orphan": 2}
    assert drift(found, "named") == expected
    assert drift(found, "ids") == expected
    # "kept" retains what left it (app-moved) and the hand-made db-other: in sync, never
    # orphans. The lost updates left two of its entries stale.
    assert drift(found, "kept") == {"stale": 2}
    assert found["counts"]["stores"]["kept"]["in_sync"] == 5
    samples = {cls: sorted(keys) for cls, keys in found["samples"]["named"].items()}
    assert samples == {
        "missing": ["app-buried", "app-gone"],
        "stale": ["app-stale"],
        "mismatch": ["app-forged"],
        "orphan": ["app-moved", "db-other"],
    }
    samples = {cls: sorted(keys) for cls, keys in found["samples"]["ids"].items()}
    assert samples == {
        "missing": sorted([gone["id"], buried["id"]]),
        "stale": [stale["id"]],
        "mismatch": [forged["id"]],
        "orphan": sorted([moved["id"], other["id"]]),
    }
    assert "kept" not in found["samples"] or "orphan" not in found["samples"]["kept"]
    # The primary and backup are untouched by any of it.
    assert drift(found, "primary") == {}
    assert drift(found, "backup") == {}
    status, shown, _ = await api.request("GET", f"/admin/v1/jobs/{found['id']}")
    assert status == 200
    assert sorted(shown["sample_names"]["ids"]["orphan"]) == ["db-other", "web-moved"]
    assert shown["sample_names"]["named"]["orphan"] == ["app-moved", "db-other"]

    dry = await run_job(api, "repair", dry_run=True)
    assert (dry["counts"]["copied"], dry["counts"]["deleted"]) == (0, 0)
    assert await holdings(runtime, "named") != {}
    assert "db-other" in await holdings(runtime, "named")  # a dry run deletes nothing

    repaired = await run_job(api, "repair")
    assert repaired["status"] == "succeeded", repaired
    assert repaired["counts"]["failed"] == 0
    assert repaired["counts"]["deleted"] == 4  # the orphans of named and ids
    async with worker(runtime):  # the re-issued versions (mismatch, buried) go out
        await until(lambda: drained(runtime))
    clean = await run_job(api, "verify")
    for store in ("primary", "backup", *MIRRORS):
        assert drift(clean, store) == {}, (store, clean["counts"]["stores"][store])

    want = {
        "app-ok": {"k": "ok"},
        "app-gone": {"k": "gone"},
        "app-buried": {"k": "buried"},
        "app-stale": {"k": "new"},
        "app-forged": {"k": "real2"},
    }
    assert {k: vals for k, (_, vals) in (await holdings(runtime, "named")).items()} == want
    by_id = {s["name"]: s["id"] for s in (ok, gone, buried, stale, forged)}
    assert {k: vals for k, (_, vals) in (await holdings(runtime, "ids")).items()} == {
        by_id[name]: vals for name, vals in want.items()
    }
    # Retain: the old name of the renamed secret and the hand-made entry stay.
    assert {k: vals for k, (_, vals) in (await holdings(runtime, "kept")).items()} == {
        **want,
        "app-moved": {"k": "moved"},
        "db-other": {"k": "other"},
    }
    # Each entry's fence is the expected one: named by the current event's seq.
    _, f_seq_now, _, f_hash_now = await current(runtime, forged["id"])
    held = await named.get("app-forged")
    assert held is not None
    assert (held.version, held.hash) == (f_seq_now, f_hash_now)
    assert f_hash_now == f_hash  # re-issued with the same values: the same content hash


async def test_a_job_covers_only_the_stores_it_names(api: Api, runtime: Runtime) -> None:
    async with worker(runtime):
        await api.create("app-a", {"k": "1"})
        await until(lambda: drained(runtime))
    await runtime.mirrors["named"].put("app-ghost", 1, {"k": "x"}, "h")
    await runtime.mirrors["ids"].put(str(uuid.uuid4()), 1, {"k": "x"}, "h")

    every = await run_job(api, "verify")
    assert (drift(every, "named"), drift(every, "ids")) == ({"orphan": 1}, {"orphan": 1})

    only = await run_job(api, "verify", stores=["named"])  # type: ignore[arg-type]
    assert only["status"] == "succeeded"
    assert only["stores"] == ["named"]
    assert list(only["counts"]["stores"]) == ["named"]
    assert drift(only, "named") == {"orphan": 1}
    # The divergence gauge keeps each store's newest finding: a job of one store does not
    # drop the others'.
    gauge = (await read_shared_state(runtime.pool, runtime.target_keys)).divergent
    assert (gauge[("named", "orphan")], gauge[("ids", "orphan")]) == (1, 1)
    assert gauge[("primary", "missing")] == 0

    repaired = await run_job(api, "repair", stores=["named", "primary"])  # type: ignore[arg-type]
    assert repaired["stores"] == ["primary", "named"]
    assert set(repaired["counts"]["stores"]) == {"primary", "named"}
    assert repaired["counts"]["deleted"] == 1
    gauge = (await read_shared_state(runtime.pool, runtime.target_keys)).divergent
    assert (gauge[("named", "orphan")], gauge[("ids", "orphan")]) == (0, 1)
    after = await run_job(api, "verify")
    assert drift(after, "named") == {}
    assert drift(after, "ids") == {"orphan": 1}  # not covered by the repair: still there


async def test_unknown_or_misplaced_stores_are_refused_and_no_job_is_made(api: Api) -> None:
    before = (await api.request("GET", "/admin/v1/jobs"))[1]["items"]
    for body, message in (
        ({"mode": "verify", "stores": ["named", "nope"]}, "unknown store 'nope'"),
        ({"mode": "repair", "stores": []}, "non-empty list"),
        ({"mode": "repair", "stores": None}, "non-empty list"),
        ({"mode": "verify", "stores": "named"}, "non-empty list"),
        ({"mode": "verify", "stores": ["named", 3]}, "non-empty list"),
        ({"mode": "verify", "stores": {"named": True}}, "non-empty list"),
        ({"mode": "backup", "stores": ["backup"]}, "verify and repair only"),
    ):
        status, answer, _ = await api.request("POST", "/admin/v1/reconcile", json=body)
        assert status == 422, (body, answer)
        assert message in json.dumps(answer), answer
    unknown = (
        await api.request(
            "POST", "/admin/v1/reconcile", json={"mode": "verify", "stores": ["nope"]}
        )
    )[1]
    assert "primary, backup, ids, kept, named" in json.dumps(unknown)
    assert (await api.request("GET", "/admin/v1/jobs"))[1]["items"] == before


async def test_a_huge_store_name_or_list_is_refused_without_being_echoed(api: Api) -> None:
    """A 10,000-character store name is echoed cut to its first 64 characters; a list of
    10,000 names is refused by its length, none of it echoed; no job is made."""
    before = (await api.request("GET", "/admin/v1/jobs"))[1]["items"]
    name = "n" * 64 + "x" * 9_936
    status, answer, _ = await api.request(
        "POST", "/admin/v1/reconcile", json={"mode": "verify", "stores": [name]}
    )
    message = answer["error"]["message"]
    assert status == 422, answer
    assert f"unknown store '{'n' * 64}…'" in message
    assert "x" not in message.split("'")[1]
    assert len(json.dumps(answer)) < 300
    many = [f"store-{i}" for i in range(10_000)]
    status, answer, _ = await api.request(
        "POST", "/admin/v1/reconcile", json={"mode": "repair", "stores": many}
    )
    assert status == 422, answer
    assert "10000 names for 5 stores" in answer["error"]["message"]
    assert "store-" not in json.dumps(answer)
    assert len(json.dumps(answer)) < 300
    assert (await api.request("GET", "/admin/v1/jobs"))[1]["items"] == before


async def test_reissue_goes_to_the_base_targets_and_the_mirrors_selecting_the_secret(
    api: Api, runtime: Runtime
) -> None:
    """A mismatch repaired by a new version is delivered where every write would be."""
    assert runtime.backup is not None
    async with worker(runtime):
        outside = await api.create("db-x", {"k": "1"})
        inside = await api.create("app-y", {"k": "1"})
        await until(lambda: drained(runtime))
    for secret in (outside, inside):
        await patch(api, secret["id"], {"values": {"k": "2"}})
        await lose_deliveries(runtime, secret["id"], "backup", *MIRRORS)
        version, _, _, _ = await current(runtime, secret["id"])
        await runtime.backup.put(secret["id"], version, {"k": "forged"}, "forged-hash")
    repaired = await run_job(api, "repair", stores=["backup"])  # type: ignore[arg-type]
    assert drift(repaired, "backup") == {"mismatch": 2}

    async def targets(secret_id: str) -> set[str]:
        rows = await runtime.pool.fetch(
            "SELECT target FROM deliveries WHERE secret_id = $1 AND version = 3",
            uuid.UUID(secret_id),
        )
        return {r["target"] for r in rows}

    assert await targets(outside["id"]) == set(runtime.keys_of(["backup"]))
    assert await targets(inside["id"]) == set(runtime.keys_of(["backup", *MIRRORS]))


async def test_cli_store_option_passes_through(run: Cli, runtime: Runtime) -> None:  # noqa: F811
    await run.ok("secret", "create", "app-a", "k=v")
    job = await run.json("reconcile", "--store", "named", "--store", "ids")
    assert job["stores"] == ["ids", "named"]
    assert set(job["counts"]["stores"]) == {"ids", "named"}
    every = await run.json("reconcile", "--repair", "--dry-run")
    assert set(every["counts"]["stores"]) == {"primary", "backup", *MIRRORS}
    refused = await run("reconcile", "--store", "nope")
    assert refused.exit_code == 1
    assert "unknown store 'nope'" in refused.output
