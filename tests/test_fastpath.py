"""The HTTP fast path: cached answers before aiohttp, and every HTTP edge as aiohttp has it.

The node runs as ``idnode serve`` runs it (``serve_worker`` on a real socket);
the tests talk raw HTTP/1.1 over real sockets so that pipelining, split
segments and half-sent requests are exactly what goes over the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from resolver.config import Config
from resolver.server import serve_worker
from tests.conftest import Tenant, TenantFactory, free_port, node_config


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[int]:
    """One worker (fast path in front of aiohttp) serving ``config`` in this process."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve_worker(config, config.database_url or "", stop))
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", config.port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the LISTEN connection comes up: caching starts
    try:
        yield config.port
    finally:
        stop.set()
        await task


@pytest.fixture
async def port(db_url: str, tmp_path: Path, key_dir: Path) -> AsyncIterator[int]:
    config = node_config(
        key_dir, port=free_port(), data_dir=tmp_path, database_url=db_url, workers=1
    )
    async with serving(config) as bound:
        yield bound


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b"" if head_only or status == 304 else await reader.readexactly(length)
    return Response(status, headers, body)


def get(path: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(port: int, raw: bytes, count: int, head_only: bool = False) -> list[Response]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = [await read_response(reader, head_only) for _ in range(count)]
    writer.close()
    return out


async def fast_count(port: int) -> float:
    (r,) = await exchange(port, get("/metrics"), 1)
    for line in r.body.decode().splitlines():
        if line.startswith("idnode_http_requests_total{") and 'frontend="http-fast"' in line:
            if 'code="200"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def put_url(port: int, t: Tenant, path: str, url: str) -> int:
    """Write the record's URL value over a raw connection; answer the status."""
    body = f'[{{"index":1,"type":"URL","data":"{url}"}}]'.encode()
    raw = (
        f"PUT {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {t.auth['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    (r,) = await exchange(port, raw, 1)
    return r.status


async def registered(port: int, tenant: TenantFactory) -> tuple[Tenant, str]:
    t = await tenant()
    path = f"/api/handles/{t.handle('FAST')}"
    assert await put_url(port, t, path, "https://example.com/fast") == 201
    return t, path


async def test_fast_answers_are_the_aiohttp_answer(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    (miss,) = await exchange(port, get(path), 1)
    assert await fast_count(port) == 1, "a miss is resolved by the fast path too"
    (hit,) = await exchange(port, get(path), 1)
    assert await fast_count(port) == 2
    (slow,) = await exchange(port, get(path, "Cookie: a=b"), 1)  # a header that goes to aiohttp
    assert await fast_count(port) == 2
    assert miss.status == hit.status == slow.status == 200
    assert miss.body == hit.body == slow.body
    for name in ("content-type", "etag", "cache-control", "content-length", "server"):
        assert miss.headers[name] == hit.headers[name] == slow.headers[name], name
    # every answer has its own request id, fast or not
    ids = [r.headers["x-request-id"] for r in (miss, hit, slow)]
    assert len(set(ids)) == 3 and all(ids), ids
    (again,) = await exchange(port, get(path), 1)  # from the memo of ready answers
    assert again.body == hit.body and again.headers["x-request-id"] not in ids
    absent = f"/api/handles/{t.handle('absent')}"
    (fast_404,) = await exchange(port, get(absent), 1)
    (slow_404,) = await exchange(port, get(absent, "Cookie: a=b"), 1)
    assert fast_404.status == slow_404.status == 404
    assert fast_404.body == slow_404.body
    assert fast_404.headers["content-length"] == slow_404.headers["content-length"]
    unhomed = "/api/handles/99.404.5/x"
    (fast_301,) = await exchange(port, get(unhomed), 1)
    (slow_301,) = await exchange(port, get(unhomed, "Cookie: a=b"), 1)
    assert fast_301.status == slow_301.status == 400 and fast_301.body == slow_301.body


async def test_one_connection_stays_fast_across_misses(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    other = f"/api/handles/{t.handle('absent')}"
    answers = await exchange(port, get(path) + get(other) + get(path) + get(other), 4)
    assert [a.status for a in answers] == [200, 404, 200, 404]
    assert await fast_count(port) == 2, "every one of them answered before aiohttp"


async def test_head_and_conditional(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    (full,) = await exchange(port, get(path), 1)
    (head,) = await exchange(port, get(path, method="HEAD"), 1, head_only=True)
    assert head.status == 200 and head.headers["content-length"] == full.headers["content-length"]
    etag = full.headers["etag"]
    (cond,) = await exchange(port, get(path, f"If-None-Match: {etag}"), 1)
    assert cond.status == 304 and cond.headers["etag"] == etag
    (other,) = await exchange(port, get(path, 'If-None-Match: "nope"'), 1)
    assert other.status == 200 and other.body == full.body


async def test_pipelined_mix_keeps_order(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    await exchange(port, get(path), 1)  # cache it
    missing = f"/api/handles/{t.handle('absent')}"
    raw = get(path) + get(missing) + get(path) + get(path + "?type=URL") + get(path)
    answers = await exchange(port, raw, 5)
    assert [a.status for a in answers] == [200, 404, 200, 200, 200]
    assert b'"responseCode":100' in answers[1].body
    assert answers[0].body == answers[2].body == answers[4].body


async def test_request_split_across_segments(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    await exchange(port, get(path), 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = get(path) + get(path)
    for i in range(0, len(raw), 7):
        writer.write(raw[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    first, second = await read_response(reader), await read_response(reader)
    writer.close()
    assert first.status == second.status == 200 and first.body == second.body


async def test_http_edges_are_aiohttps(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    await exchange(port, get(path), 1)
    (post,) = await exchange(port, get(path, "Content-Length: 0", method="POST"), 1)
    assert post.status == 405 and b'"responseCode":4' in post.body
    (bad,) = await exchange(port, get("/api/handles/88.118.8/%ff%fe"), 1)
    assert bad.status == 400 and b'"responseCode":102' in bad.body
    (huge,) = await exchange(port, get(path, "X-Filler: " + "a" * 20000), 1)
    assert huge.status == 400 and b'"responseCode":4' in huge.body
    assert b"malformed HTTP request" in huge.body
    (lower,) = await exchange(port, get(path, method="get"), 1)
    assert lower.status == 400 and b'"responseCode":4' in lower.body
    both = get(path, "Content-Length: 1", "Transfer-Encoding: chunked", method="POST")
    (smuggle,) = await exchange(port, both, 1)
    assert smuggle.status == 400 and smuggle.headers["content-type"] == "application/json"
    (absolute,) = await exchange(port, get(f"http://test{path}"), 1)
    assert absolute.status == 200 and t.handle("FAST").encode() in absolute.body
    (auth,) = await exchange(port, get(path, "Authorization: Basic Zm9vOmJhcg=="), 1)
    assert auth.status == 401, "credentials are checked, never answered from the cache"


async def test_connection_close_and_abandoned_client(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    await exchange(port, get(path), 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get(path, "Connection: close"))
    r = await read_response(reader)
    assert r.status == 200
    assert await reader.read() == b"", "the server closes after Connection: close"
    writer.close()
    for _ in range(20):  # clients that vanish before reading their answers
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(get(path) * 50)
        w.transport.abort()
    (after,) = await exchange(port, get(path), 1)
    assert after.status == 200


async def test_no_stale_fast_answer_after_a_write(port: int, tenant: TenantFactory) -> None:
    t, path = await registered(port, tenant)
    for n in range(5):
        (before,) = await exchange(port, get(path), 1)
        assert await put_url(port, t, path, f"https://example.com/v{n}") == 200
        (after,) = await exchange(port, get(path), 1)
        assert f"https://example.com/v{n}".encode() in after.body
        assert after.headers["etag"] != before.headers["etag"]


async def test_slow_request_head_is_cut_off(db_url: str, tmp_path: Path, key_dir: Path) -> None:
    config = node_config(
        key_dir,
        port=free_port(),
        data_dir=tmp_path,
        database_url=db_url,
        workers=1,
        header_timeout=0.3,
    )
    async with serving(config) as bound:
        reader, writer = await asyncio.open_connection("127.0.0.1", bound)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"GET /api/handles/88.1/slow HTTP/1.1\r\nHost: x\r\n")  # never ends
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert loop.time() - started < 3
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert orjson.loads(body)["responseCode"] == 4
        writer.close()
        # a client that sends its head in pieces, in time, is served
        reader, writer = await asyncio.open_connection("127.0.0.1", bound)
        writer.write(b"GET /api/handles/88.1/slow HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        writer.write(b"Host: x\r\n\r\n")
        response = await asyncio.wait_for(read_response(reader), 5)
        assert response.status in (301, 400, 404)
        await asyncio.sleep(0.4)  # past the timeout: an idle keep-alive connection stays open
        writer.write(b"GET /api/handles/88.1/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await asyncio.wait_for(read_response(reader), 5)
        assert response.status in (301, 400, 404)
        writer.close()
