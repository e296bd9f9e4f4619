"""The node's Prometheus metrics, declared in one place on a registry passed in.

Names follow ``idnode_<subsystem>_<name>_<unit>``; no identifier or prefix is
ever a label value.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registry.store import Store
from resolver.cache import Cache

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

    def watch_cache(self, cache: Cache) -> None:
        self.registry.register(_CacheCollector(cache))

    def watch_pool(self, store: Store) -> None:
        self.pool_size.set_function(lambda: store.pool.get_size())
        self.pool_idle.set_function(lambda: store.pool.get_idle_size())


class _CacheCollector(Collector):
    """Reads the cache's own counters at scrape time: no work on the hot path."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        s = self.cache.stats
        lookups = s.hits_positive + s.hits_negative + s.misses
        yield CounterMetricFamily("idnode_cache_requests", "Cache lookups.", value=lookups)
        hits = CounterMetricFamily("idnode_cache_hits", "Cache hits by kind.", labels=["kind"])
        hits.add_metric(["positive"], s.hits_positive)
        hits.add_metric(["negative"], s.hits_negative)
        yield hits
        yield GaugeMetricFamily("idnode_cache_entries", "Cached entries.", value=len(self.cache))
        yield CounterMetricFamily(
            "idnode_cache_evictions", "Entries evicted to stay in bounds.", value=s.evictions
        )
        yield CounterMetricFamily(
            "idnode_cache_invalidations", "Keys invalidated by writes.", value=s.invalidations
        )
        yield CounterMetricFamily(
            "idnode_cache_served_stale",
            "Answers served from stale entries while PostgreSQL was unavailable.",
            value=s.stale_served,
        )
        yield CounterMetricFamily(
            "idnode_cache_distrusts",
            "Times the LISTEN connection was lost and the cache distrusted.",
            value=s.distrusts,
        )
        yield GaugeMetricFamily(
            "idnode_cache_trusted",
            "1 while invalidations are being received (LISTEN connected).",
            value=1 if self.cache.trusted else 0,
        )
