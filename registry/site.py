"""HS_SITE: a Handle service site, in its binary form (RFC 3651 §3.2.2) and its JSON form.

The binary layout, big-endian, as CNRI's ``Encoder.encodeSiteInfoRecord`` writes it
(protocol 2.x, with the errata's primary mask and hash filter)::

    version u16 · protocol major u8 · minor u8 · serial u16 · primary mask u8
    (0x80 primary, 0x40 multi-primary) · hash option u8 (0 prefix, 1 suffix, 2 whole
    handle) · hash filter (u32 length + UTF-8) · attribute count u32, each name and
    value (u32 length + UTF-8) · server count u32, each:
        server id u32 · address 16 bytes · public key (u32 length + bytes) ·
        interface count u32, each: type u8 (1 admin, 2 query, 3 both) ·
        protocol u8 (0 UDP, 1 TCP, 2 HTTP, 3 HTTPS) · port u32

The JSON form is the one HANDLE.NET's REST API answers for ``{"format": "site"}``
(CNRI ``GsonUtility.SiteInfoGsonTypeAdapter``): ``version``, ``protocolVersion``
(``"2.10"``), ``serialNumber``, ``primarySite``, ``multiPrimary``, ``hashOption``
(left out when 2), ``hashFilter`` (left out when empty), ``attributes``
(``[{"name", "value"}]``), ``servers`` (``serverId``, ``address``, ``publicKey``
as ``{"format": "base64", "value"}``, ``interfaces`` of ``{"query", "admin",
"protocol", "port"}``). An IPv4 address is stored as CNRI stores it: its four
bytes at the end of sixteen zero bytes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidValue, ProtocolError

FORMAT_VERSION = 1
"""``SITE_RECORD_FORMAT_VERSION`` in CNRI's ``Common``."""
PROTOCOL_VERSION = (2, 10)
PRIMARY = 0x80
MULTI_PRIMARY = 0x40
HASH_BY_PREFIX, HASH_BY_SUFFIX, HASH_BY_ALL = 0, 1, 2
ADMIN, QUERY = 1, 2
PROTOCOLS = {0: "UDP", 1: "TCP", 2: "HTTP", 3: "HTTPS"}
_PROTOCOL_CODES = {name: code for code, name in PROTOCOLS.items()}
MAX_ITEMS = 1024
"""Attributes, servers or interfaces one site may list (CNRI allows 2^20; no site needs it)."""

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">HBBHBB")
_INTERFACE = struct.Struct(">BBI")


@dataclass(frozen=True, slots=True)
class Interface:
    """One way to reach a server: what it answers, over which protocol, on which port."""

    type: int = ADMIN | QUERY
    protocol: int = 1
    port: int = 2641

    def to_json(self) -> dict[str, Any]:
        return {
            "query": bool(self.type & QUERY),
            "admin": bool(self.type & ADMIN),
            "protocol": PROTOCOLS.get(self.protocol, self.protocol),
            "port": self.port,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Interface:
        obj = _object(raw, "interface")
        kind = (QUERY if _bool(obj, "query") else 0) | (ADMIN if _bool(obj, "admin") else 0)
        proto = obj.get("protocol")
        if isinstance(proto, str) and proto.upper() in _PROTOCOL_CODES:
            code = _PROTOCOL_CODES[proto.upper()]
        elif type(proto) is int and 0 <= proto <= 255:
            code = proto
        else:
            raise InvalidValue("site: interface protocol must be UDP, TCP, HTTP, HTTPS or 0-255")
        return cls(kind, code, _int(obj.get("port"), "interface port", 65535))


@dataclass(frozen=True, slots=True)
class Server:
    """One server of a site: its id, 16-byte address, public key and interfaces."""

    server_id: int
    address: bytes
    public_key: bytes = b""
    interfaces: tuple[Interface, ...] = ()

    @property
    def address_text(self) -> str:
        """Dotted IPv4 when the first twelve bytes are zero (CNRI's form), else IPv6."""
        if self.address[:12] == bytes(12):
            return str(ipaddress.IPv4Address(self.address[12:]))
        return str(ipaddress.IPv6Address(self.address))

    def to_json(self) -> dict[str, Any]:
        return {
            "serverId": self.server_id,
            "address": self.address_text,
            "publicKey": {"format": "base64", "value": base64.b64encode(self.public_key).decode()},
            "interfaces": [i.to_json() for i in self.interfaces],
        }

    @classmethod
    def from_json(cls, raw: Any) -> Server:
        obj = _object(raw, "server")
        interfaces = _list(obj.get("interfaces", []), "server interfaces")
        return cls(
            server_id=_int(obj.get("serverId", 0), "serverId", 2**32 - 1),
            address=address_bytes(obj.get("address")),
            public_key=_key_bytes(obj.get("publicKey")),
            interfaces=tuple(Interface.from_json(i) for i in interfaces),
        )


@dataclass(frozen=True, slots=True)
class Site:
    """An HS_SITE value: a service site's servers and how handles are spread over them."""

    serial_number: int = 1
    servers: tuple[Server, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    primary: bool = False
    multi_primary: bool = False
    hash_option: int = HASH_BY_ALL
    hash_filter: str = ""
    version: int = FORMAT_VERSION
    protocol_version: tuple[int, int] = PROTOCOL_VERSION

    def encode(self) -> bytes:
        mask = (PRIMARY if self.primary else 0) | (MULTI_PRIMARY if self.multi_primary else 0)
        major, minor = self.protocol_version
        out = [_HEAD.pack(self.version, major, minor, self.serial_number, mask, self.hash_option)]
        out.append(_string(self.hash_filter.encode()))
        out.append(_U32.pack(len(self.attributes)))
        for name, value in self.attributes:
            out += [_string(name.encode()), _string(value.encode())]
        out.append(_U32.pack(len(self.servers)))
        for server in self.servers:
            out += [_U32.pack(server.server_id), server.address, _string(server.public_key)]
            out.append(_U32.pack(len(server.interfaces)))
            out += [_INTERFACE.pack(i.type, i.protocol, i.port) for i in server.interfaces]
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> Site:
        """Read a binary HS_SITE; anything malformed raises ``ProtocolError``."""
        return _Reader(data).site()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "protocolVersion": f"{self.protocol_version[0]}.{self.protocol_version[1]}",
            "serialNumber": self.serial_number,
            "primarySite": self.primary,
            "multiPrimary": self.multi_primary,
        }
        if self.hash_option != HASH_BY_ALL:
            out["hashOption"] = self.hash_option
        if self.hash_filter:
            out["hashFilter"] = self.hash_filter
        out["attributes"] = [{"name": n, "value": v} for n, v in self.attributes]
        out["servers"] = [s.to_json() for s in self.servers]
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Site:
        """Read the JSON form; anything malformed raises ``InvalidValue``."""
        obj = _object(raw, "site")
        filt = obj.get("hashFilter", "")
        if not isinstance(filt, str):
            raise InvalidValue("site: hashFilter must be a string")
        return cls(
            serial_number=_int(obj.get("serialNumber", 1), "serialNumber", 65535),
            servers=tuple(Server.from_json(s) for s in _list(obj.get("servers", []), "servers")),
            attributes=_attributes(obj.get("attributes", [])),
            primary=_bool(obj, "primarySite"),
            multi_primary=_bool(obj, "multiPrimary"),
            hash_option=_int(obj.get("hashOption", HASH_BY_ALL), "hashOption", 255),
            hash_filter=filt,
            version=_int(obj.get("version", FORMAT_VERSION), "version", 65535),
            protocol_version=_protocol_version(obj.get("protocolVersion", "2.10")),
        )


# --- binary ------------------------------------------------------------------------------------


def _string(raw: bytes) -> bytes:
    return _U32.pack(len(raw)) + raw


class _Reader:
    """Bounds-checked reads over one HS_SITE buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.at + n
        if end > len(self.data):
            raise ProtocolError(f"HS_SITE: truncated in {what}")
        chunk = bytes(self.data[self.at : end])
        self.at = end
        return chunk

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def count(self, what: str, item_size: int) -> int:
        n = self.u32(what)
        if n > MAX_ITEMS or n * item_size > len(self.data) - self.at:
            raise ProtocolError(f"HS_SITE: {what} count {n} is more than the data holds")
        return n

    def text(self, what: str) -> str:
        raw = self.take(self.count(what, 1), what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"HS_SITE: {what} is not UTF-8") from None

    def interface(self) -> Interface:
        kind, proto, port = _INTERFACE.unpack(self.take(_INTERFACE.size, "interface"))
        if kind > ADMIN | QUERY or port > 65535:
            raise ProtocolError(f"HS_SITE: interface type {kind} or port {port} out of range")
        return Interface(kind, proto, port)

    def server(self) -> Server:
        server_id = self.u32("server id")
        address = self.take(16, "server address")
        key = self.take(self.count("public key", 1), "public key")
        interfaces = tuple(self.interface() for _ in range(self.count("interface", 6)))
        return Server(server_id, address, key, interfaces)

    def site(self) -> Site:
        version, major, minor, serial, mask, hash_option = _HEAD.unpack(self.take(8, "header"))
        hash_filter = self.text("hash filter")
        attributes = tuple(
            (self.text("attribute name"), self.text("attribute value"))
            for _ in range(self.count("attribute", 8))
        )
        servers = tuple(self.server() for _ in range(self.count("server", 28)))
        if self.at != len(self.data):
            raise ProtocolError(f"HS_SITE: {len(self.data) - self.at} bytes after the record")
        return Site(
            serial, servers, attributes, bool(mask & PRIMARY), bool(mask & MULTI_PRIMARY),
            hash_option, hash_filter, version, (major, minor),
        )  # fmt: skip


# --- JSON --------------------------------------------------------------------------------------


def address_bytes(raw: Any) -> bytes:
    """A server address as 16 bytes: IPv4 right-aligned in zeros, as CNRI's ``fill16``."""
    if not isinstance(raw, str):
        raise InvalidValue("site: server address must be an IPv4 or IPv6 address string")
    try:
        addr = ipaddress.ip_address(raw.strip())
    except ValueError:
        raise InvalidValue(f"site: {raw!r} is not an IPv4 or IPv6 address") from None
    return addr.packed.rjust(16, b"\x00")


def _key_bytes(raw: Any) -> bytes:
    if raw is None or raw == "":
        return b""
    if isinstance(raw, str):  # the legacy form: hex
        raw = {"format": "hex", "value": raw}
    obj = _object(raw, "publicKey")
    fmt, value = obj.get("format"), obj.get("value")
    if fmt not in ("base64", "hex") or not isinstance(value, str):
        raise InvalidValue("site: publicKey must be {format: base64 or hex, value: string}")
    try:
        return base64.b64decode(value, validate=True) if fmt == "base64" else bytes.fromhex(value)
    except (binascii.Error, ValueError):
        raise InvalidValue(f"site: publicKey is not valid {fmt}") from None


def _attributes(raw: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, Mapping):  # CNRI also reads {"name": "value" or ["v1", "v2"]}
        pairs = [(k, v) for k, vs in raw.items() for v in (vs if isinstance(vs, list) else [vs])]
    else:
        items = [_object(a, "attribute") for a in _list(raw, "attributes")]
        pairs = [(a.get("name"), a.get("value")) for a in items]
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidValue("site: attribute names and values must be strings")
    return tuple(pairs)


def _protocol_version(raw: Any) -> tuple[int, int]:
    parts = raw.split(".") if isinstance(raw, str) else []
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise InvalidValue("site: protocolVersion must be 'major.minor', e.g. '2.10'")
    major, minor = int(parts[0]), int(parts[1])
    if major > 255 or minor > 255:
        raise InvalidValue("site: protocolVersion numbers must be 0-255")
    return major, minor


def _object(raw: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidValue(f"site: {what} must be a JSON object")
    return raw


def _list(raw: Any, what: str) -> list[Any]:
    if not isinstance(raw, list):
        raise InvalidValue(f"site: {what} must be an array")
    if len(raw) > MAX_ITEMS:
        raise InvalidValue(f"site: at most {MAX_ITEMS} {what}")
    return raw


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InvalidValue(f"site: {key} must be true or false")
    return value


def _int(raw: Any, what: str, top: int) -> int:
    if type(raw) is not int or not 0 <= raw <= top:
        raise InvalidValue(f"site: {what} must be an integer from 0 to {top}")
    return raw
