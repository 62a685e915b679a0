"""The /metrics contract (spec section 10) and the logs (section 11), from a real daemon.

The daemon runs as ``secretmirror serve`` subprocesses on a migrated test
database, with the ``sql`` primary in it and a ``file`` backup that a test
can take down (``Outage``), or an ``aws`` backup on moto behind a fault proxy.
Shared-state gauges are read from PostgreSQL, so two processes on one
database must report the same values.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from secretmirror.metrics import SharedStateCollector
from secretmirror.runtime import Runtime
from secretmirror.shared_gauges import Refresher, divergence
from tests.conftest import ADMIN_TOKEN
from tests.faultproxy import ThreadedFaultProxy
from tests.prometheus import Daemon, Outage, poll, running_daemons

#: Spec section 10: name -> (type, label names).
SPEC: dict[str, tuple[str, set[str]]] = {
    "secretmirror_outbox_pending": ("gauge", {"target"}),
    "secretmirror_outbox_dead": ("gauge", {"target"}),
    "secretmirror_replication_lag_seconds": ("gauge", {"target"}),
    "secretmirror_replication_applied_total": ("counter", {"target"}),
    "secretmirror_replication_errors_total": ("counter", {"target", "reason"}),
    "secretmirror_replication_latency_seconds": ("histogram", {"target"}),
    "secretmirror_store_up": ("gauge", {"store"}),
    "secretmirror_store_requests_total": ("counter", {"store", "operation", "outcome"}),
    "secretmirror_store_request_duration_seconds": ("histogram", {"store", "operation"}),
    "secretmirror_fallback_total": ("counter", {"operation", "source"}),
    "secretmirror_divergent_secrets": ("gauge", {"store", "kind"}),
    "secretmirror_reconcile_jobs_total": ("counter", {"mode", "outcome"}),
    "secretmirror_reconcile_last_success_timestamp_seconds": ("gauge", {"mode"}),
    "secretmirror_secrets": ("gauge", set()),
    "secretmirror_http_requests_total": ("counter", {"route", "method", "status"}),
    "secretmirror_http_request_duration_seconds": ("histogram", {"route", "method"}),
}

CANARY = "canary-" + uuid.uuid4().hex


# -- helpers -------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    """Metric families by exposed name (counters keep their ``_total``)."""
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` (exact label set), or None when it is not exposed."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def metric_until(daemon: Daemon, name: str, expected: float, **labels: str) -> None:
    poll(
        lambda: value(daemon.metrics(), name, **labels) == expected,
        f"{name}{labels} == {expected}",
    )


def create(daemon: Daemon, name: str, values: dict[str, str]) -> dict[str, Any]:
    status, body = daemon.api("POST", "/api/v1/secrets", {"name": name, "values": values})
    assert status == 201, body
    result: dict[str, Any] = body
    return result


def run_job(daemon: Daemon, mode: str, **options: Any) -> dict[str, Any]:
    status, job = daemon.api("POST", "/admin/v1/reconcile", {"mode": mode, **options})
    assert status == 202, job

    def finished() -> dict[str, Any] | None:
        _, current = daemon.api("GET", f"/admin/v1/jobs/{job['id']}")
        done = current["status"] in ("succeeded", "failed", "cancelled")
        return dict(current) if done else None

    job = poll(finished, f"the {mode} job to finish")
    if job["status"] == "succeeded":
        # The shared gauges are cached for a second: wait for a reading that has the job.
        finished_at = datetime.fromisoformat(job["finished"]).timestamp()
        poll(
            lambda: (
                (
                    value(
                        daemon.metrics(),
                        "secretmirror_reconcile_last_success_timestamp_seconds",
                        mode=mode,
                    )
                    or 0
                )
                >= finished_at - 0.001
            ),
            f"a reading with the {mode} job",
        )
    return job


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backup-store"


@pytest.fixture
def daemon_env(database: str, encryption_key: str, backup_dir: Path) -> dict[str, str]:
    return {
        "SECRETMIRROR_DATABASE_URL": database,
        "SECRETMIRROR_ENCRYPTION_KEYS": encryption_key,
        "SECRETMIRROR_BACKUP__TYPE": "file",
        "SECRETMIRROR_BACKUP__PATH": str(backup_dir),
        "SECRETMIRROR_REPLICATION__POLL_INTERVAL_S": "0.2",
        "SECRETMIRROR_REPLICATION__BACKOFF_INITIAL_S": "0.05",
        "SECRETMIRROR_REPLICATION__BACKOFF_MAX_S": "0.5",
        # Outages here must not dead-letter anything unless a test asks for it.
        "SECRETMIRROR_REPLICATION__MAX_ATTEMPTS": "10000",
        "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
    }


@pytest.fixture
def daemon(tmp_path: Path, daemon_env: dict[str, str]) -> Iterator[Daemon]:
    with running_daemons(tmp_path / "daemons", daemon_env) as started:
        yield started[0]


@pytest.fixture
def two_daemons(tmp_path: Path, daemon_env: dict[str, str]) -> Iterator[list[Daemon]]:
    with running_daemons(tmp_path / "daemons", daemon_env, count=2) as started:
        yield started


@pytest.fixture
def backup_outage(backup_dir: Path) -> Outage:
    return Outage(backup_dir)


def workload(daemon: Daemon) -> str:
    """Creates, updates, reads, lists and deletes through the API; returns a secret id."""
    first = create(daemon, "db-password", {"password": CANARY})
    second = create(daemon, "api-key", {"key": "k-1"})
    status, _ = daemon.api("PATCH", f"/api/v1/secrets/{first['id']}", {"values": {"user": "app"}})
    assert status == 200
    assert daemon.api("GET", f"/api/v1/secrets/{first['id']}")[0] == 200
    assert daemon.api("GET", "/api/v1/secrets?name_prefix=db")[0] == 200
    assert daemon.api("GET", f"/api/v1/secrets/{uuid.uuid4()}")[0] == 404
    assert daemon.api("DELETE", f"/api/v1/secrets/{second['id']}")[0] == 204
    metric_until(daemon, "secretmirror_outbox_pending", 0, target="backup")
    return str(first["id"])


# -- the metric names ------------------------------------------------------------


async def test_every_spec_metric_is_registered_at_start(daemon: Daemon) -> None:
    """A fresh daemon exposes every spec name with its type, samples or not."""
    exposed = families(daemon.metrics())
    missing = {n: t for n, (t, _) in SPEC.items() if n not in exposed}
    assert missing == {}
    assert {n: t for n, (t, _) in SPEC.items()} == {n: exposed[n].type for n in SPEC}


async def test_spec_metrics_carry_the_spec_labels_after_a_workload(daemon: Daemon) -> None:
    """After writes, reads, an outage and a verify, every sample has exactly its spec labels."""
    workload(daemon)
    with Outage(Path(daemon.env["SECRETMIRROR_BACKUP__PATH"])).during():
        create(daemon, "during-outage", {"k": "v"})
        metric_until(daemon, "secretmirror_store_up", 0, store="backup")
    metric_until(daemon, "secretmirror_outbox_pending", 0, target="backup")
    assert run_job(daemon, "verify")["status"] == "succeeded"
    exposed = families(daemon.metrics())
    wrong: dict[str, list[dict[str, str]]] = {}
    empty = []
    for name, (_, labels) in SPEC.items():
        samples = exposed[name].samples
        if not samples:
            empty.append(name)
        for sample in samples:
            if set(sample.labels) - {"le"} != labels:
                wrong.setdefault(name, []).append(sample.labels)
    assert wrong == {}
    # Fallbacks need the primary down, which the sql primary in the main database cannot be,
    # but their series are there (at 0) from start-up.
    assert empty == []


async def test_http_metrics_use_route_templates(daemon: Daemon) -> None:
    """A request for one secret is counted under the route template, never its id."""
    secret_id = workload(daemon)
    text = daemon.metrics()
    assert value(
        text,
        "secretmirror_http_requests_total",
        route="/api/v1/secrets/{id}",
        method="GET",
        status="200",
    )
    assert secret_id not in text


async def test_metrics_never_carry_secret_names_or_values(daemon: Daemon) -> None:
    """Neither a secret's name nor its values appear anywhere in /metrics."""
    workload(daemon)
    assert daemon.api("GET", "/api/v1/secrets?name=db-password")[0] == 200
    text = daemon.metrics()
    assert CANARY not in text
    assert "db-password" not in text
    assert "api-key" not in text


# -- shared state ------------------------------------------------------------------


@pytest.fixture
def moto_proxy(moto_server: str) -> Iterator[ThreadedFaultProxy]:
    """A fault proxy in front of the session's moto server."""
    port = int(moto_server.rpartition(":")[2])
    with ThreadedFaultProxy("127.0.0.1", port) as proxy:
        yield proxy


async def test_lag_is_above_0_while_the_backup_is_behind_a_downed_proxy_and_0_after_the_drain(
    tmp_path: Path,
    daemon_env: dict[str, str],
    moto_proxy: ThreadedFaultProxy,
    aws_prefix: str,
) -> None:
    """Lag grows while an aws backup is unreachable and returns to 0 once the backlog drains."""
    env = {k: v for k, v in daemon_env.items() if not k.startswith("SECRETMIRROR_BACKUP__")}
    env |= {
        "SECRETMIRROR_BACKUP__TYPE": "aws",
        "SECRETMIRROR_BACKUP__ENDPOINT_URL": moto_proxy.url,
        "SECRETMIRROR_BACKUP__REGION": "us-east-1",
        "SECRETMIRROR_BACKUP__AUTH_METHOD": "secret-key",
        "SECRETMIRROR_BACKUP__AWS_ACCESS_KEY_ID": "testing",
        "SECRETMIRROR_BACKUP__AWS_SECRET_ACCESS_KEY": "testing",
        "SECRETMIRROR_BACKUP__NAME_PREFIX": aws_prefix,
    }
    with running_daemons(tmp_path / "daemons", env) as (daemon,):
        moto_proxy.down()
        create(daemon, "queued", {"k": "v"})
        poll(
            lambda: (
                (
                    value(daemon.metrics(), "secretmirror_replication_lag_seconds", target="backup")
                    or 0
                )
                > 0
            ),
            "lag above 0",
        )
        moto_proxy.pass_through()
        metric_until(daemon, "secretmirror_replication_lag_seconds", 0, target="backup")
        assert value(daemon.metrics(), "secretmirror_outbox_pending", target="backup") == 0


async def test_two_daemons_report_the_same_pending_count(
    two_daemons: list[Daemon], backup_outage: Outage
) -> None:
    """Two processes on one database both report the 5 deliveries one of them queued."""
    writer, other = two_daemons
    with backup_outage.during():
        for i in range(5):
            create(writer, f"s{i}", {"k": str(i)})
        metric_until(writer, "secretmirror_outbox_pending", 5, target="backup")
        metric_until(other, "secretmirror_outbox_pending", 5, target="backup")
        assert value(writer.metrics(), "secretmirror_outbox_pending", target="backup") == value(
            other.metrics(), "secretmirror_outbox_pending", target="backup"
        )


async def test_dead_letters_are_counted_and_cleared_by_a_retry(
    tmp_path: Path, daemon_env: dict[str, str], backup_outage: Outage
) -> None:
    """Deliveries out of attempts show in outbox_dead; a requeue brings it back to 0."""
    env = {**daemon_env, "SECRETMIRROR_REPLICATION__MAX_ATTEMPTS": "2"}
    with running_daemons(tmp_path / "daemons", env) as (daemon,):
        with backup_outage.during():
            create(daemon, "doomed", {"k": "v"})
            metric_until(daemon, "secretmirror_outbox_dead", 1, target="backup")
        assert daemon.api("POST", "/admin/v1/dead-letters/retry")[0] == 200
        metric_until(daemon, "secretmirror_outbox_dead", 0, target="backup")
        metric_until(daemon, "secretmirror_outbox_pending", 0, target="backup")


async def test_secrets_gauge_counts_live_secrets(daemon: Daemon) -> None:
    """secretmirror_secrets counts the live secrets (deleted ones are gone)."""
    workload(daemon)
    metric_until(daemon, "secretmirror_secrets", 1)


async def test_divergence_matches_an_injected_drift_after_a_verify(
    daemon: Daemon, backup_dir: Path
) -> None:
    """A backup entry removed behind secretmirror's back shows as 1 missing after a verify."""
    secret_id = workload(daemon)
    (backup_dir / f"{secret_id}.secret").unlink()
    assert run_job(daemon, "verify")["status"] == "succeeded"
    text = daemon.metrics()
    found = {
        (store, kind): value(text, "secretmirror_divergent_secrets", store=store, kind=kind)
        for store in ("primary", "backup")
        for kind in ("missing", "stale", "mismatch", "orphan")
    }
    expected = dict.fromkeys(found, 0.0) | {("backup", "missing"): 1.0}
    assert expected == found


async def test_a_successful_repair_clears_the_divergence(daemon: Daemon, backup_dir: Path) -> None:
    """After a repair that succeeded, every divergence gauge is 0 again."""
    secret_id = workload(daemon)
    (backup_dir / f"{secret_id}.secret").unlink()
    assert run_job(daemon, "verify")["status"] == "succeeded"
    metric_until(daemon, "secretmirror_divergent_secrets", 1, store="backup", kind="missing")
    assert run_job(daemon, "repair")["status"] == "succeeded"
    metric_until(daemon, "secretmirror_divergent_secrets", 0, store="backup", kind="missing")


async def test_last_success_timestamp_is_when_the_verify_finished(daemon: Daemon) -> None:
    """reconcile_last_success_timestamp_seconds{mode="verify"} is the job's finish time."""
    before = time.time()
    job = run_job(daemon, "verify")
    assert job["status"] == "succeeded"
    stamp = poll(
        lambda: value(
            daemon.metrics(), "secretmirror_reconcile_last_success_timestamp_seconds", mode="verify"
        ),
        "the last-success gauge",
    )
    assert before - 1 <= stamp <= time.time()
    assert (
        value(
            daemon.metrics(),
            "secretmirror_reconcile_jobs_total",
            mode="verify",
            outcome="succeeded",
        )
        == 1
    )


# -- the collector in-process ------------------------------------------------------


class _DownPool:
    """A pool whose server is unreachable."""

    def __getattr__(self, name: str) -> Any:
        async def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise ConnectionRefusedError("connection refused")

        return refuse


class _CountingPool:
    """Counts the calls made on a real pool."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        return getattr(self.pool, name)


class _Switchable:
    """A runtime stand-in with one configured target."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pool: Any = rt.pool
        self.target_keys = {"backup": "a-backup-location"}


async def test_a_scrape_while_postgresql_is_down_serves_the_last_reading(
    runtime: Runtime,
) -> None:
    """When the database stops answering, the gauges keep their last values."""
    collector = SharedStateCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    rt = _Switchable(runtime)
    refresh = Refresher(rt, collector, ttl_s=0, pool=runtime.pool)
    await refresh()
    before = generate_latest(registry).decode()
    refresh.pool = _DownPool()
    await refresh()
    after = generate_latest(registry).decode()
    assert value(before, "secretmirror_secrets") == value(after, "secretmirror_secrets") == 0
    assert value(after, "secretmirror_outbox_pending", target="backup") == 0


async def test_readings_are_cached_between_scrapes(runtime: Runtime) -> None:
    """Within the TTL a second scrape does not query PostgreSQL again."""
    rt = _Switchable(runtime)
    counting = _CountingPool(runtime.pool)
    refresh = Refresher(rt, SharedStateCollector(), ttl_s=60, pool=counting)
    await refresh()
    first = counting.calls
    await refresh()
    assert (first > 0, counting.calls) == (True, first)


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (None, {}),
        (
            {
                "mode": "verify",
                "dry_run": False,
                "counts": {
                    "failed": 0,
                    "stores": {
                        "backup": {
                            "in_sync": 5,
                            "missing": 2,
                            "stale": 1,
                            "mismatch": 0,
                            "orphan": 3,
                        }
                    },
                },
            },
            {
                ("backup", "missing"): 2,
                ("backup", "stale"): 1,
                ("backup", "mismatch"): 0,
                ("backup", "unreadable"): 0,
                ("backup", "orphan"): 3,
            },
        ),
        (
            {
                "mode": "repair",
                "dry_run": True,
                "counts": {"failed": 0, "stores": {"primary": {"missing": 4}}},
            },
            {
                ("primary", "missing"): 4,
                ("primary", "stale"): 0,
                ("primary", "mismatch"): 0,
                ("primary", "unreadable"): 0,
                ("primary", "orphan"): 0,
            },
        ),
        (
            {
                "mode": "repair",
                "dry_run": False,
                "counts": {"failed": 0, "stores": {"primary": {"missing": 4}}},
            },
            {
                ("primary", "missing"): 0,
                ("primary", "stale"): 0,
                ("primary", "mismatch"): 0,
                ("primary", "unreadable"): 0,
                ("primary", "orphan"): 0,
            },
        ),
    ],
    ids=["no-verify-yet", "verify", "dry-run-repair", "repair"],
)
def test_divergence_from_a_job(job: dict[str, Any] | None, expected: dict[Any, int]) -> None:
    """Verify and dry-run repair report what they found; a successful repair reports 0."""
    assert expected == divergence(job)


# -- logs ----------------------------------------------------------------------------


async def test_log_lines_are_json_with_an_event(daemon: Daemon) -> None:
    """Every line the daemon writes to stdout (not a terminal) is JSON with an event."""
    workload(daemon)
    daemon.stop()
    lines = daemon.stdout().splitlines()
    assert lines
    events = [json.loads(line) for line in lines]
    assert [e for e in events if not isinstance(e.get("event"), str)] == []
    assert "daemon.serving" in {e["event"] for e in events}


async def test_a_canary_value_never_appears_in_the_output(
    daemon: Daemon, backup_outage: Outage
) -> None:
    """A value written, read, updated and retried during an outage never reaches a log."""
    secret_id = workload(daemon)
    with backup_outage.during():
        assert (
            daemon.api(
                "PUT",
                f"/api/v1/secrets/{secret_id}",
                {"name": "db-password", "values": {"password": CANARY + "2"}},
            )[0]
            == 200
        )
        metric_until(daemon, "secretmirror_store_up", 0, store="backup")
    metric_until(daemon, "secretmirror_outbox_pending", 0, target="backup")
    daemon.stop()
    output = daemon.stdout() + daemon.stderr_path.read_text()
    assert re.search(r"replication\.retry", output)
    assert CANARY not in output
    assert ADMIN_TOKEN not in output
    assert daemon.env["SECRETMIRROR_ENCRYPTION_KEYS"] not in output
