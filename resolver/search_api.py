"""Listing and search over HTTP: ``/api/handles?prefix=``, ``/hrls/handles``, ``/api/search``.

Handlers check their query parameters first (400), then credentials and the
prefix, then call ``registry.search``. Pages:

* ``/api/handles`` pages by ``cursor`` (the ``next`` of the previous answer: a
  keyset, as fast deep in the prefix as at its start) or, for Handle clients,
  by ``page``/``pageSize`` (an offset: page N walks the N pages before it).
* ``/hrls/handles`` is pyhandle's reverse lookup: ``limit`` and ``page`` (offset).
* ``/api/search`` pages by ``cursor`` only.
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web
from multidict import MultiMapping

from registry import handle as hs
from registry import search
from registry import values as hv
from registry.errors import ProtocolError
from registry.permissions import Perm
from registry.store import translated
from resolver.api import NODE, json_response

DEFAULT_PAGE_SIZE = 1000
"""Handles per page of ``/api/handles`` and ``/hrls/handles`` when none is asked."""
MAX_PAGE_SIZE = 10000
"""Most handles one page may hold (``pageSize``, ``limit``)."""
MAX_PAGE = 2**31
DEFAULT_SEARCH_LIMIT = 100
"""Handles per page of ``/api/search`` when none is asked."""
MAX_CRITERIA = 16
"""Most search terms one ``/hrls/handles`` request may give."""
_HRLS_RESERVED = frozenset({"limit", "page", "prefix"})


def _count(query: MultiMapping[str], name: str, default: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not hv.is_number(raw) or int(raw) > high:
        raise ProtocolError(f"query parameter {name} must be an integer from 0 to {high}")
    return int(raw)


def _search_type(name: str) -> str:
    if not name:
        raise ProtocolError("a search type must not be empty")
    if len(name) > hv.MAX_TYPE_LENGTH:
        raise ProtocolError(f"search type is longer than {hv.MAX_TYPE_LENGTH} characters")
    if "\x00" in name:
        raise ProtocolError("search type must not contain NUL characters")
    return name


async def list_handles(request: web.Request) -> web.Response:
    """``GET /api/handles?prefix=``: a page of a prefix's handles, to its LIST_HANDLES admins."""
    node = request.app[NODE]
    query = request.query
    prefix = query.get("prefix")
    if not prefix:
        raise ProtocolError("query parameter prefix is required")
    hs.check_prefix(prefix)
    page = _count(query, "page", 0, MAX_PAGE)
    size = _count(query, "pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    raw_cursor = query.get("cursor")
    after = None
    if raw_cursor is not None:
        if "page" in query:
            raise ProtocolError("give page or cursor, not both")
        after = search.listing_after(raw_cursor)
    who = await node.authn.caller(request)
    await node.store.require_homed(prefix, prefix)
    # a manufacturer's identifiers are listed only to its admins (LIST_HANDLES on 0.NA/<prefix>)
    record_handle = hs.prefix_record(prefix)
    record = await node.store.get(record_handle)
    await node.registry.authority.require(
        who, record_handle, [Perm.LIST_HANDLES], record.values if record else None
    )
    total = await search.count_handles(node.store, prefix)
    if after is None and page * size >= total:
        result = search.Page([], None)  # past the end: nothing to walk
    else:
        result = await search.list_handles(
            node.store, prefix, after=after, offset=page * size, limit=size
        )
    return json_response(
        {
            "responseCode": 1,
            "prefix": prefix,
            "totalCount": str(total),
            "page": None if after is not None else page,
            "pageSize": size,
            "handles": result.handles,
            "next": result.next,
        }
    )


async def search_handles(request: web.Request) -> web.Response:
    """pyhandle's reverse lookup: ``/hrls/handles?URL=https://example.com/*`` → ``["88.1/x"]``.

    Every query key other than ``limit``, ``page`` and ``prefix`` is a value type, its
    value a pattern (``*`` is the wildcard); a handle matches when each pattern
    matches one of its public values of that type. ``prefix`` keeps the handles of
    one prefix; ``limit`` and ``page`` page through the answer.
    """
    query = request.query
    criteria = [
        (_search_type(k), search.pattern(v, what=f"search pattern for {k}"))
        for k, v in query.items()
        if k not in _HRLS_RESERVED
    ]
    if not criteria:
        raise ProtocolError("give at least one search term, e.g. URL=https://example.com/*")
    if len(criteria) > MAX_CRITERIA:
        raise ProtocolError(f"give at most {MAX_CRITERIA} search terms")
    limit = _count(query, "limit", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    page = _count(query, "page", 0, MAX_PAGE)
    prefix = query.get("prefix") or None
    if prefix is not None:
        hs.check_prefix(prefix)
    handles = await search.search(
        request.app[NODE].store, criteria, prefix=prefix, offset=page * limit, limit=limit
    )
    return web.Response(body=orjson.dumps(handles), content_type="application/json")


async def find(request: web.Request) -> web.Response:
    """``GET /api/search?type=&value=[&prefix=&cursor=&limit=]``: handles by a public value.

    ``value`` is matched exactly, or by its start when it ends in ``*`` (any ``*``
    is a wildcard; one before the end makes the index range the text before it).
    """
    node = request.app[NODE]
    query = request.query
    prefix = query.get("prefix") or None
    if prefix is not None:
        hs.check_prefix(prefix)
    vtype, field = query.get("type"), query.get("field")
    if bool(vtype) == bool(field):
        raise ProtocolError("give exactly one of type= and field=")
    vtype = _search_type(vtype) if vtype else await _field_type(request, prefix, field or "")
    value = query.get("value")
    if not value:
        raise ProtocolError("query parameter value is required")
    p = search.pattern(value, what="query parameter value")
    limit = _count(query, "limit", DEFAULT_SEARCH_LIMIT, MAX_PAGE_SIZE)
    raw_cursor = query.get("cursor")
    after = search.search_after(raw_cursor) if raw_cursor is not None else None
    if prefix is not None:
        await node.store.require_homed(prefix, prefix)
    result = await search.find(node.store, vtype, p, prefix=prefix, after=after, limit=limit)
    return json_response({"responseCode": 1, "handles": result.handles, "next": result.next})


async def _field_type(request: web.Request, prefix: str | None, field: str) -> str:
    """The value type a field of ``prefix``'s current data template reads."""
    if prefix is None:
        raise ProtocolError("field= names a field of a prefix's data template: give prefix= too")
    node = request.app[NODE]
    await node.store.require_homed(prefix, prefix)
    async with translated(), node.store.pool.acquire() as conn:
        template = await node.registry.templates.current(conn, hs.fold(prefix))
    if template is None:
        raise ProtocolError(f"prefix {prefix} has no data template: search by type= instead")
    found = next((f for f in template.fields if f.name == field), None)
    if found is None:
        names = ", ".join(f.name for f in template.fields)
        raise ProtocolError(
            f"the data template of {prefix} has no field {field[:100]!r} (it has: {names})"
        )
    return _search_type(found.type)


def add_routes(app: web.Application) -> None:
    """Register this module's HTTP routes."""
    app.router.add_get("/api/handles", list_handles, name="list")
    app.router.add_get("/hrls/handles", search_handles, name="search")
    app.router.add_get("/hrls/handles/", search_handles, name="search-slash")
    app.router.add_get("/api/search", find, name="find")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this module's `idnode` subcommands."""
