"""The HTTP fast path: cached resolutions answered before aiohttp sees the request.

A plain aiohttp handler costs about 130 µs of Python per request; a cached
resolution needs a dictionary lookup and one ``write``. This protocol reads
each request head on a connection; when it is a bare ``GET``/``HEAD`` of
``/api/handles/{handle}`` (no query, no credentials, no body, HTTP/1.1) whose
answer is fresh in the cache, it writes the answer itself. At the first request
it cannot answer it hands the connection, with every byte not yet answered, to
aiohttp's own request handler, which serves the rest of the connection: errors,
misses, writes, pipelining after that point, and every edge of HTTP are then
aiohttp's, unchanged.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

from aiohttp.http import SERVER_SOFTWARE

from registry.errors import ClientError
from registry.handle import decode_path, parse
from resolver.cache import Cache
from resolver.metrics import Metrics
from resolver.pipeline import etag_matches, public_body

API_PATH = b"/api/handles/"
MAX_HEAD = 8190
KEEPALIVE_TIMEOUT = 3630.0
"""Seconds an idle keep-alive connection stays open (aiohttp's default)."""

_HEAD_END = b"\r\n\r\n"
_SLOW_HEADERS = frozenset(
    {b"authorization", b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"cookie"}
)


class _Date:
    """The ``Date`` header value, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


class FastPath:
    """What every fast connection of one process shares."""

    def __init__(self, cache: Cache, metrics: Metrics) -> None:
        self.cache = cache
        self.date = _Date()
        self.server = SERVER_SOFTWARE.encode()
        self.connections: weakref.WeakSet[FastProtocol] = weakref.WeakSet()
        self._ok = metrics.requests.labels("http-fast", "resolve", "200")
        self._not_modified = metrics.requests.labels("http-fast", "resolve", "304")
        self._duration = metrics.request_duration.labels("http-fast", "resolve")

    def answer(self, method: bytes, target: bytes, etags: bytes | None) -> bytes | None:
        """The whole response for a cacheable request, or None to let aiohttp answer."""
        started = time.perf_counter()
        try:
            text = decode_path(target[len(API_PATH) :].decode("ascii"))
            h = parse(text)
        except (ClientError, UnicodeDecodeError):
            return None
        entry = self.cache.fresh(h.key)
        if entry is None or entry.record is None:
            return None  # misses, and 404s, are aiohttp's (their answer is not precomputed)
        if entry.public == b"[]" and entry.record.values:
            return None
        common = (
            b"Content-Type: application/json\r\nETag: "
            + entry.etag.encode()
            + b"\r\nCache-Control: max-age="
            + str(entry.max_age).encode()
            + b"\r\nDate: "
            + self.date()
            + b"\r\nServer: "
            + self.server
            + b"\r\n"
        )
        if etags is not None and etag_matches(etags.decode("latin-1"), entry.etag):
            self._not_modified.inc()
            self._duration.observe(time.perf_counter() - started)
            return b"HTTP/1.1 304 Not Modified\r\n" + common + b"\r\n"
        body = public_body(text, entry)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + common
        self._ok.inc()
        self._duration.observe(time.perf_counter() - started)
        if method == b"HEAD":
            return head + b"\r\n"
        return head + b"\r\n" + body


def _parse_head(head: bytes) -> tuple[bytes, bytes, bytes | None, bool] | None:
    """(method, target, If-None-Match, close) for a request the fast path may answer."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
        return None
    target = parts[1]
    if not target.startswith(API_PATH) or b"?" in target or b"#" in target:
        return None
    etags = None
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            return None  # malformed or folded header: aiohttp decides what to answer
        lname = name.lower()
        if lname in _SLOW_HEADERS:
            return None
        if lname == b"if-none-match":
            etags = value.strip()
        elif lname == b"connection":
            tokens = value.lower()
            if b"upgrade" in tokens:
                return None
            close = b"close" in tokens
    return parts[0], target, etags, close


class FastProtocol(asyncio.Protocol):
    """One client connection, until it is handed to aiohttp."""

    def __init__(self, fast: FastPath, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self.fast = fast
        self.make_handler = make_handler
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.fast.connections.add(self)
        self._touch()

    def _touch(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        if self._idle is None:
            self._idle = loop.call_later(KEEPALIVE_TIMEOUT, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self.last_active
        if idle >= KEEPALIVE_TIMEOUT:
            self.transport.close()
        else:
            self._idle = loop.call_later(KEEPALIVE_TIMEOUT - idle, self._check_idle)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data if self.buffer else data
        self._touch()
        start = 0
        out: list[bytes] = []
        while True:
            end = buffer.find(_HEAD_END, start)
            if end < 0:
                if len(buffer) - start > MAX_HEAD:
                    break
                self.buffer = buffer[start:]
                if out:
                    self.transport.write(b"".join(out))
                return
            parsed = _parse_head(buffer[start:end]) if end - start <= MAX_HEAD else None
            if parsed is None:
                break
            method, target, etags, close = parsed
            response = self.fast.answer(method, target, etags)
            if response is None:
                break
            out.append(response)
            start = end + 4
            if close:
                self.transport.write(b"".join(out))
                self.transport.close()
                return
        if out:
            self.transport.write(b"".join(out))
        self._hand_off(buffer[start:])

    def _hand_off(self, pending: bytes) -> None:
        """Give the connection, and the bytes not yet answered, to aiohttp."""
        assert self.transport is not None
        transport, self.transport = self.transport, None
        self.buffer = b""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.fast.connections.discard(self)
        handler = self.make_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if pending:
            handler.data_received(pending)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
