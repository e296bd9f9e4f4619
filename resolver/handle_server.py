"""The Handle protocol front-end (RFC 3652) on UDP and TCP, answering from the pipeline.

Every serving process listens on ``IDNODE_HANDLE_PORT`` (UDP and TCP, with
``SO_REUSEPORT`` so the workers share it, as they share the HTTP port) and answers
resolution (opcode 1) and get-site-info (opcode 2) from the same pipeline, and so
the same cache, as HTTP. Public values only. A lookup that is in the cache is
answered within the datagram's callback; a miss answers when its future resolves,
with no task per request.

What is not offered is answered, never dropped: other opcodes get responseCode 5,
compressed or encrypted envelopes and malformed messages 4, requests for signed or
encrypted answers 5, and more than ``IDNODE_HANDLE_MAX_INFLIGHT`` lookups at once 3.
A UDP answer longer than 512 bytes goes out as its header alone with the truncated
flag set, so the client asks again over TCP. Datagrams too short to hold an
envelope, and responses (which a server never answers), are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from lru import LRU

from registry import handle as handle_syntax
from registry import values as hv
from registry.errors import (
    ClientError,
    HandleNotFound,
    InternalError,
    InvalidHandle,
    ProtocolError,
    ServerTooBusy,
    ValuesNotFound,
)
from registry.site import Site
from resolver.cache import Cache, Entry
from resolver.config import Config
from resolver.handle_codec import (
    ENV_COMPRESSED,
    ENV_ENCRYPTED,
    ENVELOPE_SIZE,
    FLAG_AUTH,
    FLAG_CERT,
    FLAG_ENCR,
    FLAG_RRDG,
    HEADER_SIZE,
    MAX_MESSAGE,
    MAX_UDP,
    OC_GET_SITE_INFO,
    OC_RESOLUTION,
    RC_ERROR,
    RC_SUCCESS,
    Envelope,
    Header,
    OperationNotSupported,
    Request,
    decode_request,
    encode_value,
    error_body,
    pack_bytes,
    resolution_body,
    response,
    values_part,
)
from resolver.metrics import Metrics
from resolver.pipeline import Stage
from resolver.sites import node_site

log = logging.getLogger("idnode.handle")
Reply = Callable[[bytes], None]
SiteInfo = Callable[[], Site | None]
_ENCODED_ENTRIES = 10000
_MAX_UNREAD = 4 * 1024 * 1024
"""Answers a TCP client may leave unread before its connection is closed."""
"""Records whose wire-encoded values are kept, beside the pipeline's cache of their JSON."""


class _Encoded:
    """A cache entry's public values in wire form, made once per entry."""

    __slots__ = ("entry", "public", "wire", "all")
    # all: the count and every public value, what an unfiltered answer carries after the handle

    def __init__(self, entry: Entry) -> None:
        assert entry.record is not None
        self.entry = entry
        self.public = [v for v in entry.record.values if v.public_read]
        self.wire = {v.index: encode_value(v) for v in self.public}
        self.all = values_part(self.wire[v.index] for v in self.public)


class HandleFace:
    """Turns request messages into response messages; knows no sockets."""

    def __init__(
        self,
        pipeline: Stage,
        metrics: Metrics,
        *,
        site_info: SiteInfo,
        cache: Cache | None = None,
        max_inflight: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.cache = cache
        """The pipeline's cache, read directly for fresh entries, as the HTTP fast path does."""
        self.metrics = metrics
        self.site_info = site_info
        self.max_inflight = max_inflight
        self.clock = clock
        self.inflight = 0
        self._encoded: Any = LRU(_ENCODED_ENTRIES)
        self._handles: Any = LRU(_ENCODED_ENTRIES)
        """Parsed handles by their bytes: parsing is a good part of a cached answer's cost."""
        self._ok = {t: metrics.handle_requests.labels(t, "1", "1") for t in ("udp", "tcp")}
        self._duration = {t: metrics.handle_duration.labels(t) for t in ("udp", "tcp")}

    # --- entry point ---------------------------------------------------------------------------

    def answer(self, data: bytes, transport: str, reply: Reply, limit: int) -> None:
        """Answer one message through ``reply``, now or when its lookup completes."""
        started = time.perf_counter()
        try:
            request = decode_request(data)
        except ProtocolError as exc:
            self._malformed(data, exc, transport, reply)
            return
        if request.header.response_code != 0:  # a response: never answered (no loops)
            self._count(transport, request.header.opcode, "dropped", started)
            return
        try:
            self._dispatch(request, transport, reply, limit, started)
        except ClientError as exc:
            self._send_error(request, exc, transport, reply, limit, started)

    def _dispatch(
        self, request: Request, transport: str, reply: Reply, limit: int, started: float
    ) -> None:
        envelope, header = request.envelope, request.header
        if envelope.major != 2:
            raise ProtocolError(f"protocol version {envelope.major}.{envelope.minor} not spoken")
        if envelope.flags & ENV_COMPRESSED:
            raise ProtocolError("compressed messages are not supported")
        if envelope.flags & ENV_ENCRYPTED:
            raise ProtocolError("encrypted messages need a session, which this node does not offer")
        if header.flags & (FLAG_CERT | FLAG_ENCR):
            raise OperationNotSupported("signed or encrypted answers are not offered here")
        if header.opcode == OC_GET_SITE_INFO:
            site = self.site_info()
            if site is None:
                raise OperationNotSupported("this node has no site information to give")
            self._send(request, RC_SUCCESS, site.encode(), transport, reply, limit, started)
        elif header.opcode == OC_RESOLUTION:
            self._resolve(request, transport, reply, limit, started)
        else:
            raise OperationNotSupported(
                f"opcode {header.opcode} is not offered over the Handle protocol here"
                " (resolution and get-site-info are; the rest is the HTTP API's)"
            )

    # --- resolution ----------------------------------------------------------------------------

    def _resolve(
        self, request: Request, transport: str, reply: Reply, limit: int, started: float
    ) -> None:
        h = self._handles.get(request.handle)
        if h is None:
            try:
                text = request.handle.decode()
            except UnicodeDecodeError:
                raise InvalidHandle("handle is not UTF-8") from None
            h = self._handles[request.handle] = handle_syntax.parse(text)
        authoritative = bool(request.header.flags & FLAG_AUTH)
        if self.cache is not None and not authoritative:
            entry = self.cache.fresh(h.key)
            if entry is not None:
                body = self._values_body(request, h, entry)
                self._send(request, RC_SUCCESS, body, transport, reply, limit, started)
                return
        if self.inflight >= self.max_inflight:
            raise ServerTooBusy("too many requests in flight; try again later")
        future = self.pipeline.lookup(h, authoritative=authoritative)
        finish = partial(self._resolved, request, h, transport, reply, limit, started)
        if future.done():
            finish(future)
            return
        self.inflight += 1
        future.add_done_callback(finish)
        future.add_done_callback(self._landed)

    def _landed(self, future: asyncio.Future[Entry]) -> None:
        self.inflight -= 1

    def _resolved(
        self,
        request: Request,
        h: handle_syntax.Handle,
        transport: str,
        reply: Reply,
        limit: int,
        started: float,
        future: asyncio.Future[Entry],
    ) -> None:
        try:
            if future.cancelled():
                raise ServerTooBusy("lookup cancelled")
            failure = future.exception()
            if failure is not None:
                raise failure
            body = self._values_body(request, h, future.result())
        except ClientError as exc:
            self._send_error(request, exc, transport, reply, limit, started)
        except Exception as exc:
            if not isinstance(exc, InternalError):
                log.exception("Handle protocol: resolution of %s failed", h.text)
            self._send(
                request, RC_ERROR, error_body("internal error"), transport, reply, limit, started
            )
        else:
            self._send(request, RC_SUCCESS, body, transport, reply, limit, started)

    def _values_body(self, request: Request, h: handle_syntax.Handle, entry: Entry) -> bytes:
        if entry.record is None:
            raise HandleNotFound(handle=h.text)
        encoded: _Encoded | None = self._encoded.get(h.key)
        if encoded is None or encoded.entry is not entry:
            encoded = self._encoded[h.key] = _Encoded(entry)
        if not request.indexes and not request.types:
            if not encoded.public and entry.record.values:
                raise ValuesNotFound(handle=h.text)
            return pack_bytes(request.handle) + encoded.all
        chosen = hv.filter_values(encoded.public, request.indexes, request.types)
        if not chosen:
            raise ValuesNotFound(handle=h.text)
        return resolution_body(request.handle, (encoded.wire[v.index] for v in chosen))

    # --- answering -----------------------------------------------------------------------------

    def _send(
        self,
        request: Request,
        code: int,
        body: bytes,
        transport: str,
        reply: Reply,
        limit: int,
        started: float,
    ) -> None:
        site = self.site_info()
        serial = site.serial_number if site is not None else 0xFFFF
        now = int(self.clock())
        message = response(request, code, body, now=now, serial=serial)
        if len(message) > limit:
            message = response(request, code, now=now, serial=serial, truncated=True)
        reply(message)
        if code == RC_SUCCESS and request.header.opcode == OC_RESOLUTION:
            self._ok[transport].inc()
            self._duration[transport].observe(time.perf_counter() - started)
        else:
            self._count(transport, request.header.opcode, str(code), started)

    def _send_error(
        self,
        request: Request,
        exc: ClientError,
        transport: str,
        reply: Reply,
        limit: int,
        started: float,
    ) -> None:
        body = error_body(exc.message)
        self._send(request, exc.response_code, body, transport, reply, limit, started)

    def _malformed(self, data: bytes, exc: ProtocolError, transport: str, reply: Reply) -> None:
        """Answer a message that does not decode, if its envelope says whom to answer."""
        started = time.perf_counter()
        try:
            envelope = Envelope.decode(data)
        except ProtocolError:
            self._count(transport, 0, "dropped", started)
            return
        header = Header(0)
        if len(data) >= ENVELOPE_SIZE + HEADER_SIZE:
            header = Header.decode(data)
            if header.response_code != 0:
                self._count(transport, header.opcode, "dropped", started)
                return
        header = Header(header.opcode, flags=header.flags & ~FLAG_RRDG)  # no digest of garbage
        request = Request(envelope, header, b"")
        self._send_error(request, exc, transport, reply, MAX_UDP, started)

    def _count(self, transport: str, opcode: int, result: str, started: float) -> None:
        label = str(opcode) if opcode in (OC_RESOLUTION, OC_GET_SITE_INFO) else "other"
        self.metrics.handle_requests.labels(transport, label, result).inc()
        self._duration[transport].observe(time.perf_counter() - started)


# --- transports ----------------------------------------------------------------------------------


class _Datagrams(asyncio.DatagramProtocol):
    """One datagram, one message; the answer goes back to where it came from."""

    def __init__(self, face: HandleFace) -> None:
        self.face = face
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.face.answer(data, "udp", partial(self._send, addr), MAX_UDP)

    def _send(self, addr: Any, message: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(message, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("Handle protocol over UDP: %s", exc)


class _Stream(asyncio.Protocol):
    """Messages one after another on a connection; closed after ``idle`` quiet seconds."""

    def __init__(self, face: HandleFace, idle: float) -> None:
        self.face = face
        self.idle = idle
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._rearm()

    def _rearm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        self.timer = loop.call_later(self.idle, self.transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._rearm()
        while len(self.buffer) >= ENVELOPE_SIZE:
            length = int.from_bytes(self.buffer[16:20], "big")
            if length > MAX_MESSAGE:
                message = bytes(self.buffer[: ENVELOPE_SIZE + HEADER_SIZE])
                self.buffer.clear()
                self.face.answer(message, "tcp", self._send, MAX_MESSAGE)  # answers the error
                self._close()
                return
            end = ENVELOPE_SIZE + length
            if len(self.buffer) < end:
                return
            message = bytes(self.buffer[:end])
            del self.buffer[:end]
            self.face.answer(message, "tcp", self._send, MAX_MESSAGE)

    def _send(self, message: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > _MAX_UNREAD:
            log.info("Handle protocol over TCP: client reads no answers; connection closed")
            transport.abort()
            return
        transport.write(message)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class Listeners:
    """The UDP and TCP listeners of one process."""

    def __init__(self, face: HandleFace, closers: list[Any]) -> None:
        self.face = face
        self.closers = closers

    async def stop(self) -> None:
        for closer in self.closers:
            closer.close()
        for closer in self.closers:
            if isinstance(closer, asyncio.Server):
                await closer.wait_closed()


def _sockets(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    for sock in (udp, tcp):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
    try:
        udp.bind((host, port))
        tcp.bind((host, port))
        tcp.listen(1024)
    except OSError:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


async def start(
    config: Config,
    pipeline: Stage,
    metrics: Metrics,
    cache: Cache | None = None,
    site_info: SiteInfo | None = None,
) -> Listeners | None:
    """Listen for the Handle protocol as configured; None when it is off or cannot bind
    (logged: the HTTP face serves on)."""
    if not config.handle_port:
        return None
    host = config.handle_host or config.host
    face = HandleFace(
        pipeline,
        metrics,
        site_info=site_info or partial(lambda site: site, node_site(config)),
        cache=cache,
        max_inflight=config.handle_max_inflight,
    )
    try:
        udp, tcp = _sockets(host, config.handle_port)
    except OSError as exc:
        log.error("Handle protocol: cannot listen on %s:%d (%s)", host, config.handle_port, exc)
        return None
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(face), sock=udp)
    server = await loop.create_server(lambda: _Stream(face, config.handle_idle_timeout), sock=tcp)
    log.info("Handle protocol on %s:%d (UDP and TCP)", host, config.handle_port)
    return Listeners(face, [transport, server])
