"""The DNS front-end: a real node with IDNODE_DNS_PORT set, queried over real UDP and TCP
sockets with dnspython, with ``dig``, and through a real recursive resolver (unbound)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import ConfigError, NotResponsible
from registry.handle import parse
from resolver.config import Config
from resolver.dns_answers import Zone
from resolver.dns_front import DnsFront
from resolver.dns_names import to_name
from resolver.metrics import Metrics
from tests.conftest import RunningNode, Tenant, TenantFactory, free_port, running

ZONE = "id.example."
ORIGIN = dns.name.from_text(ZONE)
INSTALL_TIMEOUT = 300.0
URL_A = {"index": 1, "type": "URL", "data": "https://example.com/p/1", "ttl": 120}
URL_B = {"index": 7, "type": "URL", "data": "http://example.org/!x", "ttl": 300}
EMAIL = {"index": 2, "type": "EMAIL", "data": "ops@example.com", "ttl": 600}
SECRET = {"index": 3, "type": "NOTE", "data": "private", "permissions": "1100"}


@dataclass
class DnsNode:
    http: RunningNode
    port: int

    def name(self, handle: str) -> dns.name.Name:
        return to_name(parse(handle), ORIGIN)

    async def udp(self, qname: dns.name.Name | str, rdtype: str, **kw: Any) -> dns.message.Message:
        query = dns.message.make_query(qname, rdtype, **kw)
        return await dns.asyncquery.udp(query, "127.0.0.1", timeout=5, port=self.port)

    async def tcp(self, qname: dns.name.Name | str, rdtype: str) -> dns.message.Message:
        query = dns.message.make_query(qname, rdtype)
        return await dns.asyncquery.tcp(query, "127.0.0.1", timeout=5, port=self.port)

    def count(self, transport: str, qtype: str, rcode: str) -> float:
        self.http.metrics.flush()
        labels = {"transport": transport, "qtype": qtype, "rcode": rcode}
        return self.http.metrics.registry.get_sample_value("idnode_dns_requests_total", labels) or 0


@pytest.fixture
async def dns_node(db_url: str, tmp_path: Path, key_dir: Path) -> AsyncIterator[DnsNode]:
    port = free_port()
    async with running(db_url, tmp_path, key_dir, dns_port=port, dns_zone=ZONE) as http:
        yield DnsNode(http, port)


async def put(node: DnsNode, t: Tenant, suffix: str, values: list[dict[str, Any]]) -> str:
    handle = t.handle(suffix)
    async with node.http.session.put(node.http.api(handle), json=values, headers=t.auth) as r:
        assert r.status in (200, 201), await r.text()
    return handle


def texts(response: dns.message.Message, *, admin: bool = False) -> set[str]:
    """The TXT strings of an answer; the HS_ADMIN value the node adds only if ``admin``."""
    found = {b"".join(rd.strings).decode() for rrset in response.answer for rd in rrset}
    return found if admin else {text for text in found if not text.startswith("HS_ADMIN=")}


# --- answers -----------------------------------------------------------------------------


async def test_txt_uri_naptr_from_public_values(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "JXDY2106023", [URL_A, URL_B, EMAIL, SECRET])
    name = dns_node.name(handle)
    txt = await dns_node.udp(name, "TXT")
    assert txt.rcode() == dns.rcode.NOERROR and txt.flags & dns.flags.AA
    assert texts(txt, admin=True) == {
        "URL=https://example.com/p/1",
        "URL=http://example.org/!x",
        "EMAIL=ops@example.com",
        f'HS_ADMIN={{"handle":"0.NA/{t.prefix}","index":300,"permissions":"011111110011"}}',
    }  # structured data as JSON; the non-public NOTE is not there
    assert txt.answer[0].ttl == 120  # the smallest TTL of the values in the set
    uri = await dns_node.udp(name, "URI")
    assert {(rd.priority, rd.weight, rd.target) for rd in uri.answer[0]} == {
        (1, 1, b"https://example.com/p/1"),
        (7, 1, b"http://example.org/!x"),
    }
    naptr = await dns_node.tcp(name, "NAPTR")
    assert {(rd.order, rd.flags, rd.service, rd.regexp) for rd in naptr.answer[0]} == {
        (1, b"u", b"E2U+web:https", b"!^.*$!https://example.com/p/1!"),
        (7, b"u", b"E2U+web:http", b"!^.*$!http://example.org/\\!x!"),
    }
    # ANY gets the TXT set (RFC 8482), not everything
    anything = await dns_node.udp(name, "ANY")
    assert [r.rdtype for r in anything.answer] == [dns.rdatatype.TXT]


async def test_ttls_come_from_the_records(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "ttl", [{**URL_B, "ttl": 45}, {**EMAIL, "ttl": 30}])
    assert (await dns_node.udp(dns_node.name(handle), "TXT")).answer[0].ttl == 30
    assert (await dns_node.udp(dns_node.name(handle), "URI")).answer[0].ttl == 45


async def test_the_resolver_library_and_case_insensitive_names(
    dns_node: DnsNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "Bäume/1", [URL_A])
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_node.port
    answer = await resolver.resolve(dns_node.name(handle), "URI")
    assert [rd.target for rd in answer] == [b"https://example.com/p/1"]
    assert texts((await resolver.resolve(dns_node.name(handle), "TXT")).response) == {
        "URL=https://example.com/p/1"
    }
    shouting = dns.name.Name([label.upper() for label in dns_node.name(handle).labels])
    for _ in range(2):  # the second answer comes from the kept bytes: the case is echoed too
        response = await dns_node.udp(shouting, "TXT")
        assert response.question[0].name.labels == shouting.labels
        assert texts(response) == {"URL=https://example.com/p/1"}


async def test_apex_soa_and_ns(dns_node: DnsNode) -> None:
    soa = await dns_node.udp(ZONE, "SOA")
    assert soa.answer[0][0].mname == dns.name.from_text("ns.id.example.")
    assert soa.answer[0][0].minimum == 60
    ns = await dns_node.tcp(ZONE, "NS")
    assert ns.answer[0][0].target == dns.name.from_text("ns.id.example.")
    nodata = await dns_node.udp(ZONE, "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA


async def test_nxdomain_nodata_and_refused(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "here", [EMAIL])
    missing = await dns_node.udp(dns_node.name(t.handle("absent")), "TXT")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority[0].rdtype == dns.rdatatype.SOA
    assert missing.authority[0].ttl == 60  # the negative TTL, so resolvers cache the denial
    no_url = await dns_node.udp(dns_node.name(handle), "URI")  # a record without URL values
    assert no_url.rcode() == dns.rcode.NOERROR and not no_url.answer and no_url.authority
    a = await dns_node.udp(dns_node.name(handle), "A")
    assert a.rcode() == dns.rcode.NOERROR and not a.answer
    ancestor = await dns_node.udp(dns_node.name(handle).parent(), "TXT")  # _.<prefix>.zone
    assert ancestor.rcode() == dns.rcode.NOERROR and not ancestor.answer
    outside = await dns_node.udp("example.com.", "TXT")
    assert outside.rcode() == dns.rcode.REFUSED and not outside.flags & dns.flags.AA
    not_homed = await dns_node.udp(dns_node.name("88.999.1/x"), "TXT")
    assert not_homed.rcode() == dns.rcode.REFUSED
    chaos = await dns_node.udp("version.bind.", "TXT", rdclass="CH")
    assert chaos.rcode() == dns.rcode.REFUSED
    assert dns_node.count("udp", "TXT", "NXDOMAIN") == 1
    assert dns_node.count("udp", "TXT", "REFUSED") == 3


@pytest.mark.parametrize(
    "qname",
    [
        "x_zz._.8.118.88.id.example.",  # not an escape
        "x_61._.8.118.88.id.example.",  # an escape of a letter: not canonical
        "\\255\\000._.8.118.88.id.example.",  # binary label
        "a_01._.8.118.88.id.example.",  # a control character: no handle
        "b.a_._.8.118.88.id.example.",  # a suffix cut the wrong way
    ],
)
async def test_bad_labels_are_nxdomain(dns_node: DnsNode, qname: str) -> None:
    response = await dns_node.udp(qname, "TXT")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA


async def test_a_change_is_seen_at_once(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "moving", [URL_A])
    for _ in range(3):  # the first fills the cache, the others are served from it
        assert texts(await dns_node.udp(dns_node.name(handle), "TXT")) == {
            "URL=https://example.com/p/1"
        }
    await put(dns_node, t, "moving", [{**URL_A, "data": "https://example.com/p/2"}])
    assert texts(await dns_node.udp(dns_node.name(handle), "TXT")) == {
        "URL=https://example.com/p/2"
    }
    async with dns_node.http.session.delete(dns_node.http.api(handle), headers=t.auth) as r:
        assert r.status == 200
    gone = await dns_node.udp(dns_node.name(handle), "TXT")
    assert gone.rcode() == dns.rcode.NXDOMAIN


# --- sizes and transports ----------------------------------------------------------------


async def test_truncation_and_tcp_retry(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    big = [{"index": i, "type": "DESC", "data": f"{i:03d}" + "x" * 150} for i in range(1, 6)]
    handle = await put(dns_node, t, "big", big)
    name = dns_node.name(handle)
    plain = await dns_node.udp(name, "TXT")  # no EDNS: 512 bytes
    assert plain.flags & dns.flags.TC
    small = await dns_node.udp(name, "TXT", use_edns=0, payload=600)
    assert small.flags & dns.flags.TC
    large = await dns_node.udp(name, "TXT", use_edns=0, payload=1232)
    assert not large.flags & dns.flags.TC and len(texts(large)) == 5
    query = dns.message.make_query(name, "TXT")
    response, used_tcp = await dns.asyncquery.udp_with_fallback(
        query, "127.0.0.1", timeout=5, port=dns_node.port
    )
    assert used_tcp and len(texts(response)) == 5


async def test_tcp_several_queries_on_one_connection(
    dns_node: DnsNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "tcp", [URL_A])
    reader, writer = await asyncio.open_connection("127.0.0.1", dns_node.port)
    queries = [dns.message.make_query(dns_node.name(handle), kind) for kind in ("TXT", "URI")]
    writer.write(b"".join(q.to_wire(prepend_length=True) for q in queries))
    answers = {}
    for _ in queries:
        length = int.from_bytes(await reader.readexactly(2))
        response = dns.message.from_wire(await reader.readexactly(length))
        answers[response.id] = response
    writer.close()
    assert {answers[q.id].answer[0].rdtype for q in queries} == {
        dns.rdatatype.TXT,
        dns.rdatatype.URI,
    }


def _header(qid: int, flags: int, qd: int, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return b"".join(n.to_bytes(2) for n in (qid, flags, qd, an, ns, ar))


GARBAGE = [
    b"",
    b"\x00",
    b"\x12\x34\x01\x00\x00\x01",  # a cut header
    _header(7, 0x0100, 1) + b"\x03abc",  # the question cut short
    _header(7, 0x0100, 1) + b"\xc0\x0c\x00\x10\x00\x01",  # a compression loop
    _header(7, 0x0100, 1) + b"\x40" + b"a" * 64 + b"\x00\x00\x10\x00\x01",  # label type 0x40
    _header(7, 0x0100, 2) + (b"\x01a\x00\x00\x10\x00\x01" * 2),  # two questions
    _header(7, 0x0100, 0xFFFF) + b"\x00" * 40,  # counts that lie
    _header(7, 0x2800, 1) + b"\x01a\x00\x00\x10\x00\x01",  # opcode UPDATE
    _header(7, 0x0100, 1) + b"\x01a\x00\x00\x10\x00\x01" + b"junk",  # trailing junk
    _header(7, 0x0100, 1) + random.Random(7).randbytes(300),  # noise after a header
    b"\x00\x07\x81\x80" + bytes(8),  # a response: never answered
]


async def test_garbage_datagrams_never_crash(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "after", [URL_A])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    replies = []
    try:
        for datagram in GARBAGE:
            await loop.sock_sendto(sock, datagram, ("127.0.0.1", dns_node.port))
        await asyncio.sleep(0.3)
        while True:
            try:
                replies.append(sock.recv(4096))
            except BlockingIOError:
                break
    finally:
        sock.close()
    for reply in replies:  # whatever is answered is a well-formed error for id 7 (or random)
        message = dns.message.from_wire(reply, question_only=True)
        assert message.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.NXDOMAIN)
    assert dns_node.count("udp", "none", "FORMERR") >= 5
    assert dns_node.count("udp", "none", "NOTIMP") == 1
    assert dns_node.count("udp", "none", "dropped") == 4
    assert texts(await dns_node.udp(dns_node.name(handle), "TXT"))  # still serving


async def test_metrics_by_transport_qtype_rcode(dns_node: DnsNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "m", [URL_A])
    for _ in range(3):
        await dns_node.udp(dns_node.name(handle), "TXT")
    await dns_node.tcp(dns_node.name(handle), "NAPTR")
    await dns_node.udp(dns_node.name(handle), "TYPE65000")
    assert dns_node.count("udp", "TXT", "NOERROR") == 3
    assert dns_node.count("tcp", "NAPTR", "NOERROR") == 1
    assert dns_node.count("udp", "other", "NOERROR") == 1
    registry = dns_node.http.metrics.registry
    observed = registry.get_sample_value(
        "idnode_dns_request_duration_seconds_count", {"transport": "udp"}
    )
    assert observed == 4


# --- dig and unbound ---------------------------------------------------------------------


def debian_tool(binary: str, package: str) -> str:
    """Path of ``binary``; installs Debian's ``package`` if missing (root, apt-get), or skips
    saying why."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    found = shutil.which(binary, path=search)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{binary} is missing and apt-get install {package} needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    output = ""
    try:
        for command in (install, ["apt-get", "update", "-q"], install):
            result = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            output = result.stdout + result.stderr
            if command is install and result.returncode == 0:
                break
    except subprocess.TimeoutExpired:
        pytest.skip(f"apt-get install {package} took longer than {INSTALL_TIMEOUT:.0f} s")
    found = shutil.which(binary, path=search)
    if not found:
        pytest.skip(f"apt-get install {package} gave no {binary}: {output.strip()[-300:]}")
    return found


@pytest.fixture(scope="session")
def dig() -> str:
    return debian_tool("dig", "dnsutils")


@pytest.fixture(scope="session")
def unbound() -> str:
    return debian_tool("unbound", "unbound")


async def run_dig(dig: str, port: int, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        dig, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    return out.decode()


async def test_dig(dns_node: DnsNode, tenant: TenantFactory, dig: str) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "JXDY2106023", [URL_A, EMAIL])
    name = dns_node.name(handle).to_text()
    out = await run_dig(dig, dns_node.port, name, "TXT", "+norecurse")
    assert "status: NOERROR" in out and "flags: qr aa" in out, out
    assert '"URL=https://example.com/p/1"' in out and '"EMAIL=ops@example.com"' in out, out
    short = await run_dig(dig, dns_node.port, name, "URI", "+short")
    assert short.strip() == '1 1 "https://example.com/p/1"', short
    missing = await run_dig(dig, dns_node.port, dns_node.name(t.handle("nope")).to_text(), "TXT")
    assert "status: NXDOMAIN" in missing and "IN\tSOA\tns.id.example." in missing, missing
    tcp = await run_dig(dig, dns_node.port, "+tcp", ZONE, "SOA", "+short")
    assert tcp.startswith("ns.id.example. hostmaster.id.example. 1 "), tcp
    outside = await run_dig(dig, dns_node.port, "example.com", "A")
    assert "status: REFUSED" in outside, outside


UNBOUND_CONF = """server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    do-not-query-localhost: no
    qname-minimisation: no
    module-config: "iterator"
    domain-insecure: "{zone}"
    auto-trust-anchor-file: ""
remote-control:
    control-enable: no
forward-zone:
    name: "{zone}"
    forward-addr: 127.0.0.1@{upstream}
"""


@contextlib.asynccontextmanager
async def forwarding(unbound: str, directory: Path, zone: str, upstream: int) -> AsyncIterator[int]:
    """unbound on a free loopback port, forwarding ``zone`` to the DNS front-end at
    ``upstream``; answers its port, and checks that it logged no error."""
    port = free_port()
    conf = directory / "unbound.conf"
    conf.write_text(UNBOUND_CONF.format(port=port, dir=directory, zone=zone, upstream=upstream))
    process = await asyncio.create_subprocess_exec(
        unbound, "-d", "-c", str(conf),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield port
    finally:
        process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    assert b"error" not in output.lower(), output.decode()


async def first_answer(dig: str, port: int, name: str) -> str:
    """dig's output for ``name`` TXT, asked until unbound is up and answers NOERROR."""
    for _ in range(50):
        out = await run_dig(dig, port, name, "TXT")
        if "status: NOERROR" in out:
            break
        await asyncio.sleep(0.1)
    return out


async def test_unbound_in_front_answers_and_caches_denials(
    dns_node: DnsNode, tenant: TenantFactory, dig: str, unbound: str, tmp_path: Path
) -> None:
    t = await tenant()
    handle = await put(dns_node, t, "JXDY2106023", [URL_A, EMAIL])
    async with forwarding(unbound, tmp_path, ZONE, dns_node.port) as port:
        out = await first_answer(dig, port, dns_node.name(handle).to_text())
        assert '"URL=https://example.com/p/1"' in out and "flags: qr rd ra;" in out, out
        absent = dns_node.name(t.handle("absent")).to_text()
        for _ in range(2):
            out = await run_dig(dig, port, absent, "TXT")
            assert "status: NXDOMAIN" in out and "SOA" in out, out
        # the second denial came from unbound's cache: the node saw one query for it
        assert dns_node.count("udp", "TXT", "NXDOMAIN") == 1


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IDNODE_DNS_PORT": "70000"}, "IDNODE_DNS_PORT: must be an integer from 0 to 65535"),
        ({"IDNODE_DNS_PORT": "dns"}, "IDNODE_DNS_PORT: cannot read 'dns' as int"),
        ({"IDNODE_DNS_ZONE": "a..b"}, "IDNODE_DNS_ZONE: cannot read 'a..b' as a DNS name"),
        ({"IDNODE_DNS_ZONE": "."}, "IDNODE_DNS_ZONE: cannot read '.' as a DNS name"),
        ({"IDNODE_DNS_NAMESERVER": "x" * 64}, "IDNODE_DNS_NAMESERVER: cannot read"),
    ],
)
def test_bad_dns_settings_stop_start_up_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    assert message in caught.value.message and "\n" not in caught.value.message


def test_dns_settings_are_normalised() -> None:
    config = Config.from_env({"IDNODE_DNS_ZONE": "ID.Example", "IDNODE_DNS_PORT": "53"})
    assert config.dns_zone == "ID.Example." and config.dns_port == 53
    assert Config.from_env({}).dns_port == 0  # off by default


async def test_no_dns_front_end_by_default(node: RunningNode) -> None:
    assert node.metrics.flush_hooks == []


# --- fuzzing the message handling in-process -----------------------------------------------


class _Nowhere:
    """A pipeline stage for prefixes homed elsewhere: every lookup is NotResponsible."""

    def lookup(self, h: Any, *, authoritative: bool = False) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(NotResponsible(handle=h.text))
        return future


_VALID = dns.message.make_query("a._.8.118.88.id.example.", "TXT", use_edns=0).to_wire()


def _answers_to(data: bytes) -> list[bytes]:
    async def run() -> list[bytes]:
        zone = Zone(ORIGIN, dns.name.from_text("ns.id.example."), 60, _Nowhere())
        front = DnsFront(zone, None, Metrics())
        sent: list[bytes] = []
        front.answer(data, "udp", sent.append)
        front.answer(data, "tcp", sent.append)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await front.stop()
        return sent

    return asyncio.run(run())


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6).map(
            lambda edits: bytes(
                dict(edits).get(i, b) for i, b in enumerate(_VALID)
            )  # some bytes of a valid query changed
        ),
        st.integers(0, len(_VALID)).map(lambda n: _VALID[:n]),  # a valid query cut short
    )
)
def test_any_bytes_get_a_well_formed_answer_or_none(data: bytes) -> None:
    for reply in _answers_to(data):
        assert reply[:2] == data[:2] and reply[2] & 0x80  # the query's id, QR set
        dns.message.from_wire(reply)  # well-formed
