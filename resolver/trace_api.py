"""``GET /api/trace/{handle}?direction=down|up&depth=N&limit=M``: the graph of related identifiers.

Public, like resolution: no credentials are needed or read, and only public values
are shown. Checked in this order: the handle (102), the query parameters (4), the
root homed here (301) and existing (100). The walk is ``registry.trace``.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from registry import handle as hs
from registry import trace
from registry import values as hv
from registry.errors import ClientError, ProtocolError
from resolver.api import HANDLE_TEXT, NODE, Node, json_response
from resolver.pipeline import resolve

TRACE_PREFIX = "/api/trace/"
FOREIGN_MAX = 100
"""Foreign nodes of one answer resolved through other nodes (recursion on); the rest stay links."""
FOREIGN_SECONDS = 3.0
"""How long a trace waits for other nodes' answers before it shows the rest as links."""


def _number(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not hv.is_number(raw) or not low <= int(raw) <= high:
        raise ProtocolError(f"query parameter {name} must be an integer from {low} to {high}")
    return int(raw)


def _direction(request: web.Request) -> trace.Direction:
    raw = request.query.get("direction", "down")
    for direction in trace.DIRECTIONS:
        if raw == direction:
            return direction
    raise ProtocolError("query parameter direction must be down or up")


async def get_trace(request: web.Request) -> web.Response:
    """The identifiers ``handle`` references (``down``) or that reference it (``up``)."""
    text = hs.decode_path(request.rel_url.raw_path[len(TRACE_PREFIX) :])
    request[HANDLE_TEXT] = text
    h = hs.parse(text)
    direction = _direction(request)
    depth = _number(request, "depth", trace.DEFAULT_DEPTH, 0, trace.MAX_DEPTH)
    limit = _number(request, "limit", trace.DEFAULT_LIMIT, 1, trace.MAX_LIMIT)
    node = request.app[NODE]
    result = await trace.trace(node.store, h, direction, depth=depth, limit=limit)
    if node.config.recursion:
        await _resolve_foreign(node, result)
    return json_response(result.to_json())


async def _resolve_foreign(node: Node, result: trace.Trace) -> None:
    """Show the public values of foreign nodes, resolved through the pipeline (and so through
    the node's cache and upstreams); a node that cannot be resolved in time stays a link."""
    foreign = [n for n in result.nodes.values() if n.status == trace.FOREIGN][:FOREIGN_MAX]

    async def one(n: trace.Node) -> None:
        try:
            entry = await resolve(node.pipeline, hs.parse(n.handle))
        except ClientError:
            return
        if entry.record is not None:
            n.values = orjson.Fragment(entry.public)

    if foreign:
        await asyncio.wait(
            [asyncio.ensure_future(one(n)) for n in foreign], timeout=FOREIGN_SECONDS
        )


def add_routes(app: web.Application) -> None:
    """Register this module's HTTP routes."""
    app.router.add_get("/api/trace/{handle:[\\s\\S]*}", get_trace, name="trace")
