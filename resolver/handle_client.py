"""The client side of the Handle protocol: building requests, reading responses, asking a server.

``idnode resolve --via handle://HOST:PORT`` and the tests use it. A query goes over
UDP first and again over TCP when the answer comes back truncated (or with
``tcp=True`` straight away), as RFC 3652 §2.2.1 asks of clients.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from registry import values as hv
from registry.errors import ProtocolError
from registry.site import Site
from resolver.handle_codec import (
    ENV_TRUNCATED,
    ENVELOPE_SIZE,
    FLAG_CACR,
    FLAG_PUBL,
    FLAG_RECU,
    FLAG_RRDG,
    HASH_MD5,
    HASH_SHA1,
    HASH_SHA256,
    HEADER_SIZE,
    MAX_MESSAGE,
    OC_GET_SITE_INFO,
    OC_RESOLUTION,
    RC_SUCCESS,
    VALUE_HEAD,
    Envelope,
    Header,
    Reader,
    pack_bytes,
    split_message,
)

_U32 = struct.Struct(">I")
_request_ids = itertools.count(1)


@dataclass(slots=True)
class Response:
    """A decoded response (for clients and tests)."""

    envelope: Envelope
    header: Header
    handle: str = ""
    values: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    site: Site | None = None
    digest: bytes = b""


# --- requests and decoding responses (the client side) -----------------------------------------


def resolution_request(
    handle: str,
    *,
    request_id: int,
    indexes: Sequence[int] = (),
    types: Sequence[str] = (),
    flags: int = FLAG_PUBL | FLAG_RRDG | FLAG_RECU | FLAG_CACR,
    opcode: int = OC_RESOLUTION,
) -> bytes:
    """A request message as CNRI's ``encodeResolutionRequest`` lays it out (opcode 2: the
    generic request ``encodeGenericRequest`` writes, a handle only)."""
    body = pack_bytes(handle.encode())
    if opcode == OC_RESOLUTION:
        body += _U32.pack(len(indexes)) + b"".join(_U32.pack(i) for i in indexes)
        body += _U32.pack(len(types)) + b"".join(pack_bytes(t.encode()) for t in types)
    header = Header(opcode, 0, flags, 0xFFFF, 0, 0, len(body)).encode()
    envelope = Envelope(request_id=request_id, length=HEADER_SIZE + len(body) + 4)
    return envelope.encode() + header + body + b"\x00\x00\x00\x00"


def decode_response(data: bytes) -> Response:
    """Decode a response message; anything malformed raises ``ProtocolError``."""
    envelope, header, body = split_message(data)
    out = Response(envelope, header)
    if envelope.flags & ENV_TRUNCATED:  # the header alone: ask again over TCP
        return out
    if header.flags & FLAG_RRDG:
        code = body.u8("request digest")
        size = {HASH_SHA256: 32, HASH_SHA1: 20, HASH_MD5: 16}.get(code)
        if size is None:
            raise ProtocolError(f"unknown request digest type {code}")
        out.digest = body.take(size, "request digest")
    if header.response_code == RC_SUCCESS and header.opcode == OC_RESOLUTION:
        out.handle = body.text("handle")
        out.values = [read_value(body) for _ in range(body.count("value", 23))]
    elif header.response_code == RC_SUCCESS and header.opcode == OC_GET_SITE_INFO:
        out.site = Site.decode(body.take(body.end - body.at, "site"))
    elif header.response_code != RC_SUCCESS and body.at < body.end:
        out.message = body.text("error message")
    return out


def read_value(body: Reader) -> dict[str, Any]:
    """One value in the JSON form the HTTP API answers."""
    index, stamp, ttl_type, ttl, perms = VALUE_HEAD.unpack(body.take(14, "value"))
    vtype = body.text("value type")
    data = body.array("value data")
    for _ in range(body.count("reference", 8)):
        body.array("reference handle")
        body.u32("reference index")
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    out: dict[str, Any] = {
        "index": index,
        "type": vtype,
        "data": data_json(vtype, data),
        "ttl": ttl if ttl_type == 0 else moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    permissions = format(perms & 0x0F, "04b")
    if permissions != hv.DEFAULT_PERMISSIONS:
        out["permissions"] = permissions
    return out


def data_json(vtype: str, data: bytes) -> dict[str, Any]:
    """Binary data as ``{format, value}``, by type as CNRI's ``GsonUtility.serializeData``."""
    kind = vtype.upper()
    try:
        if kind == "HS_ADMIN":
            r = Reader(data)
            perms = struct.unpack(">H", r.take(2, "admin"))[0]
            ref = {"handle": r.text("admin handle"), "index": r.u32("admin index")}
            return {"format": "admin", "value": {**ref, "permissions": format(perms, "012b")}}
        if kind == "HS_VLIST":
            r = Reader(data)
            refs = [
                {"handle": r.text("handle"), "index": r.u32("index")}
                for _ in range(r.count("reference", 8))
            ]
            return {"format": "vlist", "value": refs}
        if kind in ("HS_SITE", "HS_SITE.PREFIX"):
            return {"format": "site", "value": Site.decode(data).to_json()}
    except ProtocolError:
        pass
    try:
        text = data.decode()
        if not any(ord(c) < 32 and c not in "\t\r\n" for c in text):
            return {"format": "string", "value": text}
    except UnicodeDecodeError:
        pass
    return {"format": "base64", "value": base64.b64encode(data).decode()}


# --- asking a server ---------------------------------------------------------------------------


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def exchange_udp(host: str, port: int, message: bytes, timeout: float) -> bytes:
    """Send one datagram and wait for the first one back."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Datagram, remote_addr=(host, port))
    try:
        transport.sendto(message)
        return await asyncio.wait_for(proto.answer, timeout)
    finally:
        transport.close()


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One whole message from a stream: the envelope, then as many bytes as it announces."""
    envelope = await reader.readexactly(ENVELOPE_SIZE)
    length = Envelope.decode(envelope).length
    if length > MAX_MESSAGE:
        raise ProtocolError(f"server announced a message of {length} bytes")
    return envelope + await reader.readexactly(length)


async def exchange_tcp(host: str, port: int, message: bytes, timeout: float) -> bytes:
    """Send one message over a new TCP connection and read one back."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(message)
            await writer.drain()
            return await read_message(reader)
        finally:
            writer.close()


async def query(
    host: str,
    port: int,
    handle: str,
    *,
    types: Sequence[str] = (),
    indexes: Sequence[int] = (),
    tcp: bool = False,
    opcode: int = OC_RESOLUTION,
    timeout: float = 5.0,
) -> Response:
    """Resolve ``handle`` (or ask for the site information) at a Handle server."""
    message = resolution_request(
        handle, request_id=next(_request_ids), types=types, indexes=indexes, opcode=opcode
    )
    if not tcp:
        answer = decode_response(await exchange_udp(host, port, message, timeout))
        if not answer.envelope.flags & ENV_TRUNCATED:
            return answer
    return decode_response(await exchange_tcp(host, port, message, timeout))


def as_json(answer: Response, handle: str) -> dict[str, Any]:
    """The answer in the JSON form the HTTP API gives."""
    code = answer.header.response_code
    if code != RC_SUCCESS:
        return {"responseCode": code, "handle": handle, "message": answer.message}
    if answer.site is not None:
        return {"responseCode": code, "site": answer.site.to_json()}
    return {"responseCode": code, "handle": answer.handle, "values": answer.values}


# --- ``idnode resolve --via handle://HOST:PORT`` ------------------------------------------------


def parse_via(via: str) -> tuple[str, int]:
    """``handle://HOST[:PORT]`` (port 2641 when left out) as (host, port)."""
    parts = urlsplit(via)
    if parts.scheme != "handle" or not parts.hostname or parts.path not in ("", "/"):
        raise ProtocolError(f"--via must look like handle://HOST:PORT, not {via!r}")
    try:
        port = parts.port or 2641
    except ValueError:
        raise ProtocolError(f"--via {via!r} has no valid port") from None
    return parts.hostname, port


def add_command(sub: Any) -> None:
    """The ``resolve`` subcommand."""
    cmd = sub.add_parser("resolve", help="resolve a handle at a Handle-protocol server")
    cmd.add_argument("handle", help="the handle, e.g. 88.118.8/ABC")
    cmd.add_argument("--via", required=True, help="server to ask: handle://HOST:PORT")
    cmd.add_argument("--type", action="append", default=[], help="only values of this type")
    cmd.add_argument("--index", action="append", type=int, default=[], help="only this index")
    cmd.add_argument("--tcp", action="store_true", help="ask over TCP (default: UDP first)")
    cmd.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    cmd.set_defaults(func=run_resolve)


def run_resolve(config: Any, args: Any) -> int:
    """Print the answer as the HTTP API's JSON; exit 1 unless responseCode is 1."""
    host, port = parse_via(args.via)
    work = query(
        host, port, args.handle, types=args.type, indexes=args.index, tcp=args.tcp,
        timeout=args.timeout,
    )  # fmt: skip
    try:
        answer = asyncio.run(work)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        print(f"idnode: no answer from {args.via}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    print(orjson.dumps(as_json(answer, args.handle), option=orjson.OPT_INDENT_2).decode())
    return 0 if answer.header.response_code == RC_SUCCESS else 1
