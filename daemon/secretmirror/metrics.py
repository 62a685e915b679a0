"""Prometheus metrics (spec section 10). Labels never carry secret names or values.

Counters and histograms are per process. Gauges of shared state (pending,
dead, lag, divergence, secrets) are read from PostgreSQL at scrape time by
``SharedStateCollector`` so every replica reports the same truth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

replication_applied = Counter(
    "secretmirror_replication_applied_total",
    "Deliveries applied to a target store by this process.",
    ["target"],
    registry=REGISTRY,
)
replication_errors = Counter(
    "secretmirror_replication_errors_total",
    "Failed delivery attempts by target and reason.",
    ["target", "reason"],
    registry=REGISTRY,
)
replication_latency = Histogram(
    "secretmirror_replication_latency_seconds",
    "Time from an event's commit to its delivery being applied.",
    ["target"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
store_up = Gauge(
    "secretmirror_store_up",
    "1 when the store answered its last request or health check, else 0.",
    ["store"],
    registry=REGISTRY,
)
kms_up = Gauge(
    "secretmirror_kms_up",
    "With encryption.kms: 1 when the KMS answered its last call (unwrap, new data key), else 0."
    " No series with local keys, so an alert on 0 never fires for them.",
    ["type"],
    registry=REGISTRY,
)
store_requests = Counter(
    "secretmirror_store_requests_total",
    "Requests to a secrets store by operation and outcome.",
    ["store", "operation", "outcome"],
    registry=REGISTRY,
)
store_request_duration = Histogram(
    "secretmirror_store_request_duration_seconds",
    "Duration of requests to a secrets store, without the time queued locally.",
    ["store", "operation"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)
store_queue = Histogram(
    "secretmirror_store_queue_seconds",
    "Time a store call waited in this process (pacing slot, entry lock, throttle pause).",
    ["store"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
fallback = Counter(
    "secretmirror_fallback_total",
    "Operations served by a source other than the primary store.",
    ["operation", "source"],
    registry=REGISTRY,
)
#: Every (operation, source) the daemon counts, shown at 0 from start-up so a
#: dashboard panel reads 0 rather than "No data" until the first fallback.
FALLBACKS = (("read", "backup"), ("read", "log"), ("write", "backup"))
for _operation, _source in FALLBACKS:
    fallback.labels(_operation, _source)
reconcile_jobs = Counter(
    "secretmirror_reconcile_jobs_total",
    "Reconcile jobs finished, by mode and outcome.",
    ["mode", "outcome"],
    registry=REGISTRY,
)
audit_records = Counter(
    "secretmirror_audit_records_total",
    "Audit records committed by this process.",
    registry=REGISTRY,
)
audit_write_failures = Counter(
    "secretmirror_audit_write_failures_total",
    "Audit batches (or file sink writes) that failed; their requests answered 503.",
    registry=REGISTRY,
)
audit_batch_size = Histogram(
    "secretmirror_audit_batch_records",
    "Records per group-committed audit insert.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    registry=REGISTRY,
)
http_requests = Counter(
    "secretmirror_http_requests_total",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
http_request_duration = Histogram(
    "secretmirror_http_request_duration_seconds",
    "HTTP request duration by route template and method.",
    ["route", "method"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)


#: The divergence classes of spec section 7 reported by ``secretmirror_divergent_secrets``
#: (``in_sync`` is not a divergence and is left out).
DIVERGENCE_KINDS = ("missing", "stale", "mismatch", "unreadable", "orphan")


@dataclass(frozen=True)
class SharedState:
    """One reading of the shared-state gauges from PostgreSQL."""

    pending: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    lag_s: dict[str, float] = field(default_factory=dict)
    #: (target, reason) -> dead deliveries whose last error has that reason (only reasons seen).
    dead_reasons: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (store, kind) -> count, from the last successful verify (empty before the first).
    divergent: dict[tuple[str, str], int] = field(default_factory=dict)
    #: mode -> epoch seconds of the newest successful job of that mode.
    last_success: dict[str, float] = field(default_factory=dict)
    secrets: int | None = None


class SharedStateCollector(Collector):
    """Exposes the last ``SharedState`` read from PostgreSQL.

    Collection never touches the database (``generate_latest`` is synchronous);
    the daemon's metrics handler refreshes the state before it renders, see
    ``secretmirror.shared_gauges``. Until the first reading, and for families
    without data, only HELP and TYPE are emitted so every name exists from start-up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = SharedState()
        self._read_at: float | None = None

    def update(self, state: SharedState) -> None:
        with self._lock:
            self._state = state
            self._read_at = time.time()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(SharedState(), None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            state, read_at = self._state, self._read_at
        return self._families(state, read_at)

    @staticmethod
    def _families(state: SharedState, read_at: float | None) -> list[GaugeMetricFamily]:
        pending = GaugeMetricFamily(
            "secretmirror_outbox_pending",
            "Deliveries waiting to be applied to a target store (all replicas).",
            labels=["target"],
        )
        dead = GaugeMetricFamily(
            "secretmirror_outbox_dead",
            "Dead-lettered deliveries per target store (all replicas).",
            labels=["target"],
        )
        lag = GaugeMetricFamily(
            "secretmirror_replication_lag_seconds",
            "Age of the oldest unapplied event per target store, 0 when none.",
            labels=["target"],
            unit="seconds",
        )
        for target, value in sorted(state.pending.items()):
            pending.add_metric([target], value)
        for target, value in sorted(state.dead.items()):
            dead.add_metric([target], value)
        for target, seconds in sorted(state.lag_s.items()):
            lag.add_metric([target], seconds)
        dead_reasons = GaugeMetricFamily(
            "secretmirror_outbox_dead_by_reason",
            "Dead-lettered deliveries per target store by the reason of their last error"
            " (e.g. foreign_entry; all replicas).",
            labels=["target", "reason"],
        )
        for (target, reason), count in sorted(state.dead_reasons.items()):
            dead_reasons.add_metric([target, reason], count)
        divergent = GaugeMetricFamily(
            "secretmirror_divergent_secrets",
            "Secrets out of sync per store and kind, from the last successful verify.",
            labels=["store", "kind"],
        )
        for (store, kind), count in sorted(state.divergent.items()):
            divergent.add_metric([store, kind], count)
        last_success = GaugeMetricFamily(
            "secretmirror_reconcile_last_success_timestamp_seconds",
            "Unix time the newest successful reconcile job of each mode finished.",
            labels=["mode"],
        )
        for mode, finished in sorted(state.last_success.items()):
            last_success.add_metric([mode], finished)
        secrets = GaugeMetricFamily(
            "secretmirror_secrets",
            "Live secrets (exact below 100000, the planner's estimate above).",
        )
        if state.secrets is not None:
            secrets.add_metric([], state.secrets)
        age = GaugeMetricFamily(
            "secretmirror_shared_state_age_seconds",
            "Seconds since the shared-state gauges were last read from PostgreSQL.",
            unit="seconds",
        )
        if read_at is not None:
            age.add_metric([], max(time.time() - read_at, 0.0))
        return [pending, dead, lag, dead_reasons, divergent, last_success, secrets, age]


shared_state = SharedStateCollector()
REGISTRY.register(shared_state)
