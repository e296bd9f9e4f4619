"""Bursts of writes: never a hang, exactly one winner per conflict."""

from __future__ import annotations

import asyncio

from tests.conftest import URL_VALUE, RunningNode, TenantFactory


async def test_burst_of_writes_completes(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()

    async def put(n: int) -> int:
        url = node.api(t.handle(f"burst{n}"))
        async with node.session.put(url, json=[URL_VALUE], headers=t.auth) as r:
            return r.status

    statuses = await asyncio.wait_for(asyncio.gather(*(put(n) for n in range(60))), 30)
    assert statuses == [201] * 60
    async with node.session.get(
        f"{node.url}/api/handles", params={"prefix": t.prefix}, headers=t.auth
    ) as r:
        assert (await r.json())["totalCount"] == "60"
    async with node.session.get(f"{node.url}/readyz") as r:
        assert r.status == 200


async def test_concurrent_creates_of_one_handle(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    url = node.api(t.handle("contested"))

    async def create(n: int) -> int:
        body = [{**URL_VALUE, "data": f"https://example.com/{n}"}]
        params = {"overwrite": "false"}
        async with node.session.put(url, json=body, headers=t.auth, params=params) as r:
            return r.status

    statuses = await asyncio.wait_for(asyncio.gather(*(create(n) for n in range(24))), 30)
    assert sorted(statuses) == [201] + [409] * 23
    async with node.session.get(url) as r:
        assert r.status == 200
