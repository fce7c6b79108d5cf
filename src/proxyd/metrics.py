"""Prometheus metrics. Counted where decisions are recorded, so both edges are covered.

With `--workers N`, prometheus_client runs in multiprocess mode (serve.py
sets PROMETHEUS_MULTIPROC_DIR) and /metrics on any worker reports the sum of
all workers; gauges say how they combine (`multiprocess_mode`).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

DECISIONS = Counter(
    "proxyd_decisions_total",
    "Authorization decisions, by operation, outcome and policy rule",
    ["operation", "decision", "rule"],
)
ISSUED = Counter(
    "proxyd_proxies_issued_total",
    "Proxies issued, by operation and type",
    ["operation", "type"],
)
REQUEST_SECONDS = Histogram(
    "proxyd_request_seconds",
    "Time to answer a request, by interface and route",
    ["interface", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LOCKOUTS = Counter(
    "proxyd_passphrase_lockouts_total",
    "Lock-outs started by repeated wrong passphrases (per credential or per peer)",
)
CONNECTIONS_OPEN = Gauge(
    "proxyd_connections_open",
    "Open connections (TLS handshakes in progress included), by interface",
    ["interface"],
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    "proxyd_connections_refused_total",
    "Connections closed at accept, before TLS, because a limit was reached; by interface "
    "and reason (the limit's configuration key: max_connections or max_connections_per_peer)",
    ["interface", "reason"],
)
AUDIT_WRITE_FAILURES = Counter(
    "proxyd_audit_write_failures_total",
    "Audit appends that failed; the request each one records failed with it (I6)",
)


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type.

    With several workers (PROMETHEUS_MULTIPROC_DIR set), the sum of what every worker
    recorded, whichever worker answers.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
