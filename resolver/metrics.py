"""The node's Prometheus metrics, declared in one place on a registry passed in.

Names follow ``idnode_<subsystem>_<name>_<unit>``; no identifier or prefix is
ever a label value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from registry.store import Store

VERSION = "0.1.0"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "idnode_http_requests_total",
            "HTTP requests answered, by front-end, endpoint and status code.",
            ["frontend", "endpoint", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "idnode_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["frontend", "endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.writes = Counter(
            "idnode_registry_writes_total",
            "Write operations, by operation and outcome (Handle responseCode name).",
            ["operation", "outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "idnode_auth_failures_total",
            "Requests whose credentials were missing or wrong where they were needed.",
            registry=r,
        )
        self.pool_size = Gauge(
            "idnode_db_pool_connections", "Open PostgreSQL connections of this process.", registry=r
        )
        self.pool_idle = Gauge(
            "idnode_db_pool_idle_connections", "Idle PostgreSQL connections.", registry=r
        )
        Info("idnode_build", "Build information.", registry=r).info({"version": VERSION})

    def watch_pool(self, store: Store) -> None:
        self.pool_size.set_function(lambda: store.pool.get_size())
        self.pool_idle.set_function(lambda: store.pool.get_idle_size())
