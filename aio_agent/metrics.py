"""Prometheus metrics of the agent, in one registry that the probes server renders at /metrics.

The registry is our own (not prometheus_client's global one), so /metrics shows exactly these
series and tests can read them without interference from imported libraries.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ACTIVE_SESSIONS = Gauge(
    "aio_active_sessions", "Voice sessions currently running in this worker.", registry=REGISTRY
)
TOOL_CALLS = Counter(
    "aio_tool_calls_total",
    "Tool calls by tool and outcome (ok, error, timeout, rejected).",
    ["tool", "status"],
    registry=REGISTRY,
)
TOOL_CALL_DURATION = Histogram(
    "aio_tool_call_duration_seconds",
    "Wall time of one tool call, retries included.",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
DB_QUEUE_DEPTH = Gauge(
    "aio_db_queue_depth", "Database writes waiting in the background queue.", registry=REGISTRY
)
DB_QUEUE_DROPPED = Counter(
    "aio_db_queue_dropped_total",
    "Database writes dropped: queue full, or still queued when the worker stopped.",
    registry=REGISTRY,
)
DB_WRITES = Counter(
    "aio_db_writes_total",
    "Rows written by the background writer, by table and status (ok, error).",
    ["table", "status"],
    registry=REGISTRY,
)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one series (0.0 when it has not been observed yet)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value
