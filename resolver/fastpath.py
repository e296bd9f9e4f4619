"""The HTTP fast path: plain resolutions answered before aiohttp sees the request.

A plain aiohttp handler costs about 130 µs of Python per request; a cached
resolution needs a dictionary lookup and one ``write``. This protocol reads each
request head on a connection. A bare ``GET``/``HEAD`` of ``/api/handles/{handle}``
(HTTP/1.1, no query string, no credentials, no body) is answered here: from the
cache when the answer is fresh, otherwise through the same resolution pipeline
the API uses (single-flight, coalesced PostgreSQL lookups), one request at a
time per connection so pipelined answers keep their order. The bytes are the
ones aiohttp would send: the same status, headers and JSON body.

At the first request it does not answer (any other path, method or header that
matters, a malformed head, an unexpected failure) it hands the connection and
every byte not yet answered to aiohttp's own request handler, which serves the
rest of the connection unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable
from email.utils import formatdate
from functools import partial
from typing import NamedTuple, cast

from aiohttp.http import SERVER_SOFTWARE

from registry.errors import ClientError, RequestTimeout
from registry.handle import Handle, decode_path, parse
from resolver.api import Startup, error_document
from resolver.cache import Cache, Entry
from resolver.limits import Limits
from resolver.metrics import Metrics
from resolver.pipeline import Stage, etag_matches, public_body, unanswerable

log = logging.getLogger("idnode.fastpath")
API_PATH = b"/api/handles/"
MAX_HEAD = 8190
MAX_PENDING = 1 << 16
"""Bytes buffered behind a request being resolved before reading pauses."""
KEEPALIVE_TIMEOUT = 3630.0
"""Seconds an idle keep-alive connection stays open (aiohttp's default)."""
_MEMO_LIMIT = 4096
"""Ready-made answers kept for the hottest targets, rebuilt every second (Date)."""

_HEAD_END = b"\r\n\r\n"
_SLOW_HEADERS = frozenset(
    {b"authorization", b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"cookie"}
    | {b"x-idnode-via"}  # another node recursing: aiohttp's path runs the loop guard
)
_REASONS = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found"}


Parts = tuple[bytes, bytes]
"""A response cut where its ``X-Request-Id`` value goes."""


class Request(NamedTuple):
    head: bytes
    """The request's bytes, kept to hand it to aiohttp if need be."""
    method: bytes
    target: bytes
    etags: bytes | None
    close: bool


def parse_head(head: bytes) -> Request | None:
    """The request, when the fast path may answer it."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
        return None
    target = parts[1]
    if not target.startswith(API_PATH) or b"?" in target or b"#" in target:
        return None
    if target.endswith(b"/history"):
        return None  # a history request, or a record named so: aiohttp tells them apart
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
    return Request(head + _HEAD_END, parts[0], target, etags, close)


class FastPath:
    """What every fast connection of one process shares."""

    def __init__(
        self,
        cache: Cache,
        pipeline: Stage,
        metrics: Metrics,
        limits: Limits | None = None,
        header_timeout: float = 10.0,
        startup: Startup | None = None,
    ) -> None:
        self.startup = startup or Startup(done=True)
        """Until the node is up, aiohttp answers everything (503s that say why)."""
        self.header_timeout = header_timeout
        """Seconds a client may take to send a request head once it started one."""
        self.cache = cache
        self.pipeline = pipeline
        self.metrics = metrics
        self.limits = limits
        self.server = SERVER_SOFTWARE.encode()
        self.connections: weakref.WeakSet[FastProtocol] = weakref.WeakSet()
        self._second = 0
        self._date = b""
        self._memo: dict[bytes, tuple[str, Entry, int, Parts]] = {}
        self._id_prefix = os.urandom(4).hex().encode() + b"-"
        """Request ids of fast answers: a per-process prefix and a counter (cheap, unique)."""
        self._served = 0
        self._count_200 = metrics.requests.labels("http-fast", "resolve", "200")
        self._duration = metrics.request_duration.labels("http-fast", "resolve")

    def _now(self) -> int:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = formatdate(now, usegmt=True).encode()
        return now

    def _response(self, status: int, body: bytes, extra: bytes, method: bytes) -> Parts:
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: application/json\r\n%s"
            b"Date: %s\r\nServer: %s\r\nX-Request-Id: "
            % (status, _REASONS.get(status, b"Error"), len(body), extra, self._date, self.server)
        )
        return head, b"\r\n\r\n" if method == b"HEAD" else b"\r\n\r\n" + body

    def _stamped(self, parts: Parts) -> bytes:
        """The response bytes with this request's own ``X-Request-Id``."""
        self._served += 1
        return parts[0] + b"%s%x" % (self._id_prefix, self._served) + parts[1]

    def _answer(self, req: Request, text: str, entry: Entry) -> Parts:
        """The response to a plain resolution of ``text`` given its entry."""
        error = unanswerable(entry, text)
        if error is not None:
            return self._error(req, error)
        extra = b"ETag: %s\r\nCache-Control: max-age=%d\r\n" % (entry.etag.encode(), entry.max_age)
        if req.etags is not None and etag_matches(req.etags.decode("latin-1"), entry.etag):
            self._count(304)
            head = b"HTTP/1.1 304 Not Modified\r\n%sDate: %s\r\nServer: %s\r\nX-Request-Id: "
            return head % (extra, self._date, self.server), b"\r\n\r\n"
        self._count(200)
        return self._response(200, public_body(text, entry), extra, req.method)

    def _error(self, req: Request, exc: ClientError) -> Parts:
        status, body = error_document(exc, exc.handle or "", write=False)
        self._count(status)
        return self._response(status, body, b"", req.method)

    def _count(self, status: int) -> None:
        if status == 200:
            self._count_200.inc()
        else:
            self.metrics.requests.labels("http-fast", "resolve", str(status)).inc()

    def answer_cached(self, req: Request) -> bytes | Handle | None:
        """The response if the cache holds a fresh answer; else the handle to resolve.

        None when aiohttp must answer (the target is not a handle it can parse here).
        """
        if not self.startup.done:
            return None
        started = time.perf_counter()
        now = self._now()
        memo = self._memo.get(req.target)
        if memo is not None and req.etags is None and req.method == b"GET":
            key, memo_entry, second, ready = memo
            if second == now and self.cache.fresh(key) is memo_entry:
                self._count_200.inc()
                self._duration.observe(time.perf_counter() - started)
                return self._stamped(ready)
        try:
            text = decode_path(req.target[len(API_PATH) :].decode("ascii"))
            h = parse(text)
        except (ClientError, UnicodeDecodeError):
            return None  # aiohttp gives the error answer
        entry = self.cache.fresh(h.key)
        if entry is None:
            return h
        response = self._answer(req, text, entry)
        if entry.record is not None and req.etags is None and req.method == b"GET":
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[req.target] = (h.key, entry, now, response)
        self._duration.observe(time.perf_counter() - started)
        return self._stamped(response)

    def answer_resolved(
        self, req: Request, h: Handle, resolved: asyncio.Future[Entry], started: float
    ) -> bytes | None:
        """The response once the pipeline answered; None to let aiohttp answer."""
        exc = resolved.exception() if not resolved.cancelled() else None
        if resolved.cancelled() or (exc is not None and not isinstance(exc, ClientError)):
            return None  # aiohttp repeats the work and answers (and logs) the failure
        self._now()
        if isinstance(exc, ClientError):
            return self._stamped(self._error(req, exc))
        response = self._answer(req, h.text, resolved.result())
        self._duration.observe(time.perf_counter() - started)
        return self._stamped(response)


class FastProtocol(asyncio.Protocol):
    """One client connection, until it is handed to aiohttp."""

    def __init__(self, fast: FastPath, make_handler: Callable[[], asyncio.Protocol]) -> None:
        self.fast = fast
        self.make_handler = make_handler
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False
        self.paused = False
        self.last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
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
        if idle >= KEEPALIVE_TIMEOUT and not self.busy:
            self.transport.close()
        else:
            self._idle = loop.call_later(max(1.0, KEEPALIVE_TIMEOUT - idle), self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        self._touch()
        if self.busy:
            if len(self.buffer) > MAX_PENDING and self.transport is not None:
                self.transport.pause_reading()
                self.paused = True
            return
        self._process()

    def _process(self) -> None:
        """Answer the complete requests in the buffer, in order."""
        transport = self.transport
        if transport is None:
            return
        buffer, start = self.buffer, 0
        limits = self.fast.limits
        out: list[bytes] = []
        while True:
            end = buffer.find(_HEAD_END, start)
            if end < 0:
                if len(buffer) - start > MAX_HEAD:
                    break
                self.buffer = buffer[start:]
                if out:
                    transport.write(b"".join(out))
                self._watch_head()
                return
            req = parse_head(buffer[start:end]) if end - start <= MAX_HEAD else None
            if req is None or (limits is not None and limits.check_read(self.peer) > 0):
                break  # aiohttp answers (a refused read: 429 with Retry-After)
            answer = self.fast.answer_cached(req)
            if answer is None:
                break
            start = end + 4
            if isinstance(answer, Handle):
                if out:
                    transport.write(b"".join(out))
                self.buffer = buffer[start:]
                self.busy = True
                resolved = self.fast.pipeline.lookup(answer)
                resolved.add_done_callback(
                    partial(self._resolved, req, answer, time.perf_counter())
                )
                return
            out.append(answer)
            if req.close:
                transport.write(b"".join(out))
                transport.close()
                return
        if out:
            transport.write(b"".join(out))
        self._hand_off(buffer[start:])

    def _watch_head(self) -> None:
        """A partial request head must complete within the header timeout (slow clients)."""
        if not self.buffer:
            self._cancel_head_timer()
        elif self._head_timer is None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.fast.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_timers(self) -> None:
        """The connection is no longer this protocol's: its idle and head timers end."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._cancel_head_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self.busy:
            return
        self.fast.metrics.rejections.labels("RequestTimeout").inc()
        status, body = error_document(
            RequestTimeout("the request head did not arrive in time"), "", write=False
        )
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: %d\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def _resolved(
        self, req: Request, h: Handle, started: float, resolved: asyncio.Future[Entry]
    ) -> None:
        response = self.fast.answer_resolved(req, h, resolved, started)
        self.busy = False
        if self.transport is None:
            return
        if response is None:
            self._hand_off(req.head + self.buffer)
            return
        self.transport.write(response)
        if req.close:
            self.transport.close()
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._process()

    def _hand_off(self, pending: bytes) -> None:
        """Give the connection, and the bytes not yet answered, to aiohttp."""
        if self.transport is None:
            return
        transport, self.transport = self.transport, None
        self.buffer = b""
        self._stop_timers()
        self.fast.connections.discard(self)
        handler = self.make_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:
            transport.resume_reading()
        if pending:
            handler.data_received(pending)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_timers()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
