"""The hot-path cache: TTL timelines on an injected clock, single-flight, coherence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from registry.errors import ServerTooBusy
from registry.handle import Handle, parse
from registry.store import Record
from resolver.cache import Cache, Entry
from resolver.metrics import Metrics
from resolver.pipeline import CacheStage, encode, resolve
from tests.conftest import RunningNode, Tenant, TenantFactory, free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def positive() -> Entry:
    return encode(Record.of("88.1/x", ()))


def fill(cache: Cache, key: str, entry: Entry) -> bool:
    flight: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
    cache.begin(key, flight)
    return cache.fill(key, flight, entry)


# after N seconds → (fresh?, stale-servable?)
TIMELINE = [
    (0, True, True),
    (3599, True, True),
    (3601, False, True),
    (3600 + 299, False, True),
    (3600 + 301, False, False),
]


@pytest.mark.parametrize(("after", "fresh", "stale"), TIMELINE)
async def test_positive_entry_timeline(after: float, fresh: bool, stale: bool) -> None:
    clock = FakeClock()
    cache = Cache(max_age=3600, stale_for=300, clock=clock)
    assert fill(cache, "k", positive())
    clock.now += after
    assert (cache.fresh("k") is not None) == fresh
    assert (cache.stale("k") is not None) == stale


async def test_negative_entries_have_their_own_ttl() -> None:
    clock = FakeClock()
    cache = Cache(max_age=3600, negative_ttl=60, clock=clock)
    assert fill(cache, "gone", Entry(None))
    clock.now += 59
    hit = cache.fresh("gone")
    assert hit is not None and hit.record is None
    clock.now += 2
    assert cache.fresh("gone") is None
    assert (cache.stats.hits_negative, cache.stats.misses) == (1, 1)


async def test_bounded_size_counts_evictions() -> None:
    cache = Cache(max_entries=2, clock=FakeClock())
    for key in "abc":
        fill(cache, key, positive())
    assert len(cache) == 2 and cache.stats.evictions == 1
    assert cache.fresh("a") is None and cache.fresh("c") is not None


async def test_fill_after_invalidation_is_dropped() -> None:
    cache = Cache(clock=FakeClock())
    flight: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
    cache.begin("k", flight)
    cache.invalidate(["k"])
    assert not cache.fill("k", flight, positive())
    assert cache.fresh("k") is None


async def test_distrusted_entries_are_only_served_stale() -> None:
    clock = FakeClock()
    cache = Cache(stale_for=300, clock=clock)
    fill(cache, "k", positive())
    cache.distrust()
    assert cache.fresh("k") is None
    assert not fill(cache, "other", positive()), "no fills while invalidations may be missed"
    cache.trust()
    assert cache.fresh("k") is None, "an entry from before the gap stays suspect"
    assert cache.stale("k") is not None
    clock.now += 301
    assert cache.stale("k") is None


class GatedStage:
    """A stage below the cache that counts fetches and answers when released."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.fail = False
        self._answering: set[asyncio.Task[None]] = set()

    def lookup(self, h: Handle, *, authoritative: bool = False) -> asyncio.Future[Entry]:
        self.calls += 1
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()

        async def answer() -> None:
            await self.gate.wait()
            if self.fail:
                future.set_exception(ServerTooBusy("database unavailable"))
            else:
                future.set_result(encode(Record.of(h.text, ())))

        task = asyncio.ensure_future(answer())
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)
        return future


async def test_concurrent_misses_make_one_fetch() -> None:
    inner = GatedStage()
    stage = CacheStage(inner, Cache(clock=FakeClock()))
    waiters = [asyncio.create_task(resolve(stage, parse("88.1/X"))) for _ in range(20)]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(*waiters)
    assert inner.calls == 1
    assert all(r is results[0] for r in results)
    await resolve(stage, parse("88.1/x"))
    assert inner.calls == 1, "a different spelling is the same key"


async def test_authoritative_resolution_bypasses_the_cache() -> None:
    inner = GatedStage()
    inner.gate.set()
    stage = CacheStage(inner, Cache(clock=FakeClock()))
    await resolve(stage, parse("88.1/x"))
    await resolve(stage, parse("88.1/x"))
    assert inner.calls == 1
    await resolve(stage, parse("88.1/x"), authoritative=True)
    assert inner.calls == 2
    inner.fail = True
    with pytest.raises(ServerTooBusy):
        await resolve(stage, parse("88.1/x"), authoritative=True)


async def test_request_after_invalidation_does_not_join_old_fetch() -> None:
    inner = GatedStage()
    cache = Cache(clock=FakeClock())
    stage = CacheStage(inner, cache)
    early = asyncio.create_task(resolve(stage, parse("88.1/x")))
    await asyncio.sleep(0)
    cache.invalidate(["88.1/x"])
    late = asyncio.create_task(resolve(stage, parse("88.1/x")))
    await asyncio.sleep(0)
    inner.gate.set()
    await asyncio.gather(early, late)
    assert inner.calls == 2
    assert len(cache) == 1


async def test_database_down_serves_stale_then_503() -> None:
    clock = FakeClock()
    inner = GatedStage()
    inner.gate.set()
    cache = Cache(max_age=10, stale_for=30, clock=clock)
    stage = CacheStage(inner, cache)
    await resolve(stage, parse("88.1/x"))
    inner.fail = True
    clock.now += 11
    served = await resolve(stage, parse("88.1/x"))
    assert served.record is not None and cache.stats.stale_served == 1
    clock.now += 30
    with pytest.raises(ServerTooBusy):
        await resolve(stage, parse("88.1/x"))
    with pytest.raises(ServerTooBusy):
        await resolve(stage, parse("88.1/never-seen"))


# --- coherence with real processes' caches on a real PostgreSQL ----------------------------


async def _value(node: RunningNode, handle: str) -> str | None:
    async with node.session.get(node.api(handle)) as r:
        if r.status == 404:
            return None
        body = await r.json()
    return str(body["values"][0]["data"]["value"])


async def _put(node: RunningNode, t: Tenant, handle: str, value: str) -> None:
    body = [{"index": 1, "type": "URL", "data": value}]
    async with node.session.put(node.api(handle), json=body, headers=t.auth) as r:
        assert r.status in (200, 201), await r.text()


async def test_writer_never_reads_its_old_record(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    h = t.handle("coherent")
    assert await _value(node, h) is None  # a cached negative entry
    for n in range(30):
        await _put(node, t, h, f"https://example.com/{n}")
        assert await _value(node, h) == f"https://example.com/{n}"
    async with node.session.delete(node.api(h), headers=t.auth) as r:
        assert r.status == 200
    assert await _value(node, h) is None


async def test_other_process_drops_entry_on_notify(
    node: RunningNode, tenant: TenantFactory, db_url: str, tmp_path: Path, key_dir: Path
) -> None:
    from aiohttp import web

    from resolver.app import create_app
    from tests.conftest import node_config

    t = await tenant()
    h = t.handle("shared")
    await _put(node, t, h, "https://example.com/old")
    config = node_config(key_dir, port=free_port(), data_dir=tmp_path, database_url=db_url)
    other_metrics = Metrics(CollectorRegistry())
    runner = web.AppRunner(create_app(config, db_url, metrics=other_metrics))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.port).start()
    other = RunningNode(f"http://127.0.0.1:{config.port}", other_metrics, node.session)
    try:
        from resolver.api import NODE

        listener = runner.app[NODE].listener
        assert listener is not None
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert await _value(other, h) == "https://example.com/old"
        assert await _value(other, h) == "https://example.com/old"
        other_metrics.flush()
        hits = other_metrics.registry.get_sample_value(
            "idnode_cache_hits_total", {"kind": "positive"}
        )
        assert hits == 1
        await _put(node, t, h, "https://example.com/new")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2
        while await _value(other, h) != "https://example.com/new":
            assert loop.time() < deadline, "the other process kept serving the old record"
            await asyncio.sleep(0.005)
        other_metrics.flush()
        assert (
            other_metrics.registry.get_sample_value("idnode_cache_invalidations_total") or 0
        ) >= 1
    finally:
        await runner.cleanup()


async def test_http_caching_headers_and_304(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    h = t.handle("etag")
    body = [{"index": 1, "type": "URL", "data": "https://example.com", "ttl": 600}]
    async with node.session.put(node.api(h), json=body, headers=t.auth) as r:
        assert r.status == 201
    async with node.session.get(node.api(h)) as r:
        etag = r.headers["ETag"]
        assert r.headers["Cache-Control"] == "max-age=600"
    async with node.session.get(node.api(h), headers={"If-None-Match": etag}) as r:
        assert r.status == 304 and await r.read() == b""
    assert etag.startswith('W/"'), "answers for other spellings differ: the ETag is weak"
    for header in (f'"other", {etag}', etag.removeprefix("W/"), "*"):
        async with node.session.get(node.api(h), headers={"If-None-Match": header}) as r:
            assert r.status == 304, header
    async with node.session.get(node.api(h), headers={"If-None-Match": '"other"'}) as r:
        assert r.status == 200
    await _put(node, t, h, "https://example.com/changed")
    async with node.session.get(node.api(h), headers={"If-None-Match": etag}) as r:
        assert r.status == 200 and r.headers["ETag"] != etag
