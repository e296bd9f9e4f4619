"""DNS answers for the node's zone, built with dnspython from resolution entries.

``Zone.answer`` turns one parsed query into one response message; it is the
whole of the DNS front-end's logic, apart from transports and the cache of
rendered answers (``resolver.dns_front``):

- outside the zone, or not class IN: REFUSED;
- the apex: SOA and NS (ANY gets the SOA, as RFC 8482 allows);
- a handle's name: TXT (one string ``type=value`` per public value), URI
  (RFC 7553, one per public URL value, priority its index, weight 1) and NAPTR
  (flags ``u``, one per public URL value, order its index, service
  ``E2U+web:<scheme>`` for http and https else ``E2U+<scheme>``, regexp
  ``!^.*$!<url>!``); ANY gets the TXT set (RFC 8482); other types, or a record
  without such values, get NODATA;
- a handle that does not exist, or a name that is no handle's: NXDOMAIN; an
  ancestor of handle names (``8.118.88.<zone>``): NODATA; both with the zone's SOA
  in the authority section, whose minimum is ``IDNODE_CACHE_NEGATIVE_TTL``, so
  resolvers cache the denial as long as the node itself does;
- a prefix this node does not home: REFUSED (the node is not authoritative for
  it, and a resolver may ask another server); the database unreachable: SERVFAIL.

TTLs are the records': the smallest TTL of the values in a set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.ANY.URI
import dns.rdtypes.IN.NAPTR
import dns.rrset
import orjson

from registry.errors import ClientError, NotResponsible
from registry.handle import Handle, fold
from registry.values import Value
from resolver import dns_names
from resolver.cache import Entry
from resolver.pipeline import Stage, resolve

log = logging.getLogger("idnode.dns")
IN = dns.rdataclass.IN
APEX_TTL = 3600
"""TTL of the zone's SOA and NS records."""
MAX_UINT16 = 65535
MAX_TTL = 2**31 - 1
TXT_STRING = 255
TXT_MAX = TXT_STRING * TXT_STRING
"""Longest text of one TXT record (255 strings of 255 bytes); longer values are cut."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A response and what it was made from: ``entry`` for a handle's answer, ``fixed``
    when it depends on nothing that changes (apex, names that are no handle's)."""

    message: dns.message.Message
    key: str | None = None
    entry: Entry | None = None
    fixed: bool = False


class Zone:
    """The node's zone and how each name in it is answered."""

    def __init__(
        self,
        origin: dns.name.Name,
        nameserver: dns.name.Name,
        negative_ttl: int,
        pipeline: Stage,
    ) -> None:
        self.origin = origin
        self.pipeline = pipeline
        self.negative_ttl = negative_ttl
        soa = dns.rdtypes.ANY.SOA.SOA(
            IN,
            dns.rdatatype.SOA,
            nameserver,
            dns.name.Name([b"hostmaster"]).concatenate(origin),
            1,  # no zone transfers: the serial means nothing
            3600,
            600,
            604800,
            negative_ttl,
        )  # type: ignore[no-untyped-call]
        self.soa = dns.rrset.from_rdata(origin, APEX_TTL, soa)
        self.negative_soa = dns.rrset.from_rdata(origin, min(APEX_TTL, negative_ttl), soa)
        self.ns = dns.rrset.from_rdata(
            origin,
            APEX_TTL,
            dns.rdtypes.ANY.NS.NS(IN, dns.rdatatype.NS, nameserver),  # type: ignore[no-untyped-call]
        )

    async def answer(self, query: dns.message.Message) -> Answer:
        """The response to a query of one question."""
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        if question.rdclass != IN or not name.is_subdomain(self.origin):
            response.set_rcode(dns.rcode.REFUSED)
            return Answer(response, fixed=True)
        response.flags |= dns.flags.AA
        if name == self.origin:
            return Answer(self._apex(response, rdtype), fixed=True)
        meaning = dns_names.classify(name, self.origin)
        if not isinstance(meaning, Handle):
            nxdomain = isinstance(meaning, dns_names.Unmapped)
            return Answer(self._negative(response, nxdomain=nxdomain), fixed=True)
        return await self._handle(response, meaning, rdtype)

    def _apex(self, response: dns.message.Message, rdtype: int) -> dns.message.Message:
        if rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            response.answer.append(self.soa)
        elif rdtype == dns.rdatatype.NS:
            response.answer.append(self.ns)
        else:
            response.authority.append(self.negative_soa)
        return response

    def _negative(self, response: dns.message.Message, *, nxdomain: bool) -> dns.message.Message:
        if nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self.negative_soa)
        return response

    async def _handle(self, response: dns.message.Message, h: Handle, rdtype: int) -> Answer:
        try:
            entry = await resolve(self.pipeline, h)
        except NotResponsible:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return Answer(response)
        except ClientError as exc:
            log.warning("DNS resolution of %s failed: %s", h.text[:200], exc.message)
            response.set_rcode(dns.rcode.SERVFAIL)
            return Answer(response)
        if entry.record is None:
            return Answer(self._negative(response, nxdomain=True), h.key, entry)
        public = [v for v in entry.record.values if v.public_read]
        rrset = records(response.question[0].name, rdtype, public)
        if rrset is None:
            response.authority.append(self.negative_soa)
        else:
            response.answer.append(rrset)
        return Answer(response, h.key, entry)


MAX_UDP_PAYLOAD = 1232
"""Largest UDP answer, whatever a client's EDNS payload size: the DNS Flag Day 2020 size,
which avoids IP fragmentation; larger answers are truncated and retried over TCP."""


def records(name: dns.name.Name, rdtype: int, public: Sequence[Value]) -> dns.rrset.RRset | None:
    """The set of ``rdtype`` records of ``name`` built from its public values, or None."""
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.ANY):
        used = list(public)
        rdatas: list[dns.rdata.Rdata] = [_txt(v) for v in used]
    elif rdtype == dns.rdatatype.URI:
        used = _urls(public)
        rdatas = [_uri(v) for v in used]
    elif rdtype == dns.rdatatype.NAPTR:
        used = [v for v in _urls(public) if len(_regexp(v.data)) <= TXT_STRING]
        rdatas = [_naptr(v) for v in used]
    else:
        return None
    if not rdatas:
        return None
    ttl = min(max(0, min(v.ttl for v in used)), MAX_TTL)
    return dns.rrset.from_rdata_list(name, ttl, rdatas)


def text_of(value: Value) -> str:
    """A value's data as text: strings as they are, structured data as JSON."""
    if isinstance(value.data, str):
        return value.data
    return orjson.dumps(value.data).decode()


def _txt(value: Value) -> dns.rdata.Rdata:
    data = f"{value.type}={text_of(value)}".encode()[:TXT_MAX]
    strings = [data[i : i + TXT_STRING] for i in range(0, len(data), TXT_STRING)]
    return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, strings)


def _urls(public: Sequence[Value]) -> list[Value]:
    """Public URL values whose data is a URI with a scheme."""
    return [
        v
        for v in public
        if fold(v.type) == "url" and isinstance(v.data, str) and ":" in v.data and v.data
    ]


def _uri(value: Value) -> dns.rdata.Rdata:
    target = value.data.encode()
    return dns.rdtypes.ANY.URI.URI(IN, dns.rdatatype.URI, _uint16(value.index), 1, target)  # type: ignore[no-untyped-call]


def _naptr(value: Value) -> dns.rdata.Rdata:
    url: str = value.data
    scheme = fold(url.split(":", 1)[0])
    service = f"E2U+web:{scheme}" if scheme in ("http", "https") else f"E2U+{scheme}"
    return dns.rdtypes.IN.NAPTR.NAPTR(
        IN,
        dns.rdatatype.NAPTR,
        _uint16(value.index),
        10,
        b"u",
        service.encode()[:TXT_STRING],
        _regexp(url),
        dns.name.root,
    )  # type: ignore[no-untyped-call]


def _regexp(url: str) -> bytes:
    """The NAPTR regexp that rewrites anything to ``url`` (``!`` and ``\\`` escaped)."""
    escaped = url.replace("\\", "\\\\").replace("!", "\\!")
    return f"!^.*$!{escaped}!".encode()


def _uint16(index: int) -> int:
    return min(max(index, 0), MAX_UINT16)
