"""The node's Prometheus metrics, declared in one place on a registry passed in.

Names follow ``idnode_<subsystem>_<name>_<unit>``; no identifier or prefix is
ever a label value. With several worker processes, prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor) makes
``/metrics`` report totals across all workers whichever worker answers.

The cache counts in plain integers on its hot path; ``flush()`` moves those
counts into the Prometheus metrics, once a second and before every scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from registry.store import Store
from resolver.cache import Cache, CacheStats

VERSION = "0.1.0"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess: bool = False
    ) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.multiprocess = multiprocess
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
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.writes = Counter(
            "idnode_registry_writes_total",
            "Write requests, by operation and outcome (ok or the HTTP status).",
            ["operation", "outcome"],
            registry=r,
        )
        self.batch_operations = Counter(
            "idnode_batch_operations_total",
            "Operations of POST /api/batch by what became of them.",
            ["outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "idnode_auth_failures_total",
            "Requests whose credentials were missing or wrong where they were needed.",
            registry=r,
        )
        self.rejections = Counter(
            "idnode_security_rejections_total",
            "Requests refused for security or abuse reasons, by reason.",
            ["reason"],
            registry=r,
        )
        self.cache_requests = Counter("idnode_cache_requests_total", "Cache lookups.", registry=r)
        self.cache_hits = Counter(
            "idnode_cache_hits_total", "Cache hits by kind.", ["kind"], registry=r
        )
        self.cache_evictions = Counter(
            "idnode_cache_evictions_total", "Entries evicted to stay in bounds.", registry=r
        )
        self.cache_invalidations = Counter(
            "idnode_cache_invalidations_total", "Keys invalidated by writes.", registry=r
        )
        self.cache_stale = Counter(
            "idnode_cache_served_stale_total",
            "Answers served from stale entries while PostgreSQL was unavailable.",
            registry=r,
        )
        self.cache_distrusts = Counter(
            "idnode_cache_distrusts_total",
            "Times a LISTEN connection was lost and its cache distrusted.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "idnode_cache_entries", "Cached entries.", registry=r, multiprocess_mode="livesum"
        )
        self.cache_trusted = Gauge(
            "idnode_cache_trusted",
            "Worker processes whose LISTEN connection is up (their caches are trusted).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_size = Gauge(
            "idnode_db_pool_connections",
            "Open PostgreSQL connections.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_idle = Gauge(
            "idnode_db_pool_idle_connections",
            "Idle PostgreSQL connections.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_query_duration = Histogram(
            "idnode_db_query_duration_seconds",
            "Time of PostgreSQL lookups made on cache misses.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # DNS front-end (resolver.dns_front): counted in plain integers, moved in by flush()
        self.dns_requests = Counter(
            "idnode_dns_requests_total",
            "DNS messages answered (or dropped), by transport, query type and response code.",
            ["transport", "qtype", "rcode"],
            registry=r,
        )
        self.dns_duration = Histogram(
            "idnode_dns_request_duration_seconds",
            "Time to answer a DNS query, by transport.",
            ["transport"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # The Handle protocol front-end (resolver/handle_server.py)
        self.handle_requests = Counter(
            "idnode_handle_requests_total",
            "Handle-protocol messages by transport, opcode (1, 2 or other) and result"
            " (the responseCode answered, or dropped).",
            ["transport", "opcode", "result"],
            registry=r,
        )
        self.handle_duration = Histogram(
            "idnode_handle_request_duration_seconds",
            "Time from a Handle-protocol message's arrival to its answer being sent.",
            ["transport"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.flush_hooks: list[Callable[[], None]] = []
        """Called by ``flush()``: front-ends that count on their hot path move counts in."""
        # upstream nodes (resolver/upstream.py): no URL or prefix labels
        self.upstream_requests = Counter(
            "idnode_upstream_requests_total",
            "Requests to other nodes, by result"
            " (ok, not_found, unavailable, invalid, refused by an open circuit).",
            ["result"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "idnode_upstream_request_duration_seconds",
            "Time of one request to another node.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.upstream_circuits = Gauge(
            "idnode_upstream_circuit_state",
            "Upstream nodes whose circuit breaker is in each state (closed, open, half_open).",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.circuit_states: Callable[[], dict[str, int]] | None = None
        Gauge(
            "idnode_build_info",
            "Build information.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        ).labels(VERSION).set(1)
        self._cache: Cache | None = None
        self._store: Store | None = None
        self._seen = CacheStats()

    def watch_cache(self, cache: Cache) -> None:
        self._cache = cache

    def watch_pool(self, store: Store) -> None:
        self._store = store

    def flush(self) -> None:
        """Move the cache's counts and the pool's size into the metrics."""
        for hook in self.flush_hooks:
            hook()
        if self._store is not None:
            self.pool_size.set(self._store.pool.get_size())
            self.pool_idle.set(self._store.pool.get_idle_size())
        if self.circuit_states is not None:
            for state, count in self.circuit_states().items():
                self.upstream_circuits.labels(state).set(count)
        cache = self._cache
        if cache is None:
            return
        now, seen = cache.stats, self._seen
        hits_pos = now.hits_positive - seen.hits_positive
        hits_neg = now.hits_negative - seen.hits_negative
        self.cache_requests.inc(hits_pos + hits_neg + now.misses - seen.misses)
        self.cache_hits.labels("positive").inc(hits_pos)
        self.cache_hits.labels("negative").inc(hits_neg)
        self.cache_evictions.inc(now.evictions - seen.evictions)
        self.cache_invalidations.inc(now.invalidations - seen.invalidations)
        self.cache_stale.inc(now.stale_served - seen.stale_served)
        self.cache_distrusts.inc(now.distrusts - seen.distrusts)
        self._seen = CacheStats(**{f: getattr(now, f) for f in now.__slots__})
        self.cache_entries.set(len(cache))
        self.cache_trusted.set(1 if cache.trusted else 0)

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's, or every worker's when there are several."""
        self.flush()
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    @staticmethod
    def worker_gone(pid: int | None) -> None:
        """Forget the live gauges of a worker process that exited."""
        if pid is not None:
            prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
