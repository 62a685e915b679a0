"""Mirrors in operations (spec sections 10 and 16): status, dead letters, metrics, the CLI.

File stores stand in for the mirrors (the worker and status treat every store
alike). A foreign entry is made the way another deployment sharing the
mirror's directory would make it: a ``FileStore`` of another deployment id
writes the entry under the name the mirror maps a secret to.
"""

from __future__ import annotations

import re
import secrets
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from secretmirror import metrics
from secretmirror.api.openapi import openapi_document
from secretmirror.crypto import Keyring, content_hash
from secretmirror.daemon import make_app
from secretmirror.errors import ConfigError
from secretmirror.metrics import SharedStateCollector
from secretmirror.mirrors import check_mirror
from secretmirror.model import canonical
from secretmirror.runtime import Runtime
from secretmirror.settings import FileStoreSettings, load_settings
from secretmirror.shared_gauges import Refresher
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore, file_name
from tests.conftest import Api
from tests.mirrorconf import file_mirrors
from tests.test_cli import Cli
from tests.test_replication import until, worker

#: ``secretmirror status`` exits 4 when something needs a person (cli.EXIT_FOUND_PROBLEM).
EXIT_FOUND_PROBLEM = 4


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    return file_mirrors(
        tmp_path,
        team={"include": ["app-*"], "naming": "name"},
        ids={"exclude": ["*-secret"], "on_delete": "retain"},
    )


async def status_of(api: Api) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/admin/v1/status")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def settled(api: Api) -> dict[str, Any] | None:
    """The status once nothing is pending anywhere, else None."""
    body = await status_of(api)
    if all(t["pending"] == 0 for t in body["replication"].values()):
        return body
    return None


async def plant_foreign(directory: Path, key: str) -> bytes:
    """Another deployment's entry at ``key`` in a file store directory; its bytes."""
    ctx = StoreContext(
        deployment_id=str(uuid.uuid4()),
        keyring=Keyring([secrets.token_bytes(32)]),
        data_dir=str(directory.parent),
    )
    other = FileStore(FileStoreSettings(path=directory), ctx)
    await other.open()
    try:
        values = {"theirs": "x"}
        await other.put(key, 7, values, content_hash(b"k" * 32, key, canonical(values)))
    finally:
        await other.close()
    return (directory / file_name(key)).read_bytes()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def cli(runtime: Runtime, tmp_path: Path) -> AsyncIterator[Cli]:
    """The CLI against the API served on 127.0.0.1."""
    runner = web.AppRunner(make_app(runtime), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Cli(f"http://127.0.0.1:{port}", tmp_path / "cli-data")
    await runner.cleanup()


# -- status ---------------------------------------------------------------------------


async def test_status_lists_each_mirror_under_stores_and_replication(
    api: Api, runtime: Runtime, tmp_path: Path
) -> None:
    """``stores.<name>`` (with the mirror's rule) and ``replication.<name>`` per mirror."""
    async with worker(runtime):
        await api.create("app-one", {"k": "1"})
        await api.create("db-secret", {"k": "2"})
        body = await until_settled(api)
    assert sorted(body["stores"]) == ["backup", "ids", "primary", "team"]
    team = body["stores"]["team"]
    assert (team["type"], team["up"], team["last_error"]) == ("file", True, None)
    assert team["location"] == runtime.mirrors["team"].location
    assert str(tmp_path / "team") in team["location"]
    assert team["mirror"] == {
        "include": ["app-*"],
        "exclude": [],
        "include_private": False,
        "naming": "name",
        "on_delete": "delete",
    }
    assert body["stores"]["ids"]["mirror"]["on_delete"] == "retain"
    assert "mirror" not in body["stores"]["backup"]
    assert "mirror" not in body["stores"]["primary"]
    replication = body["replication"]
    assert set(replication) == {"backup", "team", "ids"}  # the sql primary is in the commit
    # team selects app-one only; ids every secret but *-secret.
    assert replication["team"] == {
        "pending": 0,
        "dead": 0,
        "oldest_pending_age_s": 0.0,
        "applied": 1,
        "dead_reasons": {},
    }
    assert (replication["ids"]["applied"], replication["backup"]["applied"]) == (1, 2)
    # The document matches the served OpenAPI schema, mirror rules and dead reasons included.
    schema = openapi_document()["components"]["schemas"]["Status"]
    jsonschema.validate(body, schema)
    body["replication"]["team"]["dead_reasons"] = {"foreign_entry": "1"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)


async def until_settled(api: Api) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    async def check() -> bool:
        body = await settled(api)
        if body is not None:
            found.append(body)
        return body is not None

    await until(check)
    return found[-1]


# -- a foreign entry ----------------------------------------------------------------


async def test_a_foreign_entry_is_left_alone_dead_lettered_and_shown(
    api: Api, runtime: Runtime, tmp_path: Path, cli: Cli
) -> None:
    """The by-name mirror finds another deployment's entry at a secret's name: the entry is
    untouched, the delivery dead-letters with ``foreign_entry``, and status, the dead-letter
    list, the metrics and the CLI say so; the other targets and secrets are unaffected."""
    team_dir = tmp_path / "team"
    theirs = await plant_foreign(team_dir, "app-taken")
    errors_before = sample_value(
        "secretmirror_replication_errors_total", target="team", reason="foreign_entry"
    )
    async with worker(runtime):
        taken = await api.create("app-taken", {"k": "ours"})
        await api.create("app-free", {"k": "free"})

        async def dead_lettered() -> bool:
            body = await settled(api)
            return body is not None and body["replication"]["team"]["dead"] == 1

        await until(dead_lettered)
        body = await status_of(api)
    assert (team_dir / file_name("app-taken")).read_bytes() == theirs
    assert (await runtime.mirrors["team"].get("app-free")) is not None
    assert (await runtime.backup.get(taken["id"])) is not None  # type: ignore[union-attr]
    replication = body["replication"]
    assert replication["team"]["dead_reasons"] == {"foreign_entry": 1}
    assert replication["team"]["applied"] == 1  # app-free
    assert {t: r["dead_reasons"] for t, r in replication.items() if t != "team"} == {
        "backup": {},
        "ids": {},
    }
    assert (replication["backup"]["dead"], replication["ids"]["dead"]) == (0, 0)

    # The dead-letter list names the mirror and the reason.
    status, listed, _ = await api.request("GET", "/admin/v1/dead-letters")
    assert status == 200
    [item] = listed["items"]
    assert (item["target"], item["secret_id"], item["name"]) == ("team", taken["id"], "app-taken")
    assert item["last_error"].startswith("foreign_entry: ")

    # Metrics: the shared gauges (read from PostgreSQL) and this process's counters.
    registry = CollectorRegistry()
    collector = SharedStateCollector()
    registry.register(collector)
    await Refresher(runtime, collector=collector, pool=runtime.pool)()
    shared = samples(generate_latest(registry).decode())
    assert shared[label("secretmirror_outbox_dead", target="team")] == 1
    assert shared[label("secretmirror_outbox_dead", target="backup")] == 0
    assert shared[label("secretmirror_outbox_pending", target="team")] == 0
    assert shared[label("secretmirror_replication_lag_seconds", target="team")] == 0
    assert (
        shared[label("secretmirror_outbox_dead_by_reason", target="team", reason="foreign_entry")]
        == 1
    )
    assert [k for k in shared if k[0] == "secretmirror_outbox_dead_by_reason"] == [
        label("secretmirror_outbox_dead_by_reason", target="team", reason="foreign_entry")
    ]
    assert sample_value("secretmirror_store_up", store="team") == 1
    assert sample_value("secretmirror_store_up", store="ids") == 1
    assert (
        sample_value("secretmirror_replication_errors_total", target="team", reason="foreign_entry")
        == errors_before + 1
    )
    assert sample_value("secretmirror_replication_applied_total", target="team") >= 1
    assert any(
        name == "secretmirror_store_requests_total" and ("store", "team") in labels
        for name, labels in samples(generate_latest(metrics.REGISTRY).decode())
    )

    # The CLI: the mirrors, their dead reasons, and exit 4.
    result = await cli("status")
    assert result.exit_code == EXIT_FOUND_PROBLEM, (result.stdout, result.stderr)
    out = result.stdout
    assert "Mirrors" in out
    assert "by name" in out
    assert "app-*" in out
    # The Replication table's row (the last table naming the mirror in its first column).
    team_row = [line for line in out.splitlines() if line.strip("│ ").startswith("team ")][-1]
    assert "foreign_entry 1" in team_row, out
    assert "problem: 1 dead-lettered deliveries to team: foreign_entry 1 (see" in out
    assert "entries in team are not this deployment's (foreign_entry)" in out


def label(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def sample_value(name: str, **labels: str) -> float:
    """A sample of this process's registry (0 when it has none yet)."""
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- the README's example --------------------------------------------------------------


README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_three_destination_example_is_a_valid_configuration() -> None:
    """The TOML example of the README's Mirrors section loads and passes the start-up
    checks: aws by name, hashicorp by name (retain), gcp by id."""
    section = README.read_text().split("\n## Mirrors\n", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    settings = load_settings(database_url="postgresql://db/main", **tomllib.loads(example))
    for name, mirror in settings.mirrors.items():
        check_mirror(name, mirror)
    found = {
        name: (m.store.type, m.naming, m.on_delete, m.include, m.exclude)
        for name, m in settings.mirrors.items()
    }
    assert found == {
        "payments": ("aws", "name", "delete", ("app-*",), ()),
        "onprem": ("hashicorp", "name", "retain", ("*",), ("*-test", "test-*")),
        "analytics": ("gcp", "id", "delete", ("etl-*",), ()),
    }
    # The example's gcp mirror by name would be refused, as the section says.
    gcp = settings.mirrors["analytics"].model_copy(update={"naming": "name"})
    with pytest.raises(ConfigError, match="GCP secret ids allow only"):
        check_mirror("analytics", gcp)
