"""Recursion and referral: several nodes on loopback, each with its own database.

A root node homes ``88`` and holds the delegation ``0.NA/88.200`` (B's HS_SITE);
node B homes ``88.200`` and ``88.200.1`` and advertises itself; node A homes
nothing, knows only the root and resolves recursively on an injected clock.
Misbehaving upstreams are small aiohttp servers on real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import dns.name
import pytest
from aiohttp import web

from registry.errors import ConfigError
from registry.handle import parse
from registry.store import Record
from resolver.api import NODE
from resolver.app import create_app
from resolver.breaker import Breaker, State
from resolver.config import Config
from resolver.dns_names import to_name
from resolver.metrics import Metrics
from resolver.pipeline import encode
from resolver.sites import advertised_site, base_url, read_site, site_urls, site_value
from resolver.upstream import (
    MAX_HOPS,
    VIA_HEADER,
    RecursionLoop,
    UpstreamInvalid,
    UpstreamUnavailable,
    interpret,
    parse_via,
)
from tests.conftest import Tenant, _with_database, free_port, node_config, served
from tests.test_dns import debian_tool, first_answer, forwarding, run_dig


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Node:
    url: str
    app: web.Application
    runner: web.AppRunner
    metrics: Metrics
    session: aiohttp.ClientSession

    def api(self, handle: str) -> str:
        return f"{self.url}/api/handles/{handle}"

    async def get(self, handle: str, **headers: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(self.api(handle), headers=headers) as r:
            return r.status, await r.json()

    def resolved(self, code: str = "200") -> float:
        labels = {"frontend": "http", "endpoint": "resolve", "code": code}
        return self.metrics.registry.get_sample_value("idnode_http_requests_total", labels) or 0.0

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def databases(server_url: str) -> AsyncIterator[Callable[[], Any]]:
    """Factory of empty databases on the test server, dropped afterwards."""
    made: list[str] = []

    async def make() -> str:
        name = f"idnode_rec_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        made.append(name)
        return _with_database(server_url, name)

    yield make
    conn = await asyncpg.connect(server_url)
    try:
        for name in made:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def serving(
    db: str, data_dir: Path, key_dir: Path, *, clock: FakeClock | None = None, **settings: Any
) -> AsyncIterator[Node]:
    """A node on a real loopback socket (its monotonic clock injected), ready."""
    port = settings.pop("port", None) or free_port()
    config = node_config(key_dir, port=port, data_dir=data_dir, database_url=db, **settings)
    metrics = Metrics()
    app = create_app(config, db, metrics=metrics, monotonic=clock or time.monotonic)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    node = app[NODE]
    assert node.startup.done, node.startup.problem
    if node.listener is not None:
        await asyncio.wait_for(node.listener.connected.wait(), 30)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        serving = Node(f"http://127.0.0.1:{port}", app, runner, metrics, session)
        try:
            yield serving
        finally:
            await runner.cleanup()


async def home(node: Node, prefix: str) -> Tenant:
    t = Tenant(prefix, f"secret-{prefix}")
    assert await node.app[NODE].registry.home_prefix(t.prefix, t.secret)
    return t


async def put(node: Node, t: Tenant, handle: str, url: str, ttl: int = 60) -> None:
    value = {"index": 1, "type": "URL", "data": url, "ttl": ttl}
    async with node.session.put(node.api(handle), json={"values": [value]}, headers=t.auth) as r:
        assert r.status in (200, 201), await r.text()


@dataclass
class Hierarchy:
    root: Node
    a: Node
    b: Node
    clock: FakeClock
    b_admin: Tenant
    a_dns: int
    """A's DNS front-end port (zone ``DNS_ZONE``)."""


@pytest.fixture(name="h")
async def hierarchy(
    databases: Callable[[], Any], tmp_path: Path, key_dir: Path
) -> AsyncIterator[Hierarchy]:
    clock = FakeClock()
    a_dns = free_port()
    b_port = free_port()
    b_url = f"http://127.0.0.1:{b_port}"
    async with contextlib.AsyncExitStack() as stack:
        root = await stack.enter_async_context(
            serving(await databases(), tmp_path / "root", key_dir)
        )
        b = await stack.enter_async_context(
            serving(await databases(), tmp_path / "b", key_dir, port=b_port, advertise_url=b_url)
        )
        a = await stack.enter_async_context(
            serving(
                await databases(),
                tmp_path / "a",
                key_dir,
                clock=clock,
                recursion=True,
                root_url=root.url,
                upstream_stale_seconds=600,
                dns_port=a_dns,
                dns_zone=DNS_ZONE,
            )
        )
        await home(root, "88")
        registry = root.app[NODE].registry
        assert await registry.delegate("88.200", site_value(b_url, registry.timestamp()))
        await home(b, "88.200")
        admin = await home(b, "88.200.1")
        yield Hierarchy(root, a, b, clock, admin, a_dns)


async def test_a_resolves_through_the_root_caches_and_serves_stale(h: Hierarchy) -> None:
    await put(h.b, h.b_admin, "88.200.1/x", "https://one.example", ttl=60)
    status, doc = await h.a.get("88.200.1/X")
    assert status == 200, doc
    assert doc["handle"] == "88.200.1/X"
    assert doc["values"][0]["data"]["value"] == "https://one.example"
    served = h.b.resolved()
    for _ in range(3):
        assert (await h.a.get("88.200.1/x"))[0] == 200
    assert h.b.resolved() == served, "cached: B is not asked again within the TTL"

    await put(h.b, h.b_admin, "88.200.1/x", "https://two.example", ttl=60)
    assert (await h.a.get("88.200.1/x"))[1]["values"][0]["data"]["value"] == "https://one.example"
    h.clock.now += 61
    status, doc = await h.a.get("88.200.1/x")
    assert doc["values"][0]["data"]["value"] == "https://two.example", "B's change after the TTL"

    await h.b.stop()
    h.clock.now += 61
    status, doc = await h.a.get("88.200.1/x")
    assert status == 200 and doc["values"][0]["data"]["value"] == "https://two.example", doc
    h.clock.now += 601
    status, doc = await h.a.get("88.200.1/x")
    assert (status, doc["responseCode"]) == (503, 3), doc
    assert "88.200.1" in doc["message"]


async def test_not_found_is_cached_for_the_negative_ttl(h: Hierarchy) -> None:
    status, doc = await h.a.get("88.200.1/nothing")
    assert (status, doc["responseCode"]) == (404, 100)
    asked = h.b.resolved("404")
    assert (await h.a.get("88.200.1/nothing"))[0] == 404
    assert h.b.resolved("404") == asked
    h.clock.now += 31
    assert (await h.a.get("88.200.1/nothing"))[0] == 404
    assert h.b.resolved("404") == asked + 1


async def test_published_and_delegated_site_records(h: Hierarchy) -> None:
    status, own = await h.b.get("0.NA/88.200")
    assert status == 200
    assert site_urls(_values(own)) == [h.b.url], "B advertises itself in its prefix record"
    status, referral = await h.root.get("0.NA/88.200")
    assert status == 200 and site_urls(_values(referral)) == [h.b.url]
    assert (await h.root.get("0.NA/88.999"))[0] == 404, "the parent knows no such prefix"
    assert (await h.root.get("88.200/x"))[1]["responseCode"] == 301, "a referral, not a home"
    status, through_a = await h.a.get("0.NA/88.200")
    assert status == 200 and site_urls(_values(through_a)) == [h.b.url]


async def test_unknown_prefix_is_not_found_at_the_root(h: Hierarchy) -> None:
    status, doc = await h.a.get("77.5/x")
    assert (status, doc["responseCode"]) == (404, 100)


async def test_a_deep_prefix_walks_at_most_ten_levels(h: Hierarchy) -> None:
    deep = "88." + ".".join(["1"] * 300)
    asked = h.root.resolved("404") + h.root.resolved("200")
    status, doc = await h.a.get(f"{deep}/x")
    assert (status, doc["responseCode"]) == (404, 100)
    assert h.root.resolved("404") + h.root.resolved("200") - asked == 10
    status, doc = await h.root.get(f"0.NA/{deep}")
    assert (status, doc["responseCode"]) == (404, 100), "a derived prefix of 88 without referral"


def _values(doc: dict[str, Any]) -> list[Any]:
    return list(Record.of("x/y", [_value(v) for v in doc["values"]]).values)


def _value(raw: dict[str, Any]) -> Any:
    from registry.values import parse_value

    return parse_value(raw, timestamp=raw["timestamp"])


# --- static map, bad upstreams, loops -------------------------------------------------------


@pytest.fixture
async def bad_upstream() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """An HTTP server whose answers depend on the prefix asked for; counts requests."""
    counts: dict[str, int] = {}

    async def answer(request: web.Request) -> web.StreamResponse:
        handle = request.match_info["handle"]
        prefix = handle.split("/")[0]
        counts[prefix] = counts.get(prefix, 0) + 1
        good = {"responseCode": 1, "handle": handle, "values": []}
        if prefix == "66.1":
            return web.Response(text="<html>not json</html>", status=200)
        if prefix == "66.2":
            await asyncio.sleep(2)
            return web.json_response(good)
        if prefix == "66.3":
            return web.json_response({**good, "handle": "66.3/someone-else"})
        if prefix == "66.4":
            return web.json_response({"responseCode": 3, "handle": handle}, status=503)
        if prefix == "66.7":
            await asyncio.sleep(0.2)
            return web.json_response(good)
        if prefix == "66.5":
            bad = {"index": "x", "type": "URL", "data": "a", "timestamp": ""}
            return web.json_response({**good, "values": [bad]})
        return web.json_response(good)

    app = web.Application()
    app.router.add_get("/api/handles/{handle:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", counts
    finally:
        await runner.cleanup()


@pytest.fixture
async def recursive(
    databases: Callable[[], Any],
    tmp_path: Path,
    key_dir: Path,
    bad_upstream: tuple[str, dict[str, int]],
) -> AsyncIterator[tuple[Node, FakeClock, dict[str, int]]]:
    url, counts = bad_upstream
    clock = FakeClock()
    port = free_port()
    static = ",".join(f"66.{n}={url}" for n in range(1, 8)) + f",66.8=http://127.0.0.1:{port}"
    async with serving(
        await databases(),
        tmp_path,
        key_dir,
        clock=clock,
        port=port,
        recursion=True,
        upstreams=static,
        upstream_timeout=0.3,
    ) as node:
        yield node, clock, counts


async def test_static_map_needs_no_root(recursive: tuple[Node, FakeClock, dict[str, int]]) -> None:
    node, _, counts = recursive
    status, doc = await node.get("66.6.1/x")
    assert (status, doc["handle"], doc["values"]) == (200, "66.6.1/x", [])
    assert counts["66.6.1"] == 1
    status, doc = await node.get("55.1/x")
    assert (status, doc["responseCode"]) == (400, 301), "no upstream for it: not responsible"


async def test_concurrent_misses_make_one_upstream_request(
    recursive: tuple[Node, FakeClock, dict[str, int]],
) -> None:
    node, _, counts = recursive
    answers = await asyncio.gather(*(node.get("66.7/same") for _ in range(20)))
    assert all(status == 200 for status, _ in answers)
    assert counts["66.7"] == 1


async def test_publishing_the_site_writes_only_when_it_differs(h: Hierarchy) -> None:
    registry = h.b.app[NODE].registry
    assert await registry.publish_site() == 0, "published when homed; unchanged since"
    registry.site = partial(site_value, "http://10.9.9.9:8000")
    assert await registry.publish_site() == 2, "both homed prefixes"
    assert await registry.publish_site() == 0
    status, doc = await h.b.get("0.NA/88.200")
    assert site_urls(_values(doc)) == ["http://10.9.9.9:8000"]


def test_idnode_serve_recurses_on_the_fast_path(
    db_url: str, tmp_path: Path, bad_upstream_process: str
) -> None:
    with served(
        db_url, tmp_path, IDNODE_RECURSION="true", IDNODE_UPSTREAMS=f"66.6={bad_upstream_process}"
    ) as (url, _):
        for _ in range(2):  # a miss through the pipeline, then a cached answer
            status, body = http_get(f"{url}/api/handles/66.6/fast")
            assert status == 200 and b'"handle":"66.6/fast"' in body
        status, body = http_get(f"{url}/api/handles/66.6/fast", {VIA_HEADER: "ab,cd,ef,01"})
        assert status == 200, "a cached answer is served whatever the chain"
        status, body = http_get(f"{url}/api/handles/66.6/other", {VIA_HEADER: "ab,cd,ef,01"})
        assert status == 500 and b"hops" in body


@pytest.fixture
def bad_upstream_process(tmp_path: Path) -> Iterator[str]:
    """A stand-in upstream in its own process (the test's event loop is not running)."""
    port = free_port()
    code = (
        "from aiohttp import web\n"
        "async def answer(r):\n"
        "    h = r.match_info['handle']\n"
        "    return web.json_response({'responseCode': 1, 'handle': h, 'values': []})\n"
        "app = web.Application()\n"
        "app.router.add_get('/api/handles/{handle:.*}', answer)\n"
        f"web.run_app(app, host='127.0.0.1', port={port}, print=None)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the stand-in upstream did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize(
    ("prefix", "status", "code", "words"),
    [
        ("66.1", 500, 2, "not JSON"),
        ("66.2", 503, 3, "did not answer within 0.3 s"),
        ("66.3", 500, 2, "66.3/someone-else"),
        ("66.4", 503, 3, "HTTP 503"),
        ("66.5", 500, 2, "invalid value"),
        ("66.8", 500, 2, "this node itself"),
    ],
)
async def test_misbehaving_upstreams_give_clear_errors(
    recursive: tuple[Node, FakeClock, dict[str, int]],
    prefix: str,
    status: int,
    code: int,
    words: str,
) -> None:
    node, _, _ = recursive
    started = time.monotonic()
    got, doc = await node.get(f"{prefix}/x")
    assert (got, doc["responseCode"], doc["handle"]) == (status, code, f"{prefix}/x"), doc
    assert words in doc["message"]
    assert time.monotonic() - started < 2, "bounded by the timeout and one retry"


async def test_circuit_opens_then_half_opens(
    recursive: tuple[Node, FakeClock, dict[str, int]],
) -> None:
    node, clock, counts = recursive
    for _ in range(3):  # two tries each: the fifth failure opens the circuit
        assert (await node.get("66.4/x"))[0] == 503
    asked = counts["66.4"]
    assert asked == 5
    status, doc = await node.get("66.4/x")
    assert status == 503 and "circuit open" in doc["message"]
    assert counts["66.4"] == asked, "an open circuit sends nothing"
    states = node.metrics.registry.get_sample_value
    node.metrics.flush()
    assert states("idnode_upstream_circuit_state", {"state": "open"}) == 1
    assert states("idnode_upstream_requests_total", {"result": "refused"}) == 1
    clock.now += 31
    assert (await node.get("66.6.9/x"))[0] == 200, "the same upstream: one half-open trial"
    node.metrics.flush()
    assert states("idnode_upstream_circuit_state", {"state": "closed"}) == 1


async def test_loop_between_two_recursive_nodes_is_refused(
    databases: Callable[[], Any], tmp_path: Path, key_dir: Path
) -> None:
    one, two = free_port(), free_port()
    settings: dict[str, Any] = {"recursion": True, "upstream_timeout": 5.0}
    async with (
        serving(
            await databases(),
            tmp_path / "1",
            key_dir,
            port=one,
            upstreams=f"66.9=http://127.0.0.1:{two}",
            **settings,
        ) as first,
        serving(
            await databases(),
            tmp_path / "2",
            key_dir,
            port=two,
            upstreams=f"66.9=http://127.0.0.1:{one}",
            **settings,
        ),
    ):
        started = time.monotonic()
        status, doc = await first.get("66.9/x")
        assert (status, doc["responseCode"]) == (500, 2), doc
        assert "came back" in doc["message"] or "came back" in str(doc)
        assert time.monotonic() - started < 2, "refused at once, not after timeouts"
        deep = ",".join(f"{n:x}" for n in range(MAX_HOPS))
        status, doc = await first.get("66.9/y", **{VIA_HEADER: deep})
        assert (status, doc["responseCode"]) == (500, 2) and "hops" in doc["message"]


async def test_without_recursion_a_foreign_prefix_answers_301(
    databases: Callable[[], Any], tmp_path: Path, key_dir: Path
) -> None:
    async with serving(await databases(), tmp_path, key_dir, root_url="http://127.0.0.1:9") as n:
        status, doc = await n.get("88.200.1/x")
        assert (status, doc["responseCode"]) == (400, 301)


# --- pieces -----------------------------------------------------------------------------------


ASKED = parse("88.200.1/abc")


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (200, b"\xff\xfe", UpstreamInvalid, "not JSON"),
        (200, b"[1, 2]", UpstreamInvalid, "without a responseCode"),
        (200, b'{"responseCode": "1"}', UpstreamInvalid, "without a responseCode"),
        (200, b'{"responseCode": 1, "values": []}', UpstreamInvalid, "asked for"),
        (200, b'{"responseCode": 1, "handle": "88.200.1/abc"}', UpstreamInvalid, "not an array"),
        (
            200,
            b'{"responseCode": 1, "handle": "88.200.1/ABC", "values": [7]}',
            UpstreamInvalid,
            "invalid value",
        ),
        (400, b'{"responseCode": 301, "handle": "88.200.1/abc"}', UpstreamInvalid, "301"),
        (500, b"oops", UpstreamUnavailable, "HTTP 500"),
        (429, b"", UpstreamUnavailable, "HTTP 429"),
        (500, b'{"responseCode": 2, "handle": "x"}', UpstreamUnavailable, "HTTP 500"),
        (
            500,
            b'{"responseCode": 2, "message": "internal server error"}',
            UpstreamUnavailable,
            "HTTP 500",
        ),
        (502, b'{"responseCode": 2, "message": "loop"}', UpstreamUnavailable, "HTTP 502"),
        (500, b'{"responseCode": 2, "message": "loop"}', UpstreamInvalid, "answered: loop"),
        (200, b'{"responseCode": 3, "handle": "x"}', UpstreamUnavailable, "responseCode 3"),
    ],
)
def test_garbage_answers_are_refused(
    status: int, body: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        interpret(ASKED, status, body)


def test_duplicate_indexes_are_refused() -> None:
    value = {"index": 1, "type": "URL", "data": "x", "timestamp": "2020-01-01T00:00:00Z"}
    body = {"responseCode": 1, "handle": ASKED.text, "values": [value, value]}
    import orjson

    with pytest.raises(UpstreamInvalid, match="two values"):
        interpret(ASKED, 200, orjson.dumps(body))


def test_answers_keep_only_public_values_and_their_ttl() -> None:
    import orjson

    public = {"index": 1, "type": "URL", "data": "x", "ttl": 120, "timestamp": "t"}
    private = {**public, "index": 2, "permissions": "1100", "ttl": 5}
    body = {"responseCode": 1, "handle": ASKED.text, "values": [public, private]}
    entry = interpret(ASKED, 200, orjson.dumps(body))
    assert entry.record is not None and [v.index for v in entry.record.values] == [1]
    assert entry.max_age == 120
    assert interpret(ASKED, 404, b'{"responseCode":100,"handle":"88.200.1/abc"}').record is None


def test_via_header_is_bounded_and_sanitised() -> None:
    assert parse_via("ab12, cd34") == ("ab12", "cd34")
    assert parse_via("<script>,ab") == ("?", "ab")
    assert len(parse_via(",".join("a" * 8 for _ in range(100)))) == MAX_HOPS + 1


def test_site_round_trip_and_unreadable_sites() -> None:
    site = advertised_site("http://10.0.0.5:8000")
    assert base_url(site) == "http://10.0.0.5:8000"
    by_name = advertised_site("https://node.example.org/idnode/")
    assert base_url(by_name) == "https://node.example.org/idnode"
    value = site_value("http://10.0.0.5:8000", "t")
    assert read_site(value) == site
    from dataclasses import replace

    assert read_site(replace(value, data={"servers": "nope"})) is None
    assert read_site(replace(value, format="base64", data="!!")) is None
    assert site_urls([replace(value, data=[])]) == []


def test_breaker_timeline() -> None:
    clock = FakeClock()
    breaker = Breaker(threshold=2, reset_after=30, clock=clock)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is State.CLOSED
    breaker.failure()
    assert breaker.state is State.OPEN and not breaker.allow()
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow() and not breaker.allow(), "one trial at a time"
    breaker.failure()
    assert breaker.state is State.OPEN
    clock.now += 30
    assert breaker.allow()
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.allow()


def test_loop_error_is_a_client_error_with_rc_2() -> None:
    exc = RecursionLoop(handle="x/y")
    assert (exc.response_code, exc.http_status) == (2, 500)
    assert encode(None).record is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"IDNODE_UPSTREAMS": "88.200"}, "IDNODE_UPSTREAMS: not a map of PREFIX=URL"),
        ({"IDNODE_UPSTREAMS": "88..1=http://x"}, "empty dotted segment"),
        ({"IDNODE_UPSTREAMS": "88=ftp://x"}, "http:// or https://"),
        ({"IDNODE_ROOT_URL": "root"}, "IDNODE_ROOT_URL: must be an http"),
        ({"IDNODE_ADVERTISE_URL": "http://h/?q=1"}, "IDNODE_ADVERTISE_URL"),
        ({"IDNODE_UPSTREAM_TIMEOUT": "0"}, "IDNODE_UPSTREAM_TIMEOUT"),
        ({"IDNODE_UPSTREAM_TTL_MIN": "100", "IDNODE_UPSTREAM_TTL_MAX": "10"}, "TTL_MIN"),
        ({"IDNODE_RECURSION": "maybe"}, "IDNODE_RECURSION"),
    ],
)
def test_bad_recursion_settings(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("?", r"\?")):
        Config.from_env(env)


def test_upstream_map_setting() -> None:
    config = Config.from_env({"IDNODE_UPSTREAMS": " 88.200=http://10.0.0.5:8000/ , 88.3=https://n"})
    assert config.upstream_map == {"88.200": "http://10.0.0.5:8000", "88.3": "https://n"}


def test_delegate_command(cli: Callable[..., Any], tenant_prefix: str) -> None:
    done = cli("prefix", "delegate", f"{tenant_prefix}.7", "http://10.0.0.9:8000")
    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout
    orphan = cli("prefix", "delegate", "99.1", "http://10.0.0.9:8000")
    assert orphan.returncode == 1 and "no prefix that 99.1 derives from" in orphan.stderr
    bad = cli("prefix", "delegate", f"{tenant_prefix}.8", "not-a-url")
    assert bad.returncode == 1 and "must be an http" in bad.stderr
    assert "Traceback" not in orphan.stderr + bad.stderr


@pytest.fixture
async def tenant_prefix(tenant: Callable[..., Any]) -> str:
    t = await tenant()
    return str(t.prefix)


async def test_a_trace_shows_foreign_identifiers_resolved_through_other_nodes(
    h: Hierarchy,
) -> None:
    """With recursion on, a trace shows a foreign node's public values (its own links are not
    walked); without it, the same node is a bare link (tests/test_trace.py)."""
    await put(h.b, h.b_admin, "88.200.1/battery-lot-7", "https://b.example/lot7")
    local = await home(h.a, "88.118.77")
    car = {
        "index": 1,
        "type": "URL",
        "data": "https://a.example/car",
        "references": [{"handle": "88.200.1/battery-lot-7"}, {"handle": "88.200.1/missing"}],
    }
    async with h.a.session.put(
        h.a.api("88.118.77/car"), json={"values": [car]}, headers=local.auth
    ) as r:
        assert r.status == 201, await r.text()
    async with h.a.session.get(f"{h.a.url}/api/trace/88.118.77/car") as r:
        assert r.status == 200
        doc = await r.json()
    nodes = {n["handle"]: n for n in doc["nodes"]}
    lot = nodes["88.200.1/battery-lot-7"]
    assert lot["status"] == "foreign"
    assert lot["values"][0]["data"]["value"] == "https://b.example/lot7"
    assert nodes["88.200.1/missing"]["status"] == "foreign"
    assert "values" not in nodes["88.200.1/missing"]  # not found over there: a bare link


DNS_ZONE = "id.example."


async def test_four_nodes_a_dns_resolver_in_front_of_the_recursive_node(
    h: Hierarchy, tmp_path: Path
) -> None:
    """unbound → A (DNS front-end, recursive) → the root (site) → B (homes 88.200.1): a DNS
    query for a handle B serves is answered, and a denial is cached by unbound."""
    dig, unbound = debian_tool("dig", "dnsutils"), debian_tool("unbound", "unbound")
    await put(h.b, h.b_admin, "88.200.1/engine-9", "https://b.example/engine-9")
    origin = dns.name.from_text(DNS_ZONE)
    name = to_name(parse("88.200.1/engine-9"), origin).to_text()
    absent = to_name(parse("88.200.1/absent"), origin).to_text()
    async with forwarding(unbound, tmp_path, DNS_ZONE, h.a_dns) as port:
        out = await first_answer(dig, port, name)
        assert '"URL=https://b.example/engine-9"' in out, out
        for _ in range(2):
            out = await run_dig(dig, port, absent, "TXT")
            assert "status: NXDOMAIN" in out and "SOA" in out, out
        h.a.metrics.flush()
        denials = {"transport": "udp", "qtype": "TXT", "rcode": "NXDOMAIN"}
        seen = h.a.metrics.registry.get_sample_value("idnode_dns_requests_total", denials)
        assert seen == 1, "the second denial came from unbound's cache"
        assert h.b.resolved("404") == 1, "A asked B once"
