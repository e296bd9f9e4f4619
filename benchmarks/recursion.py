"""Recursion: upstream round trips saved by the cache, and a cached foreign record's cost.

Two nodes in this process on loopback sockets, each with its own database on the
benchmark server: B homes ``88.200`` and A, recursive, sends ``88.200`` to B
(``IDNODE_UPSTREAMS``) and homes ``88.118.8`` itself; both prefixes hold the same
number of records. A Zipf(0.9) stream of queries over B's handles goes to A,
once with A's cache on and once with it off, counting the requests B answered:
upstream round trips per 1,000 queries. Then, with everything cached, the same
Zipf stream over local and over foreign handles is resolved through A's
pipeline and over HTTP, in the same run: the two rates should match.

Standalone: ``.venv/bin/python -m benchmarks.recursion [--records N] [--queries N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.dataset import database_url, record_values, recreate
from benchmarks.system import free_port
from registry.handle import parse
from registry.store import Store, create_pool
from resolver.api import NODE
from resolver.app import create_app
from resolver.config import Config
from resolver.metrics import Metrics
from resolver.pipeline import resolve

BENCH_DIR = Path(".data/bench")
FOREIGN, LOCAL = "88.200", "88.118.8"
EXPONENT = 0.9
SEED = 20240416
CONCURRENCY = 16


def zipf_stream(universe: int, count: int) -> list[int]:
    """``count`` ranks in ``range(universe)``, rank ``r`` with weight ``(r + 1) ** -0.9``."""
    weights = itertools.accumulate((r + 1) ** -EXPONENT for r in range(universe))
    cumulative = list(weights)
    rng = random.Random(SEED)
    top = cumulative[-1]
    return [bisect.bisect_left(cumulative, rng.random() * top) for _ in range(count)]


async def seed(dsn: str, prefix: str, records: int) -> None:
    pool = await create_pool(dsn, max_size=2)
    try:
        store = Store(pool)
        async with store.writing() as tx:
            await tx.home_prefix(prefix)
            for n in range(records):
                await tx.insert(parse(f"{prefix}/P{n}"), record_values(n))
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def node(dsn: str, name: str, **settings: Any) -> AsyncIterator[tuple[str, web.Application]]:
    port = free_port()
    config = Config(
        port=port,
        data_dir=BENCH_DIR / f"recursion-{name}",
        database_url=dsn,
        read_rate=0.0,
        write_rate=0.0,
        **settings,
    )
    app = create_app(config, dsn, metrics=Metrics())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    listener = app[NODE].listener
    if listener is not None:
        await asyncio.wait_for(listener.connected.wait(), 30)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


def answered(app: web.Application) -> float:
    registry = app[NODE].metrics.registry
    return sum(
        registry.get_sample_value(
            "idnode_http_requests_total",
            {"frontend": "http", "endpoint": "resolve", "code": code},
        )
        or 0.0
        for code in ("200", "404")
    )


async def http_rate(url: str, prefix: str, ranks: Sequence[int]) -> float:
    """Resolutions per second over HTTP with ``CONCURRENCY`` connections."""
    paths = [f"{url}/api/handles/{prefix}/P{r}" for r in ranks]
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(part: Sequence[str]) -> None:
            for path in part:
                async with session.get(path) as response:
                    await response.read()
                    assert response.status == 200, response.status

        started = time.perf_counter()
        await asyncio.gather(*(worker(paths[i::CONCURRENCY]) for i in range(CONCURRENCY)))
        return len(paths) / (time.perf_counter() - started)


async def pipeline_rate(app: web.Application, prefix: str, ranks: Sequence[int]) -> float:
    pipeline = app[NODE].pipeline
    handles = [parse(f"{prefix}/P{r}") for r in ranks]
    started = time.perf_counter()
    for h in handles:
        await resolve(pipeline, h)
    return len(handles) / (time.perf_counter() - started)


async def round_trips(
    b_dsn: str, a_dsn: str, b_url: str, b: web.Application, ranks: Sequence[int], cache: int
) -> float:
    before = answered(b)
    settings = {"recursion": True, "upstreams": f"{FOREIGN}={b_url}", "cache_max_entries": cache}
    async with node(a_dsn, f"a{cache}", **settings) as (a_url, _):
        await http_rate(a_url, FOREIGN, ranks)
    return (answered(b) - before) * 1000 / len(ranks)


async def main(records: int, queries: int) -> None:
    server = database_url(BENCH_DIR)
    b_dsn = await recreate(server, "idnode_bench_recursion_b")
    a_dsn = await recreate(server, "idnode_bench_recursion_a")
    await seed(b_dsn, FOREIGN, records)
    await seed(a_dsn, LOCAL, records)
    ranks = zipf_stream(records, queries)
    print(f"recursion: {records} records per node, {queries} Zipf({EXPONENT}) queries", flush=True)
    async with node(b_dsn, "b") as (b_url, b):
        cached = await round_trips(b_dsn, a_dsn, b_url, b, ranks, 100_000)
        uncached = await round_trips(b_dsn, a_dsn, b_url, b, ranks, 0)
        print(f"upstream round trips per 1,000 queries: cache on {cached:.1f}, off {uncached:.1f}")
        print(f"saved per 1,000 queries: {uncached - cached:.1f}")
        settings = {"recursion": True, "upstreams": f"{FOREIGN}={b_url}"}
        async with node(a_dsn, "a", **settings) as (a_url, a):
            for prefix in (FOREIGN, LOCAL):  # warm: every queried handle cached
                await http_rate(a_url, prefix, sorted(set(ranks)))
            rates: dict[str, float] = {}
            for prefix in (LOCAL, FOREIGN, LOCAL, FOREIGN):
                rates[prefix] = max(rates.get(prefix, 0.0), await pipeline_rate(a, prefix, ranks))
            print(
                f"pipeline, cached: local {rates[LOCAL]:,.0f}/s, foreign {rates[FOREIGN]:,.0f}/s"
                f" (foreign/local {rates[FOREIGN] / rates[LOCAL]:.2f})"
            )
            http: dict[str, float] = {}
            for prefix in (LOCAL, FOREIGN, LOCAL, FOREIGN):
                http[prefix] = max(http.get(prefix, 0.0), await http_rate(a_url, prefix, ranks))
            print(
                f"HTTP (aiohttp, client in-process), cached: local {http[LOCAL]:,.0f}/s,"
                f" foreign {http[FOREIGN]:,.0f}/s (foreign/local {http[FOREIGN] / http[LOCAL]:.2f})"
            )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.records, args.queries))


if __name__ == "__main__":
    cli()
