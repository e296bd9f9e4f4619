"""The audit log over HTTP, and the task that keeps its tree and checkpoints current.

- ``GET /api/audit/checkpoint`` (public): the latest signed checkpoint, or ``?size=N``.
- ``POST /api/audit/checkpoint`` (any authenticated identity): sign one now.
- ``GET /api/audit/proof?seq=S`` or ``?handle=H`` (public), ``&size=N``: the inclusion
  proof of an entry (or of the handle's latest entry) in a signed checkpoint's tree;
  the entry itself comes along for an admin of its handle.
- ``GET /api/audit/consistency?first=M&second=N`` (public): that checkpoint N's tree
  extends checkpoint M's.
- ``GET /api/handles/{handle}/history`` and ``GET /api/history/{handle}`` (admins of
  the handle): its versions, ``?seq=S`` one version's content. A record whose own
  name ends in ``/history`` still resolves at ``/api/handles/...``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from registry import audit, tree
from registry import handle as hs
from registry import values as hv
from registry.errors import (
    AuditNotFound,
    AuthenticationNeeded,
    ClientError,
    HandleNotFound,
    ProtocolError,
)
from registry.permissions import Perm
from registry.registry import Registry
from registry.store import Store, translated
from resolver import api
from resolver.pipeline import resolve

log = logging.getLogger("idnode.audit")
HISTORY_PAGE = 100
HISTORY_MAX_PAGE = 1000
TICK_SECONDS = 1.0
HISTORY_PATH = "/api/history/"
HISTORY_SUFFIX = "/history"


def _number(query: MultiMapping[str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ProtocolError(f"query parameter {name} must be a non-negative integer")
    return int(raw)


def _key(request: web.Request) -> Any:
    return request.app[api.NODE].registry.audit_key


async def get_checkpoint(request: web.Request) -> web.Response:
    node = request.app[api.NODE]
    size = _number(request.query, "size")
    async with translated(), node.store.pool.acquire() as conn:
        row = await tree.checkpoint(conn, size)
    return api.json_response({"responseCode": 1, **tree.checkpoint_json(row, _key(request))})


async def post_checkpoint(request: web.Request) -> web.Response:
    node = request.app[api.NODE]
    if await node.authn.caller(request, needs_identity=True) is None:
        raise AuthenticationNeeded("signing a checkpoint needs an authenticated identity")
    key = node.registry.audit_key
    if key is None:
        raise AuditNotFound("this node signs no checkpoints")
    async with translated(), node.store.pool.acquire() as conn:
        made = await tree.make_checkpoint(conn, key, node.registry.clock)
        row = made or await tree.checkpoint(conn)
    body = {"responseCode": 1, **tree.checkpoint_json(row, key)}
    return api.json_response(body, 201 if made else 200)


def _anonymous(request: web.Request) -> bool:
    """No credentials at all: the caller can administer nothing."""
    return not request.headers.get("Authorization") and not request.cookies


async def _may_see(request: web.Request, handle: str, conn: Any) -> bool:
    """Whether the caller administers ``handle`` (with READ_VALUE), now or when last written."""
    node = request.app[api.NODE]
    if _anonymous(request):
        return False
    who = await node.authn.caller(request)
    return await _admin(node.registry, who, hs.parse(handle), conn, raise_=False)


async def _admin(
    registry: Registry, who: Any, h: hs.Handle, conn: Any, *, raise_: bool = True
) -> bool:
    """Is ``who`` an admin of ``h``, by its current values or its last recorded ones?"""
    record = await registry.store.get(h)
    if record is not None:
        values: Sequence[hv.Value] = record.values
    else:
        content = await conn.fetchval(
            "SELECT content FROM audit_log WHERE handle_key = $1 AND content IS NOT NULL"
            " ORDER BY seq DESC LIMIT 1",
            h.key,
        )
        if content is None and not await conn.fetchval(
            "SELECT true FROM audit_log WHERE handle_key = $1 LIMIT 1", h.key
        ):
            if raise_:
                raise HandleNotFound(f"{h.text} has no recorded history", handle=h.text)
            return False
        values = [hv.from_stored(v) for v in orjson.loads(content or "[]")]
    try:
        await registry.authority.require(who, h, [Perm.READ_VALUE], values)
    except ClientError:
        if raise_:
            raise
        return False
    return True


async def get_proof(request: web.Request) -> web.Response:
    node = request.app[api.NODE]
    query = request.query
    seq, handle, size = _number(query, "seq"), query.get("handle"), _number(query, "size")
    if (seq is None) == (handle is None):
        raise ProtocolError("give exactly one of the query parameters seq and handle")
    async with translated(), node.store.pool.acquire() as conn:
        if handle is not None:
            request[api.HANDLE_TEXT] = handle
            h = hs.parse(handle)
            covered = (await tree.checkpoint(conn, size))["size"]
            seq = await audit.latest_of(conn, h.text, covered)
            if seq is None:
                raise AuditNotFound(
                    f"{handle} has no entry in the checkpoint of {covered} entries", handle=handle
                )
        assert seq is not None
        proof = await tree.inclusion_proof(conn, seq, size, _key(request))
        if not _anonymous(request):  # the entry is read only for a caller who may see it
            row = await audit.entry(conn, seq)
            if await _may_see(request, row["handle"], conn):
                proof["entry"] = audit.entry_json(row)
    return api.json_response({"responseCode": 1, **proof})


async def get_consistency(request: web.Request) -> web.Response:
    node = request.app[api.NODE]
    first = _number(request.query, "first")
    if first is None:
        raise ProtocolError("query parameter first (a checkpoint's size) is required")
    second = _number(request.query, "second")
    async with translated(), node.store.pool.acquire() as conn:
        proof = await tree.consistency_proof(conn, first, second, _key(request))
    return api.json_response({"responseCode": 1, **proof})


def _version(row: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """One version of a record: the entry, and which value indexes it added, changed, removed."""
    version = audit.entry_json(row)
    del version["client"]
    if not row["operation"].startswith("template-"):
        before = _by_index(previous["content"] if previous else None)
        after = _by_index(row["content"])
        version["changes"] = {
            "added": sorted(after.keys() - before.keys()),
            "modified": sorted(i for i in after.keys() & before.keys() if after[i] != before[i]),
            "removed": sorted(before.keys() - after.keys()),
        }
    return version


def _by_index(content: str | None) -> dict[int, Any]:
    if content is None:
        return {}
    return {
        v["index"]: {k: x for k, x in v.items() if k != "timestamp"} for v in orjson.loads(content)
    }


async def get_history(request: web.Request) -> web.Response:
    node = request.app[api.NODE]
    text = _history_handle(request)
    if request.match_info.route.name == "handle-history" and await _exists(request, text):
        return await api.get_handle(request)  # a record named ".../history" of its own
    h = hs.parse(text)
    query = request.query
    seq = _number(query, "seq")
    after = _number(query, "after")
    limit = _number(query, "limit") or HISTORY_PAGE
    if limit > HISTORY_MAX_PAGE:
        raise ProtocolError(f"query parameter limit must be at most {HISTORY_MAX_PAGE}")
    who = await node.authn.caller(request, needs_identity=True)
    async with translated(), node.store.pool.acquire() as conn:
        await _admin(node.registry, who, h, conn)
        if seq is not None:
            return api.json_response(await _one_version(conn, h, seq))
        start = -1 if after is None else after
        rows = await audit.history(conn, h.text, after=start, limit=limit + 1)
        previous = None
        if rows and rows[0]["seq"] > 0:
            prior = await audit.latest_of(conn, h.text, rows[0]["seq"])
            previous = None if prior is None else await audit.entry(conn, prior)
    versions = []
    for row in rows[:limit]:
        versions.append(_version(row, previous))
        previous = row
    body: dict[str, Any] = {"responseCode": 1, "handle": text, "versions": versions}
    if len(rows) > limit:
        body["next"] = str(rows[limit - 1]["seq"])
    return api.json_response(body)


def _history_handle(request: web.Request) -> str:
    """The handle in a history path, percent-decoded as strict UTF-8."""
    raw = request.rel_url.raw_path
    if request.match_info.route.name == "handle-history":
        raw = raw[len(api.API_PREFIX) : -len(HISTORY_SUFFIX)]
    else:
        raw = raw[len(HISTORY_PATH) :]
    text = hs.decode_path(raw)
    request[api.HANDLE_TEXT] = text
    return text


async def _one_version(conn: Any, h: hs.Handle, seq: int) -> dict[str, Any]:
    row = await audit.entry(conn, seq)
    if hs.fold(row["handle"]) != h.key:
        raise AuditNotFound(f"audit entry {seq} is not about {h.text}", handle=h.text)
    prior = await audit.latest_of(conn, h.text, seq)
    body: dict[str, Any] = {"responseCode": 1, "handle": h.text}
    body.update(_version(row, None if prior is None else await audit.entry(conn, prior)))
    content = None if row["content"] is None else orjson.loads(row["content"])
    body["template" if row["operation"].startswith("template-") else "values"] = content
    return body


async def _exists(request: web.Request, text: str) -> bool:
    """Is ``text/history`` a handle with a record here?"""
    try:
        h = hs.parse(f"{text}/history")
        entry = await resolve(request.app[api.NODE].pipeline, h)
    except ClientError:
        return False
    return entry.record is not None


def add_routes(app: web.Application) -> None:
    """Register this module's routes (before the API's catch-all handle routes)."""
    app.router.add_get("/api/audit/checkpoint", get_checkpoint, name="audit-checkpoint")
    app.router.add_post("/api/audit/checkpoint", post_checkpoint, name="audit-checkpoint-make")
    app.router.add_get("/api/audit/proof", get_proof, name="audit-proof")
    app.router.add_get("/api/audit/consistency", get_consistency, name="audit-consistency")
    app.router.add_get("/api/history/{handle:[\\s\\S]+}", get_history, name="history")
    app.router.add_get(
        "/api/handles/{handle:[\\s\\S]+}/history", get_history, name="handle-history"
    )


# --- keeping the tree and checkpoints current ---------------------------------------------


class Checkpointer:
    """Integrates new entries into the tree and signs a checkpoint every ``every_entries``
    new entries, or every ``every_seconds`` when there are new ones.

    Every serving process runs one; an advisory lock lets one at a time do the work.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        every_entries: int,
        every_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.every_entries = every_entries
        self.every_seconds = every_seconds
        self.clock = clock

    async def tick(self) -> bool:
        """One round; answers whether it signed a checkpoint."""
        key = self.registry.audit_key
        async with translated(), self.store.pool.acquire() as conn:
            size = await tree.integrate(conn, wait=False)
            latest = await conn.fetchrow(
                "SELECT size, extract(epoch FROM at)::float8 AS at FROM audit_checkpoints"
                " ORDER BY size DESC LIMIT 1"
            )
            last_size, last_at = (0, 0.0) if latest is None else (latest["size"], latest["at"])
            if key is None or size <= last_size:
                return False
            late = self.every_seconds and self.clock() - last_at >= self.every_seconds
            if size - last_size < self.every_entries and not late:
                return False
            return await tree.make_checkpoint(conn, key, self.clock) is not None

    async def run(self, ready: Callable[[], bool]) -> None:
        """Tick every second once ``ready`` (the database is migrated), until cancelled."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if not ready():
                continue
            try:
                await self.tick()
            except ClientError:
                pass  # the database is away: next round
            except Exception:
                log.exception("audit checkpointing failed; retrying")
