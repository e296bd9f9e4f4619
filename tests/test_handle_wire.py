"""The Handle binary protocol (resolver.handle_codec, resolver.handle_client): golden byte
vectors, round trips and fuzz of the decoders. The server is tested in test_handle_server.py.

Sources of the golden vectors, built by hand byte by byte (no Handle client can be
installed here):

- RFC 3652 §2.2.1 (Message Envelope: MajorVersion, MinorVersion, MessageFlag, SessionId,
  RequestId, SequenceNumber, MessageLength), §2.2.2 (Message Header: OpCode, ResponseCode,
  OpFlag, SiteInfoSerialNumber, RecursionCount, ExpirationTime, BodyLength), §2.2.2.1–3
  (opcode, response code and flag values), §3.1 (handle value: Index, Timestamp, TTLType,
  TTL, Permission, Type, Data, References), §3.2 (resolution request body: Handle,
  IndexList, TypeList), §3.3 (resolution response body), §3.5 (error response: ErrorMessage).
- RFC 3651 §3.2.1 HS_ADMIN (AdminPermission u16, AdminRef), §3.2.6 HS_VLIST.
- CNRI HANDLE.NET ``net.handle.hdllib``: ``Encoder.encodeEnvelope`` (the flags byte carries the
  suggested major version in its low bits), ``writeHeader`` (u16 site serial, recursion byte,
  a reserved byte), ``encodeResolutionRequest``, ``encodeResolutionResponse`` (request digest
  first when RRDG is set), ``encodeHandleValue``, ``encodeErrorMessage``,
  ``encodeGetSiteInfoResponse`` (the site record with no length in front),
  ``encodeAdminRecord``, ``encodeValueReferenceList``, ``AbstractResponse.takeDigestOfRequest``
  (SHA-256 of header and body from 2.7, code 3), ``AbstractMessage.takeValuesFrom`` (flags a
  response copies), ``Common`` (MAX_UDP_PACKET_SIZE 512, MAX_MESSAGE_LENGTH 262144) — as
  carried verbatim (© CNRI) in the public repository teleinfo-dev/id-pointer-sdk,
  ``id-pointer-sdk/src/main/java/cn/teleinfo/idpointer/sdk/core/``.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import values as hv
from registry.errors import ProtocolError
from registry.site import Site
from resolver import handle_client as client
from resolver import handle_codec as wire

NOW = 1_700_000_000
TS = "2024-01-01T00:00:00Z"  # 1704067200 = 0x65920080

# --- a resolution request as a CNRI client sends it -----------------------------------------

# HandleResolver with protocol 2.10, suggesting 2.11; flags PUBL|RRDG|RECU|CACR; asking
# 88.118.8/1 for index 1 or type URL. (RFC 3652 §2.2.1, §2.2.2, §3.2; Encoder.
# encodeResolutionRequest, writeHeader, encodeEnvelope.)
REQUEST = bytes.fromhex(
    "02" "0a"  # MajorVersion 2, MinorVersion 10
    "02"  # MessageFlag: no CP/EC/TC; suggested major 2 in the low bits (CNRI)
    "0b"  # suggested minor 11
    "00000000"  # SessionId
    "00000007"  # RequestId
    "00000000"  # SequenceNumber
    "0000003d"  # MessageLength: 24 header + 33 body + 4 credential
    "00000001"  # OpCode 1: resolution
    "00000000"  # ResponseCode 0: a request
    "19800000"  # OpFlag: RECU 0x10000000 | CACR 0x08000000 | PUBL 0x01000000 | RRDG 0x00800000
    "ffff"  # SiteInfoSerialNumber -1 (no site known)
    "00" "00"  # RecursionCount, reserved
    "6554a580"  # ExpirationTime
    "00000021"  # BodyLength 33
    "0000000a" "38382e3131382e382f31"  # Handle "88.118.8/1"
    "00000001" "00000001"  # IndexList [1]
    "00000001" "00000003" "55524c"  # TypeList ["URL"]
    "00000000"  # credential: none
)  # fmt: skip

VALUE_URL = hv.Value(1, "URL", "string", "http://a", 86400, TS)
VALUE_URL_BYTES = bytes.fromhex(
    "00000001"  # Index
    "65920080"  # Timestamp 2024-01-01T00:00:00Z
    "00"  # TTLType 0: relative
    "00015180"  # TTL 86400
    "0e"  # Permission: admin-read 8 | admin-write 4 | public-read 2 (1110)
    "00000003" "55524c"  # Type "URL"
    "00000008" "687474703a2f2f61"  # Data "http://a"
    "00000000"  # no references
)  # fmt: skip


def _response_head(length: int, opcode: int, code: int, flags: str, serial: str, body: int) -> str:
    return (
        "020a" "02" "0a"  # answered at 2.10 (ours, below the client's 2.11); we suggest 2.10
        "00000000" "00000007" "00000000" + f"{length:08x}"
        + f"{opcode:08x}{code:08x}" + flags + serial + "0000"
        + f"{NOW + 43200:08x}" + f"{body:08x}"
    )  # fmt: skip


def test_golden_request_decodes() -> None:
    request = wire.decode_request(REQUEST)
    assert request.envelope == wire.Envelope(2, 10, 0, 2, 11, 0, 7, 0, 61)
    assert request.header == wire.Header(1, 0, 0x19800000, 0xFFFF, 0, 0x6554A580, 33)
    assert (request.handle, request.indexes, request.types) == (b"88.118.8/1", (1,), ("URL",))
    assert request.signed_part == REQUEST[20:77]


def test_client_encodes_the_golden_request() -> None:
    """Ours differs from CNRI's only where it must: it suggests 2.10 and sets no expiry."""
    ours = client.resolution_request("88.118.8/1", request_id=7, indexes=[1], types=["URL"])
    theirs = bytearray(REQUEST)
    theirs[3] = 0x0A
    theirs[20 + 16 : 20 + 20] = bytes(4)
    assert ours == bytes(theirs)


def test_golden_value() -> None:
    assert wire.encode_value(VALUE_URL) == VALUE_URL_BYTES
    private = hv.Value(2, "SECRET", "string", "x", 60, TS, "1100")
    assert wire.encode_value(private)[13] == 0x0C


def test_golden_resolution_response() -> None:
    request = wire.decode_request(REQUEST)
    body = wire.resolution_body(request.handle, [VALUE_URL_BYTES])
    message = wire.response(request, 1, body, now=NOW, serial=1)
    digest = hashlib.sha256(REQUEST[20:77]).hexdigest()
    body_hex = "03" + digest + "0000000a38382e3131382e382f3100000001" + VALUE_URL_BYTES.hex()
    body_len = len(body_hex) // 2
    expected = (
        _response_head(24 + body_len + 4, 1, 1, "19800000", "0001", body_len)
        + body_hex + "00000000"
    )  # fmt: skip
    # flags: PUBL and CACR copied, RECU set (CNRI's default), RRDG with the SHA-256 digest
    assert message.hex() == expected
    answer = client.decode_response(message)
    assert answer.digest == bytes.fromhex(digest)
    assert answer.values == [VALUE_URL.to_json()]
    assert answer.handle == "88.118.8/1"


def test_golden_error_response() -> None:
    request = wire.decode_request(REQUEST)
    message = wire.response(request, 100, wire.error_body("Handle not found."), now=NOW)
    digest = hashlib.sha256(REQUEST[20:77]).hexdigest()
    body_hex = "03" + digest + "00000011" + b"Handle not found.".hex()
    body_len = len(body_hex) // 2
    head = _response_head(24 + body_len + 4, 1, 100, "19800000", "ffff", body_len)
    assert message.hex() == head + body_hex + "00000000"
    answer = client.decode_response(message)
    assert (answer.header.response_code, answer.message) == (100, "Handle not found.")


def test_golden_site_info_response() -> None:
    """Opcode 2: CNRI's generic request (a handle, here "/"), answered with the bare record."""
    request_bytes = client.resolution_request("/", request_id=7, opcode=2, flags=0)
    assert request_bytes.hex() == (
        "020a020a" "00000000" "00000007" "00000000" "00000021"
        "00000002" "00000000" "00000000" "ffff" "0000" "00000000" "00000005"
        "00000001" "2f" "00000000"
    )  # fmt: skip
    site = Site(serial_number=3)
    message = wire.response(wire.decode_request(request_bytes), 1, site.encode(), now=NOW)
    assert message[20 + 24 :] == site.encode() + bytes(4)
    assert message[20 + 8 : 20 + 12] == wire.FLAG_RECU.to_bytes(4, "big")
    assert client.decode_response(message).site == site


@pytest.mark.parametrize(
    ("value", "data_hex"),
    [
        # RFC 3651 §3.2.1, CNRI encodeAdminRecord: permissions u16, handle, index
        (
            hv.Value(100, "HS_ADMIN", "admin", {"handle": "0.NA/88.118.8", "index": 200,
                                                "permissions": "111111111111"}),
            "0fff" "0000000d" + b"0.NA/88.118.8".hex() + "000000c8",
        ),
        (
            hv.Value(100, "HS_ADMIN", "admin", {"handle": "0.NA/8", "index": 300,
                                                "permissions": "011111110011"}),
            "07f3" "00000006" + b"0.NA/8".hex() + "0000012c",
        ),
        # RFC 3651 §3.2.6, CNRI encodeValueReferenceList: count, then handle and index each
        (
            hv.Value(3, "HS_VLIST", "vlist", [{"handle": "88.118.8/a", "index": 300}]),
            "00000001" "0000000a" + b"88.118.8/a".hex() + "0000012c",
        ),
        (hv.Value(4, "BIN", "hex", "00ff10"), "00ff10"),
        (hv.Value(5, "BIN", "base64", "AP8Q"), "00ff10"),
        (hv.Value(6, "NOTE", "string", "中"), "e4b8ad"),
        (hv.Value(7, "HS_SITE", "site", {"servers": []}), Site().encode().hex()),
        (hv.Value(8, "HS_SITE", "site", {"servers": 1}), b'{"servers":1}'.hex()),  # not a site
    ],
)  # fmt: skip
def test_golden_value_data(value: hv.Value, data_hex: str) -> None:
    assert wire.value_data(value).hex() == data_hex


def test_admin_and_vlist_read_back_as_json() -> None:
    admin = {"handle": "0.NA/8", "index": 300, "permissions": "011111110011"}
    data = wire.value_data(hv.Value(1, "HS_ADMIN", "admin", admin))
    assert client.data_json("HS_ADMIN", data) == {"format": "admin", "value": admin}
    refs = [{"handle": "88.118.8/a", "index": 300}]
    data = wire.value_data(hv.Value(1, "HS_VLIST", "vlist", refs))
    assert client.data_json("HS_VLIST", data) == {"format": "vlist", "value": refs}
    assert client.data_json("BIN", b"\x00\xff") == {"format": "base64", "value": "AP8="}


def test_trailing_bytes_after_the_body_are_ignored() -> None:
    extended = bytearray(REQUEST[:-4] + b"extra-field" + REQUEST[-4:])
    extended[16:20] = struct.pack(">I", 61 + 11)
    request = wire.decode_request(bytes(extended))
    assert request.types == ("URL",) and request.signed_part == REQUEST[20:77]


# --- bad input -------------------------------------------------------------------------------


def _patched(at: int, raw: str) -> bytes:
    out = bytearray(REQUEST)
    out[at : at + len(raw) // 2] = bytes.fromhex(raw)
    return bytes(out)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (REQUEST[:19], "shorter than an envelope"),
        (REQUEST[:40], "envelope says 61 bytes follow, 20 do"),
        (_patched(16, "00000010"), "cannot hold a header"),
        (_patched(16, "7fffffff"), "over 262144"),  # a length that lies
        (_patched(20 + 20, "000000ff"), "body length 255"),
        (_patched(44, "000000ff"), "ends inside its handle"),
        (_patched(58, "40000000"), "index count"),
        (_patched(66, "00100000"), "type count"),
        (_patched(70, "0000ffff"), "ends inside its type"),
        (_patched(74, "ff"), "type is not UTF-8"),
    ],
)
def test_malformed_requests_are_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        wire.decode_request(data)


@given(st.binary(max_size=120))
def test_random_bytes_decode_or_protocol_error(data: bytes) -> None:
    try:
        wire.decode_request(data)
    except ProtocolError:
        pass
    try:
        client.decode_response(data)
    except ProtocolError:
        pass


@given(st.data())
def test_mutated_requests_decode_or_protocol_error(data: st.DataObject) -> None:
    raw = bytearray(REQUEST)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        wire.decode_request(bytes(raw[:cut]))
    except ProtocolError:
        pass


# --- round trips -----------------------------------------------------------------------------

_handles = st.text(min_size=1, max_size=40)
_types = st.lists(st.text(max_size=20), max_size=5)
_indexes = st.lists(st.integers(0, 2**32 - 1), max_size=5)


@given(_handles, _indexes, _types, st.integers(0, 2**32 - 1))
def test_request_round_trip(handle: str, indexes: list[int], types: list[str], rid: int) -> None:
    request = wire.decode_request(
        client.resolution_request(handle, request_id=rid, indexes=indexes, types=types)
    )
    assert request.handle.decode() == handle
    assert (request.indexes, request.types) == (tuple(indexes), tuple(types))
    assert request.envelope.request_id == rid


_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), max_size=30
)  # printable: read back as format string
_STRUCTURED = {"HS_ADMIN", "HS_VLIST", "HS_SITE", "HS_SITE.PREFIX"}
_values = st.builds(
    hv.Value,
    index=st.integers(1, 2**31 - 1),
    type=st.text(min_size=1, max_size=12).filter(lambda t: t.upper() not in _STRUCTURED),
    format=st.just("string"),
    data=_text,
    ttl=st.integers(0, 2**31 - 1),
    timestamp=st.sampled_from([TS, "2015-06-09T12:34:06Z"]),
    permissions=st.sampled_from(["1110", "1111", "1010", "0010"]),
)  # fmt: skip


@given(st.lists(_values, max_size=6), st.integers(1, 599))
def test_response_round_trip(values: list[hv.Value], code: int) -> None:
    request = wire.decode_request(client.resolution_request("88.1/x", request_id=1))
    body = wire.resolution_body(request.handle, [wire.encode_value(v) for v in values])
    if code != 1:
        body = wire.error_body("why")
    answer = client.decode_response(wire.response(request, code, body, now=NOW))
    assert answer.header.response_code == code
    if code == 1:
        assert answer.values == [v.to_json() for v in values]
    else:
        assert answer.message == "why"


def test_parse_via() -> None:
    assert client.parse_via("handle://127.0.0.1:2641") == ("127.0.0.1", 2641)
    assert client.parse_via("handle://[::1]:26") == ("::1", 26)
    assert client.parse_via("handle://node.example") == ("node.example", 2641)
    for bad in ("http://x:1", "handle://", "handle://x:99999", "handle://x/path"):
        with pytest.raises(ProtocolError, match="--via"):
            client.parse_via(bad)
