"""A PostgreSQL that hangs or drops connections: lookups fail fast with 503, then recover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from registry.errors import ServerTooBusy
from registry.handle import parse
from registry.store import Store, create_pool
from tests.conftest import TEST_DB, TenantFactory
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
