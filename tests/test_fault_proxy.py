"""A PostgreSQL that hangs or drops connections: lookups fail fast with 503, then recover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from registry.errors import ServerTooBusy
from registry.handle import parse
from registry.store import Store, create_pool
from resolver import app as app_module
from tests.conftest import TEST_DB, URL_VALUE, TenantFactory, free_port, running
from tests.faultproxy import FaultProxy, socket_path


@pytest.fixture
async def proxy(server_url: str) -> AsyncIterator[FaultProxy]:
    fault = FaultProxy(socket_path(server_url))
    await fault.start()
    try:
        yield fault
    finally:
        await fault.close()


async def test_hanging_database_fails_fast_and_recovers(
    proxy: FaultProxy, tenant: TenantFactory
) -> None:
    t = await tenant()
    pool = await create_pool(proxy.dsn(TEST_DB), max_size=2, command_timeout=0.5)
    store = Store(pool)
    h = parse(t.handle("x"))
    try:
        assert await store.lookup_many([h]) == [(True, None)]
        proxy.freeze()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ServerTooBusy):
            await store.lookup_many([h])
        assert loop.time() - started < 3, "a hanging database must not hang the request"
        proxy.thaw()
        proxy.cut()  # the connection that timed out is gone either way
        deadline = loop.time() + 10
        while True:
            try:
                assert await store.lookup_many([h]) == [(True, None)]
                break
            except ServerTooBusy:
                assert loop.time() < deadline, "no recovery after the database came back"
                await asyncio.sleep(0.1)
    finally:
        proxy.thaw()
        pool.terminate()


async def test_database_down_at_start_up(
    server_url: str, tenant: TenantFactory, tmp_path: Path, key_dir: Path, monkeypatch: Any
) -> None:
    """The node starts without its database, says why, and comes up when it appears."""
    t = await tenant()
    port = free_port()  # nothing listens here yet: the database is "down"
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{TEST_DB}"
    monkeypatch.setattr(app_module, "STARTUP_WAIT_SECONDS", 0.2)  # serve the 503s sooner
    async with running(dsn, tmp_path, key_dir, ready=False) as node:
        async with node.session.get(f"{node.url}/healthz") as r:
            assert r.status == 200
        async with node.session.get(f"{node.url}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["reason"].startswith(
                "starting: waiting for the database"
            )
        async with node.session.get(node.api(t.handle("x"))) as r:
            body = await r.json()
            assert r.status == 503 and body["responseCode"] == 3
            assert "starting" in body["message"]
        gate = FaultProxy(socket_path(server_url))
        await gate.start(port)  # the database comes up
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                async with node.session.get(f"{node.url}/readyz") as r:
                    if r.status == 200:
                        break
                assert loop.time() < deadline, "the node never came up"
                await asyncio.sleep(0.2)
            async with node.session.put(
                node.api(t.handle("x")), json=[URL_VALUE], headers=t.auth
            ) as r:
                assert r.status == 201
            async with node.session.get(node.api(t.handle("x"))) as r:
                assert r.status == 200
        finally:
            await gate.close()
