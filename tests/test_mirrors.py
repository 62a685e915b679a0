"""Mirrors (spec section 16) in-process: filters, naming, leaving a selection, start-up refusals.

File stores stand in for the mirrors here (the worker treats every store alike);
tests/test_mirrors_e2e.py runs aws, hashicorp and gcp mirrors under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from secretmirror import replication
from secretmirror.crypto import Keyring
from secretmirror.errors import ConfigError
from secretmirror.mirrors import Mirror, Step, Version, plan
from secretmirror.runtime import Runtime, build_mirrors, build_stores
from secretmirror.settings import load_settings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.instrumented import RoleStore
from tests.conftest import Api
from tests.mirrorconf import file_mirrors, holdings
from tests.test_replication import drained, until, worker

# -- the rules (pure logic) ---------------------------------------------------


def test_selection_is_include_minus_exclude_and_private_only_when_asked() -> None:
    rule = Mirror("m", include=("app-*", "db-*"), exclude=("*-test",))
    assert rule.selects("app-one", False)
    assert rule.selects("db-main", False)
    assert not rule.selects("app-test", False)  # excluded
    assert not rule.selects("web-one", False)  # not included
    assert not rule.selects("app-one", True)  # private, not included
    assert not rule.selects("App-one", False)  # globs are case-sensitive
    assert not rule.selects(None, None)  # a deleted secret
    assert Mirror("m", include_private=True).selects("x", True)


def v(
    version: int, seq: int, name: str | None, kind: str = "update", private: bool = False
) -> Version:
    return Version(version, seq, kind, name, private)


def test_plan_by_id_puts_selected_and_removes_or_retains_what_left() -> None:
    rule = Mirror("m", include=("app-*",))
    assert plan(rule, "s1", [v(3, 30, "app-a")]) == [Step("put", "s1", 3)]
    assert plan(rule, "s1", [v(4, 40, "web-a", "rename")]) == [Step("delete", "s1", 4)]
    assert plan(rule, "s1", [v(5, 50, "app-a", "delete")]) == [Step("delete", "s1", 5)]
    kept = Mirror("m", include=("app-*",), retain=True)
    assert plan(kept, "s1", [v(5, 50, "app-a", "delete")]) == []


def test_plan_by_name_writes_the_new_name_then_tombstones_the_old_where_it_was_left() -> None:
    rule = Mirror("m", include=("app-*",), by_name=True)
    # Applied at v2 as app-a; renamed to app-b at v3 (seq 31), updated at v4 (seq 45).
    history = [v(2, 20, "app-a"), v(3, 31, "app-b", "rename"), v(4, 45, "app-b")]
    # The old name's tombstone is fenced at the seq that left it (31), not the newest
    # (45): a secret that took app-a in between (seq 32..44) keeps its entry.
    assert plan(rule, "s1", history) == [Step("put", "app-b", 45), Step("delete", "app-a", 31)]
    # Renamed out of the selection, then deleted: only the removal of what it held.
    gone = [v(2, 20, "app-a"), v(3, 31, "web-a", "rename"), v(4, 45, None, "delete")]
    assert plan(rule, "s1", gone) == [Step("delete", "app-a", 31)]
    # Coalesced renames a -> b -> c: b was never written, yet is removed in case it was.
    abc = [v(1, 10, "app-a"), v(2, 11, "app-b", "rename"), v(3, 12, "app-c", "rename")]
    assert plan(rule, "s1", abc) == [
        Step("put", "app-c", 12),
        Step("delete", "app-a", 11),
        Step("delete", "app-b", 12),
    ]
    # Back to a name it held: that name is kept.
    back = [v(1, 10, "app-a"), v(2, 11, "app-b", "rename"), v(3, 12, "app-a", "rename")]
    assert plan(rule, "s1", back) == [Step("put", "app-a", 12), Step("delete", "app-b", 12)]
    kept = Mirror("m", include=("app-*",), by_name=True, retain=True)
    assert plan(kept, "s1", history, applied=2) == [Step("put", "app-b", 45)]


def test_plan_with_retain_keeps_the_last_held_values_of_what_left() -> None:
    """A retained entry holds the secret as it was when it left, even when the version
    that held it last was never delivered on its own (coalesced with the leaving event):
    the e2e test under kill -9 found retained entries holding older values."""
    kept = Mirror("m", include=("app-*",), by_name=True, retain=True)
    # Applied v2 as app-a; v3 updated it (not delivered yet); v4 renamed it out.
    history = [v(2, 20, "app-a"), v(3, 30, "app-a"), v(4, 40, "web-a", "rename")]
    assert plan(kept, "s1", history, applied=2) == [Step("put", "app-a", 30, 3)]
    # Never delivered at all: created and deleted between two claims.
    gone = [v(1, 10, "app-a"), v(2, 20, None, "delete")]
    assert plan(kept, "s1", gone) == [Step("put", "app-a", 10, 1)]
    # Coalesced renames: every name it held keeps what it held there.
    abc = [v(1, 10, "app-a"), v(2, 11, "app-b", "rename"), v(3, 12, "web-c", "rename")]
    assert plan(kept, "s1", abc, applied=1) == [Step("put", "app-b", 11, 2)]
    # What the applied version held is in the store already: nothing to write.
    assert plan(kept, "s1", [v(2, 20, "app-a"), v(3, 30, "web-a", "rename")], applied=2) == []
    by_id = Mirror("m", include=("app-*",), retain=True)
    assert plan(
        by_id, "s1", [v(2, 20, "app-a"), v(3, 30, "app-a"), v(4, 40, None, "delete")], applied=2
    ) == [Step("put", "s1", 3, 3)]


# -- start-up refusals ------------------------------------------------------------


def _build(tmp_path: Path, **overrides: Any) -> tuple[dict[str, RoleStore], dict[str, Mirror]]:
    settings = load_settings(database_url="postgresql://db/main", **overrides)
    ctx = StoreContext(str(uuid.uuid4()), Keyring([secrets.token_bytes(32)]), None, str(tmp_path))
    primary, backup = build_stores(settings, ctx, "postgresql://db/main", 5.0)
    taken = [r for r in (primary, backup) if r is not None]
    return build_mirrors(settings, ctx, "postgresql://db/main", 5.0, taken)


def test_a_mirror_at_another_stores_location_is_refused(tmp_path: Path) -> None:
    same = {"type": "file", "path": str(tmp_path / "b")}
    with pytest.raises(ConfigError, match=r"mirrors.m: its location .* is the backup's"):
        _build(tmp_path, backup=same, mirrors={"m": same})
    with pytest.raises(ConfigError, match=r"mirrors.two: its location .* is the one's"):
        _build(tmp_path, mirrors={"one": same, "two": same})


def test_a_mirror_prefix_inside_another_stores_is_refused(tmp_path: Path) -> None:
    """Two AWS stores whose name prefixes nest would list each other's entries."""
    aws = {"type": "aws", "region": "eu-west-1"}
    with pytest.raises(ConfigError, match="overlaps"):
        _build(
            tmp_path,
            backup={**aws, "name_prefix": "sm/"},
            mirrors={"team": {**aws, "name_prefix": "sm/team/"}},
        )
    stores, _ = _build(
        tmp_path,
        backup={**aws, "name_prefix": "sm/"},
        mirrors={"team": {**aws, "name_prefix": "team/"}},
    )
    assert list(stores) == ["team"]


@pytest.mark.parametrize(
    ("store", "rule"),
    [
        ({"type": "gcp", "project_id": "p"}, "GCP secret ids allow only letters, digits, - and _"),
        ({"type": "azure", "vault_url": "https://v.vault.azure.net"}, "letters, digits and -"),
        ({"type": "sql"}, "keys its rows by secret id"),
    ],
)
def test_naming_by_name_where_the_provider_cannot_hold_a_name_is_refused(
    tmp_path: Path, store: dict[str, Any], rule: str
) -> None:
    with pytest.raises(ConfigError, match=f"mirrors.m.naming: .*{rule}"):
        _build(tmp_path, mirrors={"m": {**store, "naming": "name"}})


def test_naming_by_name_with_private_secrets_is_refused(tmp_path: Path) -> None:
    mirror = {"type": "file", "path": str(tmp_path / "m"), "naming": "name"}
    with pytest.raises(ConfigError, match="private secrets of different users"):
        _build(tmp_path, mirrors={"m": {**mirror, "include_private": True}})


@pytest.mark.parametrize(
    ("mirrors", "message"),
    [
        ({"primary": {"type": "file"}}, "cannot be called 'primary'"),
        ({"backup": {"type": "file"}}, "cannot be called 'backup'"),
        ({"Team": {"type": "file"}}, "must be a lowercase letter"),
        ({"m": {"type": "file", "include": ["app-["]}}, "mirrors.m.include: .*unclosed"),
        ({"m": {"type": "file", "naming": "path"}}, "mirrors.m.naming"),
        ({"m": {"type": "file", "on_delete": "keep"}}, "mirrors.m.on_delete"),
    ],
)
def test_invalid_mirror_settings_stop_start_up(mirrors: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(database_url="postgresql://db/main", mirrors=mirrors)


def test_mirrors_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SECRETMIRROR_MIRRORS__<NAME>__*``: store fields and the mirror's own, globs as a
    comma-separated list or JSON."""
    monkeypatch.setenv("SECRETMIRROR_MIRRORS__TEAM_A__TYPE", "aws")
    monkeypatch.setenv("SECRETMIRROR_MIRRORS__TEAM_A__REGION", "eu-west-1")
    monkeypatch.setenv("SECRETMIRROR_MIRRORS__TEAM_A__INCLUDE", "app-*, db-*")
    monkeypatch.setenv("SECRETMIRROR_MIRRORS__TEAM_A__EXCLUDE", '["*-test"]')
    monkeypatch.setenv("SECRETMIRROR_MIRRORS__TEAM_A__NAMING", "name")
    monkeypatch.setenv("SECRETMIRROR_MIRRORS__TEAM_A__ON_DELETE", "retain")
    mirror = load_settings(database_url="postgresql://db/main").mirrors["team_a"]
    assert (mirror.store.type, getattr(mirror.store, "region", None)) == ("aws", "eu-west-1")
    assert (mirror.include, mirror.exclude) == (("app-*", "db-*"), ("*-test",))
    assert (mirror.naming, mirror.on_delete, mirror.include_private) == ("name", "retain", False)


# -- delivery ---------------------------------------------------------------------


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    return file_mirrors(
        tmp_path,
        named={"include": ["app-*"], "naming": "name"},
        ids={"exclude": ["*-secret"], "include_private": True},
        kept={"include": ["app-*"], "naming": "name", "on_delete": "retain"},
    )


async def test_each_mirror_holds_its_selection_under_its_names(api: Api, runtime: Runtime) -> None:
    async with worker(runtime):
        a = await api.create("app-a", {"k": "1"})
        b = await api.create("db-secret", {"k": "2"})
        c = await api.create("app-c", {"k": "3"})
        mine = await api.create("app-mine", {"k": "4"}, private=True)
        # app-a renamed inside the selection, then updated; app-c leaves it.
        assert (await api.request("PATCH", f"/api/v1/secrets/{a['id']}", json={"name": "app-b"}))[
            0
        ] == 200
        assert (
            await api.request("PATCH", f"/api/v1/secrets/{a['id']}", json={"values": {"k": "1b"}})
        )[0] == 200
        assert (await api.request("PATCH", f"/api/v1/secrets/{c['id']}", json={"name": "web-c"}))[
            0
        ] == 200
        await until(lambda: drained(runtime))
        named = await holdings(runtime, "named")
        assert {k: vals for k, (_, vals) in named.items()} == {"app-b": {"k": "1b"}}
        ids = await holdings(runtime, "ids")
        assert {k: vals for k, (_, vals) in ids.items()} == {
            a["id"]: {"k": "1b"},
            c["id"]: {"k": "3"},
            mine["id"]: {"k": "4"},
        }
        assert b["id"] not in ids  # excluded: no delivery row at all
        kept = await holdings(runtime, "kept")
        assert {k: vals for k, (_, vals) in kept.items()} == {
            "app-a": {"k": "1"},  # retained after the rename
            "app-b": {"k": "1b"},
            "app-c": {"k": "3"},  # retained after it left the selection
        }
        # Deletes: removed from "named" and "ids", kept in "kept".
        for secret in (a, c, mine):
            status, _, _ = await api.request("DELETE", f"/api/v1/secrets/{secret['id']}")
            assert status == 204
        await until(lambda: drained(runtime))
        assert await holdings(runtime, "named") == {}
        assert await holdings(runtime, "ids") == {}
        assert set(await holdings(runtime, "kept")) == {"app-a", "app-b", "app-c"}
        # A new secret takes a name another one left: its entry is written over the
        # tombstone, and the old holder's late tombstone cannot remove it.
        d = await api.create("app-b", {"k": "new"})
        await until(lambda: drained(runtime))
        assert {k: vals for k, (_, vals) in (await holdings(runtime, "named")).items()} == {
            "app-b": {"k": "new"}
        }
    assert d["version"] == 1


async def test_a_name_another_process_holds_is_written_only_once_it_is_free(
    api: Api, runtime: Runtime
) -> None:
    """A mirror by name leases each entry name a delivery writes (``name_leases``, under the
    delivery's token): while another process's delivery holds a name, a delivery to it is
    contended and tried again, not counted as an attempt, never written; an expired hold
    is taken over; every name is given back after the write."""
    target = runtime.keys_of(["named"])[0]
    hold = (
        "INSERT INTO name_leases (target, name, holder, leased_until)"
        " VALUES ($1, $2, 'other-node/token', now() + make_interval(secs => $3))"
    )
    await runtime.pool.execute(hold, target, "app-held", 3600.0)
    await runtime.pool.execute(hold, target, "app-lapsed", -1.0)
    async with worker(runtime):
        held = await api.create("app-held", {"k": "1"})
        await api.create("app-lapsed", {"k": "2"})

        async def contended() -> bool:
            error = await runtime.pool.fetchval(
                "SELECT last_error FROM deliveries WHERE target = $1 AND secret_id = $2",
                target,
                uuid.UUID(held["id"]),
            )
            return error is not None and error.startswith("contended")

        async def lapsed_written() -> bool:
            return "app-lapsed" in await holdings(runtime, "named")

        await until(contended)
        await until(lapsed_written)
        assert "app-held" not in await holdings(runtime, "named")
        # Held back here, nothing sent: not an attempt, so a holder that died (its lease
        # lapses) never gets the delivery dead-lettered meanwhile.
        attempts = await runtime.pool.fetchval(
            "SELECT attempts FROM deliveries WHERE target = $1 AND secret_id = $2",
            target,
            uuid.UUID(held["id"]),
        )
        assert attempts == 0
        await runtime.pool.execute("DELETE FROM name_leases WHERE name = 'app-held'")
        await until(lambda: drained(runtime))
        named = await holdings(runtime, "named")
        assert {k: vals for k, (_, vals) in named.items()} == {
            "app-held": {"k": "1"},
            "app-lapsed": {"k": "2"},
        }
    assert await runtime.pool.fetchval("SELECT count(*) FROM name_leases") == 0


async def test_a_secret_outside_every_filter_gets_no_mirror_delivery(
    api: Api, runtime: Runtime
) -> None:
    """Delivery rows are written only for the mirrors that select the secret."""
    created = await api.create("db-secret", {"k": "1"})
    rows = await runtime.pool.fetch(
        "SELECT target FROM deliveries WHERE secret_id = $1", uuid.UUID(created["id"])
    )
    assert sorted(r["target"] for r in rows) == sorted(runtime.keys_of(["backup"]))
    other = await api.create("app-x", {"k": "1"})
    rows = await runtime.pool.fetch(
        "SELECT target FROM deliveries WHERE secret_id = $1", uuid.UUID(other["id"])
    )
    assert sorted(r["target"] for r in rows) == sorted(
        runtime.keys_of(["backup", "named", "ids", "kept"])
    )


async def test_a_hanging_mirror_never_delays_another_stores_health_probe(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores are probed at once: a mirror comes back up while another's probe hangs."""
    hung = asyncio.Event()

    async def hang() -> None:
        hung.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(runtime.mirrors["ids"].store, "health", hang)  # probed first
    named = runtime.mirrors["named"]
    named.up = False
    probe = asyncio.create_task(replication.probe_once(runtime))
    try:
        await until(lambda: _true(hung.is_set() and named.up), 3.0)
        assert not probe.done()  # the hanging probe still waits for its timeout
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe


async def _true(value: bool) -> bool:
    return value
