"""Prometheus metrics (spec section 10). Labels never carry secret names or values.

Counters and histograms are per process. Gauges of shared state (pending,
dead, lag, divergence, secrets) are read from PostgreSQL at scrape time by
``SharedStateCollector`` so every replica reports the same truth.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
store_requests = Counter(
    "secretmirror_store_requests_total",
    "Requests to a secrets store by operation and outcome.",
    ["store", "operation", "outcome"],
    registry=REGISTRY,
)
store_request_duration = Histogram(
    "secretmirror_store_request_duration_seconds",
    "Duration of requests to a secrets store.",
    ["store", "operation"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)
fallback = Counter(
    "secretmirror_fallback_total",
    "Operations served by a source other than the primary store.",
    ["operation", "source"],
    registry=REGISTRY,
)
reconcile_jobs = Counter(
    "secretmirror_reconcile_jobs_total",
    "Reconcile jobs finished, by mode and outcome.",
    ["mode", "outcome"],
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
