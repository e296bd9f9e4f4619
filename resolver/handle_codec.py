"""The Handle binary protocol (RFC 3652): messages as bytes, and values in their wire form.

A message is a 20-byte envelope, a 24-byte header, a body, and a credential
(RFC 3652 §2), all big-endian, laid out as CNRI's ``net.handle.hdllib.Encoder``
writes them::

    envelope  major u8 · minor u8 · flags u8 (0x80 compressed, 0x40 encrypted,
              0x20 truncated; low bits the suggested major) · suggested minor u8 ·
              session id u32 · request id u32 · sequence number u32 · message length u32
    header    opcode u32 · response code u32 · op flags u32 · site serial u16 ·
              recursion count u8 · reserved u8 · expiration u32 · body length u32
    body      per opcode; a response to a request with the RRDG flag starts with a digest
              of the request's header and body (hash code u8, then the digest)
    credential  u32 length (0: unsigned), then the signature

Strings and byte arrays are a u32 length and the bytes (UTF-8 for text). A
resolution request's body is the handle, a u32 count of indexes and the indexes,
a u32 count of types and the types; bytes after it are ignored (some SDKs append
fields). This module only encodes and decodes: it knows nothing of sockets.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

from registry import keys
from registry import values as hv
from registry.errors import ClientError, InvalidValue, ProtocolError
from registry.site import Site

ENVELOPE_SIZE = 20
HEADER_SIZE = 24
MAX_MESSAGE = 262144
"""Largest message accepted or sent (CNRI ``Common.MAX_MESSAGE_LENGTH``)."""
MAX_UDP = 512
"""Largest datagram (CNRI ``Common.MAX_UDP_PACKET_SIZE``): bigger answers go over TCP."""
VERSION = (2, 10)
"""The protocol version this node speaks (CNRI's compatibility version)."""
MAX_LIST = 2048
"""Most indexes, types or values in one message (CNRI ``MAX_HANDLE_VALUES``)."""

OC_RESOLUTION, OC_GET_SITE_INFO = 1, 2
RC_SUCCESS, RC_ERROR, RC_TOO_BUSY, RC_PROTOCOL_ERROR, RC_NOT_SUPPORTED = 1, 2, 3, 4, 5

ENV_COMPRESSED, ENV_ENCRYPTED, ENV_TRUNCATED = 0x80, 0x40, 0x20
FLAG_AUTH, FLAG_CERT, FLAG_ENCR, FLAG_RECU = 1 << 31, 1 << 30, 1 << 29, 1 << 28
FLAG_CACR, FLAG_CONT, FLAG_KPAL, FLAG_PUBL, FLAG_RRDG = 1 << 27, 1 << 26, 1 << 25, 1 << 24, 1 << 23
FLAG_DNRF = 1 << 20
_ECHOED = FLAG_AUTH | FLAG_CERT | FLAG_ENCR | FLAG_CACR | FLAG_PUBL | FLAG_DNRF
"""Flags a response copies from its request (CNRI ``AbstractMessage.takeValuesFrom``)."""
HASH_MD5, HASH_SHA1, HASH_SHA256 = 1, 2, 3
_SHA1, _SHA256 = bytes([HASH_SHA1]), bytes([HASH_SHA256])

_ENVELOPE = struct.Struct(">BBBBIIII")
_HEADER = struct.Struct(">IIIHBxII")
_FRAME = struct.Struct(">BBBBIIIIIIIHBxII")
"""Envelope and header together: what every response starts with."""
_U32 = struct.Struct(">I")
VALUE_HEAD = struct.Struct(">IIBIB")
_EXPIRY = 43200
"""Responses say they are good for twelve hours, as CNRI's do."""


class OperationNotSupported(ClientError):
    """Operation not supported over the Handle protocol on this node."""

    response_code = 5
    http_status = 501


class Envelope(NamedTuple):
    major: int = VERSION[0]
    minor: int = VERSION[1]
    flags: int = 0
    suggest_major: int = VERSION[0]
    suggest_minor: int = VERSION[1]
    session_id: int = 0
    request_id: int = 0
    sequence: int = 0
    length: int = 0

    def encode(self) -> bytes:
        return _ENVELOPE.pack(
            self.major, self.minor, self.flags | (self.suggest_major & 0x03), self.suggest_minor,
            self.session_id, self.request_id, self.sequence, self.length,
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        if len(data) < ENVELOPE_SIZE:
            raise ProtocolError(f"message of {len(data)} bytes is shorter than an envelope")
        major, minor, flags, s_minor, session, request, seq, length = _ENVELOPE.unpack_from(data)
        s_major = flags & 0x03
        if s_major == 0:
            s_major, s_minor = major, minor
        return cls(major, minor, flags & 0xE0, s_major, s_minor, session, request, seq, length)


class Header(NamedTuple):
    opcode: int
    response_code: int = 0
    flags: int = 0
    serial: int = 0xFFFF
    recursion: int = 0
    expiration: int = 0
    body_length: int = 0

    @classmethod
    def decode(cls, data: bytes, offset: int = ENVELOPE_SIZE) -> Header:
        return cls._make(_HEADER.unpack_from(data, offset))

    def encode(self) -> bytes:
        return _HEADER.pack(*self)


class Request(NamedTuple):
    """A decoded request: its envelope and header, and the resolution body when it has one."""

    envelope: Envelope
    header: Header
    signed_part: bytes
    """The header and body as received: what a request digest covers."""
    handle: bytes = b""
    indexes: tuple[int, ...] = ()
    types: tuple[str, ...] = ()


# --- reading -----------------------------------------------------------------------------------


class Reader:
    """Bounds-checked big-endian reads; every failure is a ``ProtocolError``."""

    __slots__ = ("data", "at", "end")

    def __init__(self, data: bytes, at: int = 0, end: int | None = None) -> None:
        self.data = data
        self.at = at
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        end = self.at + n
        if n < 0 or end > self.end:
            raise ProtocolError(f"message ends inside its {what}")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def array(self, what: str) -> bytes:
        return self.take(self.u32(what), what)

    def text(self, what: str) -> str:
        try:
            return self.array(what).decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8") from None

    def count(self, what: str, smallest: int) -> int:
        n = self.u32(what)
        if n > MAX_LIST or n * smallest > self.end - self.at:
            raise ProtocolError(f"{what} count {n} is more than the message holds")
        return n


def split_message(data: bytes) -> tuple[Envelope, Header, Reader]:
    """The envelope, the header and a reader over the body of one message."""
    envelope = Envelope.decode(data)
    if envelope.length > MAX_MESSAGE:
        raise ProtocolError(f"message length {envelope.length} is over {MAX_MESSAGE}")
    if envelope.length > len(data) - ENVELOPE_SIZE:
        raise ProtocolError(
            f"envelope says {envelope.length} bytes follow, {len(data) - ENVELOPE_SIZE} do"
        )
    if envelope.length < HEADER_SIZE:
        raise ProtocolError(f"message length {envelope.length} cannot hold a header")
    header = Header.decode(data)
    body_start = ENVELOPE_SIZE + HEADER_SIZE
    if header.body_length > envelope.length - HEADER_SIZE:
        raise ProtocolError(f"body length {header.body_length} is more than the message holds")
    return envelope, header, Reader(data, body_start, body_start + header.body_length)


def decode_request(data: bytes) -> Request:
    """Decode a request; bytes after its body (a credential, extra fields) are ignored."""
    plain = _plain_resolution(data)
    return plain if plain is not None else _decode_request(data)


def _plain_resolution(data: bytes) -> Request | None:
    """The common case in one pass: a well-formed resolution request without filters.
    None for anything else, which the general decoder reads (and explains when it fails)."""
    if len(data) < ENVELOPE_SIZE + HEADER_SIZE + 12:
        return None
    fields = _FRAME.unpack_from(data)
    length, opcode, body_length = fields[7], fields[8], fields[14]
    end = ENVELOPE_SIZE + HEADER_SIZE + body_length
    if opcode != OC_RESOLUTION or length > MAX_MESSAGE or end > ENVELOPE_SIZE + length:
        return None
    if length > len(data) - ENVELOPE_SIZE or body_length > length - HEADER_SIZE:
        return None
    at = ENVELOPE_SIZE + HEADER_SIZE + 4 + _U32.unpack_from(data, 44)[0]
    if at + 8 > end or data[at : at + 8] != b"\x00" * 8:
        return None
    flags, s_minor = fields[2], fields[3]
    s_major = flags & 0x03
    if s_major == 0:
        s_major, s_minor = fields[0], fields[1]
    envelope = Envelope(fields[0], fields[1], flags & 0xE0, s_major, s_minor, *fields[4:8])
    return Request(envelope, Header._make(fields[8:]), data[ENVELOPE_SIZE:end], data[48:at])


def _decode_request(data: bytes) -> Request:
    envelope, header, body = split_message(data)
    signed = data[ENVELOPE_SIZE : body.end]
    if header.opcode != OC_RESOLUTION:
        return Request(envelope, header, signed)
    handle = body.array("handle")
    n = body.count("index", 4)
    indexes = struct.unpack_from(f">{n}I", body.take(4 * n, "index")) if n else ()
    n = body.count("type", 4)
    types = tuple(body.text("type") for _ in range(n)) if n else ()
    return Request(envelope, header, signed, handle, indexes, types)


# --- handle values -----------------------------------------------------------------------------


def pack_bytes(raw: bytes) -> bytes:
    return _U32.pack(len(raw)) + raw


def _epoch(timestamp: str) -> int:
    if not timestamp:
        return 0
    try:
        moment = datetime.datetime.fromisoformat(timestamp)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0, min(int(moment.timestamp()), 2**32 - 1))


def _reference(ref: Mapping[str, Any]) -> bytes:
    return pack_bytes(str(ref.get("handle", "")).encode()) + _U32.pack(int(ref.get("index", 0)))


def admin_bytes(data: Mapping[str, Any]) -> bytes:
    """HS_ADMIN (RFC 3651 §3.2.1): permissions u16, admin handle, admin index.

    The JSON string has bit 11 first, as CNRI's ``GsonUtility`` writes it, so it
    reads directly as the 16-bit mask (0x0001 add handle … 0x0800 list handles).
    """
    return struct.pack(">H", int(data.get("permissions", "1" * 12), 2)) + _reference(data)


def vlist_bytes(data: Sequence[Mapping[str, Any]]) -> bytes:
    """HS_VLIST (RFC 3651 §3.2.6): a u32 count of (handle, index) references."""
    return _U32.pack(len(data)) + b"".join(_reference(r) for r in data)


def _key_bytes(data: Any) -> bytes:
    """A JWK as the Handle key encoding when it is RSA or DSA; otherwise its JSON text."""
    try:
        key = keys.parse_jwk(data)
        if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
            return keys.encode_handle_key(key)
    except (ValueError, TypeError):
        pass
    return data.encode() if isinstance(data, str) else orjson.dumps(data)


def value_data(value: hv.Value) -> bytes:
    """A value's data as bytes on the wire."""
    fmt, data = value.format, value.data
    try:
        if fmt == "string":
            return str(data).encode()
        if fmt == "base64":
            return base64.b64decode(data)
        if fmt == "hex":
            return bytes.fromhex(data)
        if fmt == "admin":
            return admin_bytes(data)
        if fmt == "vlist":
            return vlist_bytes(data)
        if fmt == "site":
            return Site.from_json(data).encode()
        if fmt == "key":
            return _key_bytes(data)
    except (InvalidValue, ValueError, TypeError, AttributeError, binascii.Error):
        pass  # stored before it was checked: sent as its JSON text rather than not at all
    return data.encode() if isinstance(data, str) else orjson.dumps(data)


def encode_value(value: hv.Value) -> bytes:
    """One handle value (RFC 3652 §3.1): index, timestamp, TTL type 0 (relative), TTL,
    permissions, type, data, and no references."""
    perms = int(value.permissions, 2)
    head = VALUE_HEAD.pack(value.index, _epoch(value.timestamp), 0, value.ttl, perms)
    return (
        head + pack_bytes(value.type.encode()) + pack_bytes(value_data(value)) + b"\x00\x00\x00\x00"
    )


# --- writing responses -------------------------------------------------------------------------


def _answer_version(request: Request) -> tuple[int, int]:
    """The request's suggested version, but no newer than ours (CNRI ``AbstractResponse``)."""
    env = request.envelope
    return min((env.suggest_major, env.suggest_minor), VERSION)


def request_digest(request: Request, version: tuple[int, int] | None = None) -> bytes:
    """Hash code and digest of the request for RRDG: SHA-256 from 2.7, SHA-1 before."""
    if (version or _answer_version(request)) >= (2, 7):
        return _SHA256 + hashlib.sha256(request.signed_part).digest()
    return _SHA1 + hashlib.sha1(request.signed_part).digest()


def response(
    request: Request,
    response_code: int,
    body: bytes = b"",
    *,
    now: int,
    serial: int = 0xFFFF,
    truncated: bool = False,
) -> bytes:
    """A whole response message (envelope, header, body, empty credential) to ``request``."""
    req = request.header
    flags = (req.flags & _ECHOED) | FLAG_RECU
    major, minor = version = _answer_version(request)
    if req.flags & FLAG_RRDG and version >= (2, 1):  # 2.0 had no flag for it
        flags |= FLAG_RRDG
        body = request_digest(request, version) + body
    env = request.envelope
    head = _FRAME.pack(
        major, minor, (ENV_TRUNCATED if truncated else 0) | VERSION[0], VERSION[1],
        env.session_id, env.request_id, 0, HEADER_SIZE + len(body) + 4,
        req.opcode, response_code, flags, serial & 0xFFFF, req.recursion, now + _EXPIRY, len(body),
    )  # fmt: skip
    return head + body + b"\x00\x00\x00\x00"


def values_part(encoded_values: Iterable[bytes]) -> bytes:
    """The count and the values of a resolution response's body."""
    chosen = list(encoded_values)
    return _U32.pack(len(chosen)) + b"".join(chosen)


def resolution_body(handle: bytes, encoded_values: Iterable[bytes]) -> bytes:
    return pack_bytes(handle) + values_part(encoded_values)


def error_body(message: str) -> bytes:
    return pack_bytes(message.encode()[:1024])
