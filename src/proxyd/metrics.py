"""Prometheus metrics. Counted where decisions are recorded, so both edges are covered.

With `--workers N`, each worker process exports its own counters; scrape
each worker's port or sum in the query (see docs/operator notes).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
