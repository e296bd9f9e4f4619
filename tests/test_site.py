"""HS_SITE (registry.site): golden byte vectors, JSON form, round trips, bad input.

Sources of the golden vectors (built by hand, byte by byte, from these):

- RFC 3651 §3.2.2 "HS_SITE": field order and widths (Version 2 octets, ProtocolVersion
  2 octets, SerialNumber 2 octets, PrimaryMask 1 octet, HashOption 1 octet, HashFilter
  UTF8-String, AttributeList, NumOfServer, then per server ServerID 4 octets, Address
  16 octets, PublicKeyRecord, ServiceInterface list of ServiceType 1 octet,
  TransmissionProtocol 1 octet, PortNumber 4 octets).
- CNRI HANDLE.NET ``net.handle.hdllib.Encoder.encodeSiteInfoRecord`` /
  ``decodeSiteInfoRecord`` and ``SiteInfo``/``Interface``/``Common`` constants
  (PRIMARY_SITE 0x80, MULTI_PRIMARY 0x40, HASH_TYPE_BY_PREFIX 0 / BY_SUFFIX 1 / BY_ALL 2,
  ST_ADMIN 1, ST_QUERY 2, SP_HDL_UDP 0 / TCP 1 / HTTP 2 / HTTPS 3, SITE_RECORD_FORMAT_VERSION
  1, IPv4 right-aligned in 16 zero bytes by ``SiteInfo``'s constructor and ``fill16``),
  as carried verbatim (© CNRI) in the public repository teleinfo-dev/id-pointer-sdk,
  ``id-pointer-sdk/src/main/java/cn/teleinfo/idpointer/sdk/core/{Encoder,SiteInfo,
  Interface,Common}.java``.
- The JSON form: CNRI ``GsonUtility.SiteInfoGsonTypeAdapter``, ``ServerInfoGsonTypeAdapter``
  and ``InterfaceGsonTypeAdapter`` (same repository, ``.../core/GsonUtility.java``).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import values as hv
from registry.errors import InvalidValue, ProtocolError
from registry.site import Interface, Server, Site, address_bytes

# --- golden vectors ----------------------------------------------------------------------------

# A one-server primary site as CNRI's SiteInfo(…, listenAddr=127.0.0.1, port=2641,
# httpPort=8000, …) constructor lays it out: TCP admin+query, UDP query, HTTP admin+query.
SITE_A = Site(
    serial_number=1,
    primary=True,
    hash_option=0,
    attributes=(("desc", "Test"),),
    servers=(
        Server(
            server_id=1,
            address=bytes(12) + bytes([127, 0, 0, 1]),
            public_key=b"\x00\x01",
            interfaces=(Interface(3, 1, 2641), Interface(2, 0, 2641), Interface(3, 2, 8000)),
        ),
    ),
)
BYTES_A = bytes.fromhex(
    "0001"  # version (SITE_RECORD_FORMAT_VERSION = 1)
    "020a"  # protocol 2.10
    "0001"  # serial number
    "80"  # primary mask: PRIMARY_SITE
    "00"  # hash option: by prefix
    "00000000"  # hash filter: empty UTF8-String
    "00000001"  # one attribute
    "00000004" "64657363"  # "desc"
    "00000004" "54657374"  # "Test"
    "00000001"  # one server
    "00000001"  # server id 1
    "000000000000000000000000" "7f000001"  # 127.0.0.1 right-aligned in 16 bytes
    "00000002" "0001"  # public key record: 2 bytes
    "00000003"  # three interfaces
    "03" "01" "00000a51"  # admin+query, TCP, 2641
    "02" "00" "00000a51"  # query, UDP, 2641
    "03" "02" "00001f40"  # admin+query, HTTP, 8000
)  # fmt: skip
JSON_A = {
    "version": 1,
    "protocolVersion": "2.10",
    "serialNumber": 1,
    "primarySite": True,
    "multiPrimary": False,
    "hashOption": 0,
    "attributes": [{"name": "desc", "value": "Test"}],
    "servers": [
        {
            "serverId": 1,
            "address": "127.0.0.1",
            "publicKey": {"format": "base64", "value": "AAE="},
            "interfaces": [
                {"query": True, "admin": True, "protocol": "TCP", "port": 2641},
                {"query": True, "admin": False, "protocol": "UDP", "port": 2641},
                {"query": True, "admin": True, "protocol": "HTTP", "port": 8000},
            ],
        }
    ],
}

# No servers, multi-primary, hash by suffix with a filter, protocol 2.11.
SITE_B = Site(
    serial_number=0x0102,
    multi_primary=True,
    hash_option=1,
    hash_filter="x",
    protocol_version=(2, 11),
)
BYTES_B = bytes.fromhex(
    "0001" "020b" "0102"
    "40"  # MULTI_PRIMARY
    "01"  # HASH_TYPE_BY_SUFFIX
    "00000001" "78"  # hash filter "x"
    "00000000"  # no attributes
    "00000000"  # no servers
)  # fmt: skip

# An IPv6 server with only an HTTPS admin interface and no key; primary and multi-primary.
SITE_C = Site(
    serial_number=5,
    primary=True,
    multi_primary=True,
    servers=(
        Server(
            server_id=0xFFFFFFFF,
            address=bytes.fromhex("20010db8000000000000000000000001"),
            interfaces=(Interface(1, 3, 443),),
        ),
    ),
)
BYTES_C = bytes.fromhex(
    "0001" "020a" "0005"
    "c0"  # PRIMARY_SITE | MULTI_PRIMARY
    "02"  # HASH_TYPE_BY_ALL
    "00000000" "00000000"
    "00000001"
    "ffffffff"  # server id
    "20010db8000000000000000000000001"  # 2001:db8::1
    "00000000"  # empty public key
    "00000001" "01" "03" "000001bb"  # admin, HTTPS, 443
)  # fmt: skip


@pytest.mark.parametrize(
    ("site", "raw"), [(SITE_A, BYTES_A), (SITE_B, BYTES_B), (SITE_C, BYTES_C)], ids="ABC"
)
def test_golden_vectors_encode_and_decode(site: Site, raw: bytes) -> None:
    assert site.encode() == raw
    assert Site.decode(raw) == site


def test_golden_json() -> None:
    assert SITE_A.to_json() == JSON_A
    assert Site.from_json(JSON_A) == SITE_A
    assert "hashOption" not in SITE_C.to_json()  # 2 (by all) is CNRI's default, left out
    assert SITE_C.to_json()["servers"][0]["address"] == "2001:db8::1"
    assert SITE_B.to_json()["hashFilter"] == "x"


def test_json_defaults_like_cnri() -> None:
    site = Site.from_json({"servers": []})
    assert site == Site(serial_number=1)
    assert site.encode()[:8] == bytes.fromhex("0001020a00010002")


def test_json_accepts_cnri_variants() -> None:
    """Attributes as an object, a hex public key string, protocols by number or lower case."""
    site = Site.from_json(
        {
            "attributes": {"desc": "d", "alt_addr.1": ["a", "b"]},
            "servers": [
                {
                    "address": "10.0.0.1",
                    "publicKey": "0a0b",
                    "interfaces": [
                        {"query": True, "protocol": "udp", "port": 1},
                        {"protocol": 7, "port": 2},
                    ],
                }
            ],
        }
    )  # fmt: skip
    assert site.attributes == (("desc", "d"), ("alt_addr.1", "a"), ("alt_addr.1", "b"))
    server = site.servers[0]
    assert server.public_key == b"\n\x0b" and server.server_id == 0
    assert server.interfaces == (Interface(2, 0, 1), Interface(0, 7, 2))
    assert server.to_json()["interfaces"][1]["protocol"] == 7


def test_stored_site_value_becomes_binary() -> None:
    """A value written through the REST API with format site encodes to HS_SITE bytes."""
    value = hv.parse_value(
        {"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": JSON_A}},
        timestamp="2024-01-01T00:00:00Z",
    )
    assert Site.from_json(value.data).encode() == BYTES_A


def test_ipv4_mapped_address_keeps_its_bytes() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    server = Server(1, mapped)
    back = Server.from_json(server.to_json())
    assert back.address == mapped
    assert address_bytes("192.0.2.1") == bytes(12) + bytes([192, 0, 2, 1])


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", range(len(BYTES_A)))
def test_every_truncation_is_a_protocol_error(cut: int) -> None:
    with pytest.raises(ProtocolError, match="HS_SITE"):
        Site.decode(BYTES_A[:cut])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (BYTES_B + b"\x00", "bytes after the record"),
        (bytes.fromhex("0001020a0001000000000001ff"), "hash filter"),  # invalid UTF-8
        (bytes.fromhex("0001020a000100007fffffff"), "count"),  # a length that lies
        (bytes.fromhex("0001020a00010000" "00000000" "ffffffff"), "attribute count"),
        (BYTES_C[:-10] + bytes.fromhex("00000001" "04" "03" "000001bb"), "out of range"),
        (BYTES_C[:-4] + bytes.fromhex("00010000"), "out of range"),  # port 65536
    ],
)  # fmt: skip
def test_malformed_binary(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Site.decode(raw)


def _with(path: list[Any], new: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(JSON_A)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return out


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a string", "site must be a JSON object"),
        (_with(["servers"], {}), "servers must be an array"),
        (_with(["servers", 0, "address"], "not-an-ip"), "not an IPv4 or IPv6"),
        (_with(["servers", 0, "address"], 5), "address must be"),
        (_with(["servers", 0, "interfaces", 0, "protocol"], "SCTP"), "protocol"),
        (_with(["servers", 0, "interfaces", 0, "port"], 70000), "port"),
        (_with(["servers", 0, "interfaces", 0, "query"], "yes"), "query must be true or false"),
        (_with(["servers", 0, "publicKey"], {"format": "base64", "value": "!!"}), "not valid"),
        (_with(["servers", 0, "publicKey"], {"format": "key", "value": {}}), "publicKey"),
        (_with(["servers", 0, "serverId"], -1), "serverId"),
        (_with(["protocolVersion"], "2"), "protocolVersion"),
        (_with(["protocolVersion"], "2.300"), "0-255"),
        (_with(["serialNumber"], 70000), "serialNumber"),
        (_with(["serialNumber"], True), "serialNumber"),
        (_with(["attributes"], [{"name": 1, "value": "x"}]), "attribute"),
        (_with(["attributes"], ["x"]), "attribute must be a JSON object"),
        (_with(["hashFilter"], 3), "hashFilter"),
        (_with(["servers"], [{}] * 1025), "at most"),
    ],
)
def test_malformed_json(raw: Any, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        Site.from_json(raw)


# --- properties ------------------------------------------------------------------------------

_text = st.text(max_size=12)
_interfaces = st.builds(
    Interface,
    st.integers(0, 3),
    st.integers(0, 255),
    st.integers(0, 65535),
)
_addresses = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda b: bytes(12) + b),
    st.binary(min_size=16, max_size=16),
)
_servers = st.builds(
    Server,
    st.integers(0, 2**32 - 1),
    _addresses,
    st.binary(max_size=40),
    st.lists(_interfaces, max_size=4).map(tuple),
)
sites = st.builds(
    Site,
    serial_number=st.integers(0, 65535),
    servers=st.lists(_servers, max_size=3).map(tuple),
    attributes=st.lists(st.tuples(_text, _text), max_size=3).map(tuple),
    primary=st.booleans(),
    multi_primary=st.booleans(),
    hash_option=st.integers(0, 255),
    hash_filter=_text,
    version=st.integers(0, 65535),
    protocol_version=st.tuples(st.integers(0, 255), st.integers(0, 255)),
)


@given(sites)
def test_binary_round_trip(site: Site) -> None:
    assert Site.decode(site.encode()) == site


@given(sites)
def test_json_round_trip(site: Site) -> None:
    assert Site.from_json(site.to_json()) == site


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_protocol_error(raw: bytes) -> None:
    try:
        Site.decode(raw)
    except ProtocolError:
        pass


@given(sites, st.data())
def test_mutated_encodings_decode_or_protocol_error(site: Site, data: st.DataObject) -> None:
    raw = bytearray(site.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    try:
        decoded = Site.decode(bytes(raw))
    except ProtocolError:
        return
    assert Site.decode(decoded.encode()) == decoded


def test_public_key_base64_is_standard() -> None:
    key = bytes(range(50))
    shown = Server(1, bytes(16), key).to_json()["publicKey"]["value"]
    assert shown == base64.b64encode(key).decode()
