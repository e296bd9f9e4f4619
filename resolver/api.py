"""The Handle JSON REST API: ``/api/handles`` and ``/api/prefixes``.

Handlers parse, call the pipeline (reads) or the registry (writes), and encode;
every failure is raised as an error of the one tree and answered as JSON by the
error middleware in ``resolver.app``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from registry import handle as hs
from registry import values as hv
from registry.errors import (
    AuthenticationNeeded,
    ClientError,
    HandleNotFound,
    InternalError,
    InvalidValue,
    NotAnAdmin,
    ProtocolError,
    RequestTimeout,
    UnsupportedMediaType,
    ValuesNotFound,
)
from registry.registry import Registry
from registry.store import Store
from resolver.authn import Authenticator
from resolver.cache import Cache, Entry
from resolver.config import Config
from resolver.invalidation import Listener
from resolver.metrics import Metrics
from resolver.pipeline import Stage, etag_matches, public_body, resolve, unanswerable

API_PREFIX = "/api/handles/"
HANDLE_TEXT = web.RequestKey("handle_text", str)


@dataclass(slots=True)
class Startup:
    """How far the process got bringing the node up (see ``resolver.app.bring_up``)."""

    done: bool = False
    problem: str = "starting"
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Node:
    """What the handlers need, built once per process."""

    store: Store
    registry: Registry
    pipeline: Stage
    metrics: Metrics
    authn: Authenticator
    listener: Listener | None = None
    cache: Cache | None = None
    config: Config = Config()
    startup: Startup = field(default_factory=Startup)


NODE = web.AppKey("node", Node)


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_document(
    exc: ClientError | InternalError, handle: str, *, write: bool
) -> tuple[int, bytes]:
    """HTTP status and JSON body of an error: ``responseCode``, ``handle``, ``message``."""
    if isinstance(exc, ClientError):
        status, message = exc.status_for(write=write), exc.message
    else:
        status, message = exc.http_status, "internal server error"
    body: dict[str, Any] = {"responseCode": exc.response_code, "handle": handle, "message": message}
    if isinstance(exc, ClientError) and exc.details:
        body["errors"] = exc.details
    return status, orjson.dumps(body)


# --- request parsing -----------------------------------------------------------------------


def _path_handle(request: web.Request) -> str:
    """The handle in the path, percent-decoded as strict UTF-8."""
    raw = request.rel_url.raw_path[len(API_PREFIX) :]  # also right for absolute-form targets
    text = hs.decode_path(raw)
    request[HANDLE_TEXT] = text
    return text


def flag(query: MultiMapping[str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes", ""):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ProtocolError(f"query parameter {name} must be true or false, got {raw!r}")


def _indexes(query: MultiMapping[str]) -> list[int]:
    out = []
    for raw in query.getall("index", []):
        try:
            out.append(hv.parse_index(raw, where="query parameter index"))
        except InvalidValue as exc:
            raise ProtocolError(exc.message) from None
    return out


async def json_body(request: web.Request) -> Any:
    """The body as JSON: 415 unless sent as application/json, 408 when slow, 400 if not JSON."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"body must be sent as Content-Type: application/json, not {request.content_type!r}"
        )
    try:
        async with asyncio.timeout(request.app[NODE].config.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from None


# --- reads ---------------------------------------------------------------------------------


def _visible(
    values: Iterable[hv.Value], *, public_only: bool, may_read_private: bool
) -> list[hv.Value]:
    if public_only or not may_read_private:
        return [v for v in values if v.public_read]
    return [v for v in values if v.public_read or v.admin_read]


def plain_answer(request: web.Request, text: str, entry: Entry) -> web.Response:
    """The whole public record, from the bytes encoded when the entry was filled."""
    error = unanswerable(entry, text)
    if error is not None:
        raise error
    headers = {"ETag": entry.etag, "Cache-Control": f"max-age={entry.max_age}"}
    if etag_matches(request.headers.get("If-None-Match"), entry.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=public_body(text, entry), headers=headers, content_type="application/json"
    )


async def get_handle(request: web.Request) -> web.Response:
    node = request.app[NODE]
    text = _path_handle(request)
    h = hs.parse(text)
    query = request.query
    indexes, types = _indexes(query), query.getall("type", [])
    who = await node.authn.caller(request)
    public_only = flag(query, "publicOnly", who is None)
    if not public_only and who is None:
        raise AuthenticationNeeded("publicOnly=false needs an authenticated admin", handle=text)
    entry = await resolve(node.pipeline, h, authoritative=flag(query, "auth", False))
    record = entry.record
    if record is None:
        raise HandleNotFound(handle=text)
    if public_only and not indexes and not types:
        return plain_answer(request, text, entry)
    private_ok = False
    if not public_only:
        private_ok = await node.registry.authority.may_read_private(who, h, record.values)
        if not private_ok and "publicOnly" in query:
            raise NotAnAdmin(f"{who} may not read the non-public values of {text}", handle=text)
    chosen = hv.filter_values(record.values, indexes, types)
    shown = _visible(chosen, public_only=public_only, may_read_private=private_ok)
    if not shown and (indexes or types or record.values):
        raise ValuesNotFound(handle=text)
    return json_response(
        {"responseCode": 1, "handle": text, "values": [v.to_json() for v in shown]}
    )


async def list_prefixes(request: web.Request) -> web.Response:
    prefixes = await request.app[NODE].store.homed_prefixes()
    return json_response(
        {"responseCode": 1, "totalCount": str(len(prefixes)), "prefixes": prefixes}
    )


# --- writes --------------------------------------------------------------------------------


def _write_target(text: str, mint: bool) -> hs.Handle:
    """The handle to write; with mintNewSuffix the path may be a bare prefix or a stem."""
    if not mint:
        return hs.parse(text)
    prefix, _, stem = text.partition("/")
    hs.check_prefix(prefix)
    return hs.Handle(f"{prefix}/{stem}", prefix, stem)


async def put_handle(request: web.Request) -> web.Response:
    node = request.app[NODE]
    text = _path_handle(request)
    query = request.query
    mint = flag(query, "mintNewSuffix", False)
    h = _write_target(text, mint)
    overwrite = flag(query, "overwrite", True)
    indexes = _indexes(query)
    body = await json_body(request)
    values = hv.parse_values(body, timestamp=node.registry.timestamp())
    who = await node.authn.caller(request, needs_identity=True)
    if indexes and not mint:
        result = await node.registry.put_values(who, h, values, indexes, overwrite=overwrite)
    else:
        result = await node.registry.put_record(who, h, values, overwrite=overwrite, mint=mint)
    request[HANDLE_TEXT] = result.handle
    status = 201 if result.created else 200
    return json_response({"responseCode": 1, "handle": result.handle}, status)


async def delete_handle(request: web.Request) -> web.Response:
    node = request.app[NODE]
    text = _path_handle(request)
    h = hs.parse(text)
    indexes = _indexes(request.query)
    who = await node.authn.caller(request, needs_identity=True)
    if indexes:
        await node.registry.delete_values(who, h, indexes)
    else:
        await node.registry.delete_record(who, h)
    return json_response({"responseCode": 1, "handle": text})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/prefixes", list_prefixes, name="prefixes")
    app.router.add_get("/api/handles/{handle:[\\s\\S]*}", get_handle, name="resolve")
    app.router.add_put("/api/handles/{handle:[\\s\\S]*}", put_handle, name="write")
    app.router.add_delete("/api/handles/{handle:[\\s\\S]*}", delete_handle, name="delete")
