"""Metrics: names and values seen from a fresh registry, and totals across worker processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RunningNode, TenantFactory, served


def sample(node: RunningNode, name: str, labels: dict[str, str] | None = None) -> float:
    node.metrics.flush()
    return node.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_request_cache_and_write_metrics(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    url = node.api(t.handle("m"))
    async with node.session.put(url, json=[{"index": 1, "type": "URL", "data": "x"}]) as r:
        assert r.status == 401
    assert sample(node, "idnode_auth_failures_total") == 1
    assert (
        sample(node, "idnode_registry_writes_total", {"operation": "write", "outcome": "401"}) == 1
    )
    async with node.session.put(
        url, json=[{"index": 1, "type": "URL", "data": "x"}], headers=t.auth
    ) as r:
        assert r.status == 201
    assert (
        sample(node, "idnode_registry_writes_total", {"operation": "write", "outcome": "ok"}) == 1
    )
    for _ in range(3):
        async with node.session.get(url) as r:
            assert r.status == 200
    async with node.session.get(node.api(t.handle("absent"))) as r:
        assert r.status == 404
    async with node.session.get(node.api(t.handle("absent"))) as r:
        assert r.status == 404
    labels = {"frontend": "http", "endpoint": "resolve", "code": "200"}
    assert sample(node, "idnode_http_requests_total", labels) == 3
    assert sample(node, "idnode_cache_hits_total", {"kind": "positive"}) >= 2
    assert sample(node, "idnode_cache_hits_total", {"kind": "negative"}) == 1
    assert sample(node, "idnode_cache_requests_total") == 5
    assert sample(node, "idnode_cache_entries") == 2
    count = {"frontend": "http", "endpoint": "resolve"}
    assert sample(node, "idnode_http_request_duration_seconds_count", count) == 5
    assert sample(node, "idnode_db_query_duration_seconds_count") >= 1
    assert sample(node, "idnode_build_info", {"version": "0.1.0"}) == 1
    async with node.session.get(f"{node.url}/metrics") as r:
        text = await r.text()
    assert "idnode_cache_hits_total" in text and t.prefix not in text, "no prefix as a label"


@pytest.fixture(scope="module")
def two_workers(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(db_url, tmp_path_factory.mktemp("workers"), IDNODE_WORKERS="2") as (url, _):
        yield url


def test_metrics_total_across_workers(two_workers: str, tmp_path: Path) -> None:
    total = 40
    for _ in range(total):  # new connections: the kernel spreads them over both workers
        assert requests.get(two_workers + "/healthz", headers={"Connection": "close"}).ok
    time.sleep(1.5)  # every worker flushes its counts within a second
    seen = set()
    for _ in range(6):
        text = requests.get(two_workers + "/metrics", headers={"Connection": "close"}).text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("idnode_http_requests_total{") and 'endpoint="healthz"' in x
        )
        seen.add(float(line.rsplit(" ", 1)[1]))
        pids = [x for x in text.splitlines() if x.startswith("idnode_db_pool_connections")]
        assert pids
    assert min(seen) >= total, f"a scrape saw only one worker's requests: {seen}"
