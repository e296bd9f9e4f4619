"""The DNS front-end: UDP and TCP servers answering the node's zone (``resolver.dns_answers``).

Started in each serving process when ``IDNODE_DNS_PORT`` is set; every process
binds the port with ``SO_REUSEPORT`` and the kernel spreads queries over them.

Queries are parsed and answers rendered with dnspython. A rendered answer that
came from a cache entry is kept (keyed by the query's bytes, names folded to
lower case, without its id), and a repeated UDP query whose entry is still the
cache's fresh one is answered by splicing its id and question into those bytes,
with no parsing: the DNS counterpart of the HTTP fast path. A write drops the
cache entry, which makes the kept bytes unusable at once.

Truncated or garbage datagrams never crash anything: a datagram too short for a
DNS header, or that claims to be a response, is dropped; one that dnspython
cannot parse gets FORMERR when its header is intact. Over UDP, answers larger
than the client's EDNS payload size (512 without EDNS, at most 1232) are
truncated with TC set, and the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from lru import LRU

from resolver import api
from resolver.cache import Cache
from resolver.dns_answers import MAX_UDP_PAYLOAD, Answer, Zone
from resolver.metrics import Metrics

log = logging.getLogger("idnode.dns")
TCP_IDLE_SECONDS = 10.0
"""A TCP connection with no complete query for this long is closed (RFC 7766 suggests
seconds)."""
MAX_PENDING = 10_000
"""Queries awaiting the database in one process; more are dropped (the client retries)."""
RENDERED_ENTRIES = 100_000
_SHORT_OPT = 11
"""Size of an OPT record without options: queries with options (cookies) are not kept."""
QTYPES = frozenset(
    "A AAAA ANY CNAME MX NS NAPTR PTR SOA SRV TXT URI HTTPS SVCB DS DNSKEY AXFR IXFR CAA".split()
)
"""Query types counted under their name in metrics; others count as ``other``."""
Kept = tuple[str | None, object, bytes, bytes, str, str]
"""(cache key or None for fixed answers, entry, header after the id, bytes after the
question, qtype label, rcode label)."""


def qtype_label(rdtype: dns.rdatatype.RdataType) -> str:
    text = dns.rdatatype.to_text(rdtype)
    return text if text in QTYPES else "other"


def _question_end(data: bytes) -> int:
    """Offset just after the single question of an uncompressed query, or -1."""
    i, n = 12, len(data)
    while i < n:
        length = data[i]
        if length == 0:
            return i + 5 if i + 5 <= n else -1
        if length > 63:
            return -1
        i += length + 1
    return -1


class DnsFront:
    """Answers DNS messages for one process; counts them for the metrics."""

    def __init__(self, zone: Zone, cache: Cache | None, metrics: Metrics) -> None:
        self.zone = zone
        self.cache = cache
        self.metrics = metrics
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._kept: LRU[bytes, Kept] = LRU(RENDERED_ENTRIES)
        self._pending: set[asyncio.Task[None]] = set()
        self._durations = {t: metrics.dns_duration.labels(t) for t in ("udp", "tcp")}
        self.transports: list[asyncio.BaseTransport] = []
        self.servers: list[asyncio.AbstractServer] = []
        metrics.flush_hooks.append(self.flush)

    def flush(self) -> None:
        """Move the request counts into the Prometheus counter."""
        counts, self.counts = self.counts, Counter()
        for (transport, qtype, rcode), n in counts.items():
            self.metrics.dns_requests.labels(transport, qtype, rcode).inc(n)

    # -- the kept answers ------------------------------------------------------------

    def fast(self, data: bytes) -> bytes | None:
        """The answer to a UDP query from kept bytes, if it may be given without parsing."""
        if len(data) < 12 or data[2] & 0xF8 or data[4:12] not in _PLAIN_COUNTS:
            return None
        end = _question_end(data)
        if end < 0:
            return None
        kept = self._kept.get(data[2:12] + data[12:end].lower() + data[end:])
        if kept is None:
            return None
        key, entry, header, rest, qtype, rcode = kept
        if key is not None and (self.cache is None or self.cache.fresh(key) is not entry):
            return None
        self.counts["udp", qtype, rcode] += 1
        return data[:2] + header + data[12:end] + rest

    def _keep(self, data: bytes, answer: Answer, wire: bytes, qtype: str, rcode: str) -> None:
        if answer.entry is None and not answer.fixed:
            return
        end = _question_end(data)
        if end < 0 or len(data) - end > _SHORT_OPT or wire[2] & (dns.flags.TC >> 8):
            return
        key = data[2:12] + data[12:end].lower() + data[end:]
        self._kept[key] = (answer.key, answer.entry, wire[2:12], wire[end:], qtype, rcode)

    # -- parsing, answering, rendering -----------------------------------------------

    def answer(self, data: bytes, transport: str, send: Callable[[bytes], None]) -> None:
        """Answer one message: at once when it can be, else when its lookup completes."""
        started = time.perf_counter()
        if transport == "udp":
            fast = self.fast(data)
            if fast is not None:
                send(fast)
                self._durations["udp"].observe(time.perf_counter() - started)
                return
        query = self._parse(data, transport, send)
        if query is None or len(self._pending) >= MAX_PENDING:
            return
        task = asyncio.get_running_loop().create_task(
            self._respond(query, data, transport, send, started)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _parse(
        self, data: bytes, transport: str, send: Callable[[bytes], None]
    ) -> dns.message.Message | None:
        if len(data) < 12 or data[2] & 0x80:  # no header, or a response: never answer
            self.counts[transport, "none", "dropped"] += 1
            return None
        if data[2] & 0x78:  # an opcode other than QUERY (0)
            self._refuse(data, dns.rcode.NOTIMP, transport, send)
            return None
        try:
            query = dns.message.from_wire(data, one_rr_per_rrset=True)
        except Exception as exc:  # noqa: BLE001 — any parse failure of untrusted bytes
            log.debug("unparsable DNS message over %s: %s", transport, exc)
            self._refuse(data, dns.rcode.FORMERR, transport, send)
            return None
        if len(query.question) != 1:
            self._refuse(data, dns.rcode.FORMERR, transport, send)
            return None
        return query

    def _refuse(
        self, data: bytes, rcode: dns.rcode.Rcode, transport: str, send: Callable[[bytes], None]
    ) -> None:
        """Answer with a bare header: the query's id and opcode, QR, and ``rcode``."""
        flags = 0x8000 | (int.from_bytes(data[2:4]) & 0x7900) | rcode
        send(data[:2] + flags.to_bytes(2) + bytes(8))
        self.counts[transport, "none", dns.rcode.to_text(rcode)] += 1

    async def _respond(
        self,
        query: dns.message.Message,
        data: bytes,
        transport: str,
        send: Callable[[bytes], None],
        started: float,
    ) -> None:
        try:
            answer = await self.zone.answer(query)
            response = answer.message
            limit = 65535 if transport == "tcp" else _udp_limit(query)
            wire = response.to_wire(max_size=limit, prefer_truncation=True)
        except Exception:
            log.exception("DNS answer over %s failed", transport)
            self._refuse(data, dns.rcode.SERVFAIL, transport, send)
            return
        qtype, rcode = qtype_label(query.question[0].rdtype), dns.rcode.to_text(response.rcode())
        if transport == "udp":
            self._keep(data, answer, wire, qtype, rcode)
        send(wire)
        self.counts[transport, qtype, rcode] += 1
        self._durations[transport].observe(time.perf_counter() - started)

    # -- servers -----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(host, port), reuse_port=True
        )
        self.transports.append(transport)
        server = await loop.create_server(lambda: _Tcp(self), host, port, reuse_port=True)
        self.servers.append(server)
        log.info("DNS front-end for %s on %s port %d (UDP, TCP)", self.zone.origin, host, port)

    async def stop(self) -> None:
        for transport in self.transports:
            transport.close()
        for server in self.servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for task in list(self._pending):
            task.cancel()
        if self.flush in self.metrics.flush_hooks:
            self.metrics.flush_hooks.remove(self.flush)
        self.flush()


_PLAIN_COUNTS = frozenset({bytes([0, 1, 0, 0, 0, 0, 0, n]) for n in (0, 1)})
"""Header counts of a plain query: one question, no answers, at most an OPT record."""


def _udp_limit(query: dns.message.Message) -> int:
    if query.edns < 0:
        return 512
    return min(max(query.payload, 512), MAX_UDP_PAYLOAD)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, front: DnsFront) -> None:
        self.front = front
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # Python 3.11's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        transport = self.transport
        if transport is None:
            return

        def send(wire: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(wire, addr)

        self.front.answer(data, "udp", send)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP socket error: %s", exc)


class _Tcp(asyncio.Protocol):
    """Length-prefixed messages (RFC 1035 4.2.2, RFC 7766): several per connection,
    answered as their lookups complete."""

    def __init__(self, front: DnsFront) -> None:
        self.front = front
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        transport = self.transport
        if transport is not None:
            self.idle = asyncio.get_running_loop().call_later(TCP_IDLE_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            length = int.from_bytes(self.buffer[:2])
            if len(self.buffer) < 2 + length:
                return
            message, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            self._touch()
            self.front.answer(message, "tcp", self._send)

    def _send(self, wire: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(wire).to_bytes(2) + wire)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None


async def serve(node: api.Node) -> DnsFront | None:
    """The node's DNS front-end, serving when ``IDNODE_DNS_PORT`` is set; else None."""
    config = node.config
    if not config.dns_port:
        return None
    origin = dns.name.from_text(config.dns_zone)
    nameserver = dns.name.from_text(config.dns_nameserver or f"ns.{config.dns_zone}")
    zone = Zone(origin, nameserver, config.cache_negative_ttl, node.pipeline)
    front = DnsFront(zone, node.cache, node.metrics)
    await front.start(config.dns_host or config.host, config.dns_port)
    return front
