"""Traceability: the graph of identifiers that reference one another.

A value references other identifiers through its ``references`` list (RFC 3651
§3.1) and, when its format is ``vlist``, through its data. Only publicly
readable values count, and only public values are shown.

* ``down`` follows what an identifier references (an assembly's components, a
  component's batch): it reads the records themselves.
* ``up`` follows who references it ("where was this batch used"): it reads the
  reverse index ``handle_refs`` (``schemas/sql/007_references.sql``), kept by
  triggers in the transaction of every write.

The walk is breadth-first, one query per level (every key of the level at
once), in one read-only snapshot. Each identifier appears once however many
paths reach it, so cycles and self-references end; the depth and the number of
nodes and edges are bounded, and an answer cut short says ``truncated``. A
reference to a handle homed here that does not exist is a node ``not-found``;
one to a prefix not homed here is a node ``foreign``, shown but not resolved here
(the HTTP face resolves its public values through other nodes when recursion is on,
without walking on from it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import orjson

from registry import handle as hs
from registry.errors import HandleNotFound, InvalidHandle, NotResponsible
from registry.store import Store, translated

Direction = Literal["down", "up"]
DIRECTIONS: tuple[Direction, ...] = ("down", "up")
DEFAULT_DEPTH = 3
MAX_DEPTH = 10
DEFAULT_LIMIT = 1000
"""Nodes of an answer when the caller does not say."""
MAX_LIMIT = 10000
EDGES_PER_NODE = 4
"""An answer holds at most this many edges per node of its limit."""

FOUND, NOT_FOUND, FOREIGN = "found", "not-found", "foreign"
_MARKERS = ('"references":', '"format":"vlist"')
"""Text that a stored record holding a reference must contain (it is orjson's compact form)."""

# Both queries probe the indexes key by key (LATERAL, kept apart by OFFSET 0): a hash
# join over the whole table, which the planner picks for a few hundred keys in a table
# of tens of thousands of rows, costs ten times more.
_LEVEL = """
SELECT k.i, h.handle, h."values", h.all_public, p.homed
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(pk, sk, home, i)
LEFT JOIN LATERAL (
    SELECT handle, "values", all_public FROM handles WHERE prefix_key = k.pk AND suffix_key = k.sk
    OFFSET 0
) AS h ON true
LEFT JOIN LATERAL (
    SELECT true AS homed FROM prefixes WHERE prefix_key = k.home OFFSET 0
) AS p ON true
"""
_REFERRERS = """
SELECT k.pk AS to_prefix_key, k.sk AS to_suffix_key, r.idx, r.type, r.to_index,
       r.from_prefix_key AS prefix_key, h.handle, h."values", h.all_public
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(pk, sk, i)
CROSS JOIN LATERAL (
    SELECT from_prefix_key, from_suffix_key, idx, type, to_index FROM handle_refs
    WHERE to_prefix_key = k.pk AND to_suffix_key = k.sk
    OFFSET 0
) AS r
CROSS JOIN LATERAL (
    SELECT handle, "values", all_public FROM handles
    WHERE prefix_key = r.from_prefix_key AND suffix_key = r.from_suffix_key
    OFFSET 0
) AS h
ORDER BY k.i, r.from_prefix_key, r.from_suffix_key, r.idx, r.to_index
LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Link:
    """A reference one of a node's public values makes."""

    index: int
    type: str
    handle: str
    to_index: int


@dataclass(slots=True)
class Node:
    """One identifier of the graph: as registered when found, else as first referenced.

    ``values`` are the public values, encoded once (a record whose values are all
    public is answered with its stored JSON as it is); ``links`` their references,
    read only when the walk goes down.
    """

    handle: str
    depth: int
    status: str = NOT_FOUND
    values: orjson.Fragment | None = None
    links: list[Link] = field(default_factory=list)

    def found(self, handle: str, raw: str, all_public: bool, *, links: bool) -> None:
        self.status, self.handle = FOUND, handle
        parsed = None
        if not all_public or (links and any(m in raw for m in _MARKERS)):
            parsed = public_values(raw)
        self.values = orjson.Fragment(raw if parsed is None else orjson.dumps(parsed))
        if links and parsed:
            self.links = [
                Link(v["index"], v["type"], text, to_index)
                for v in parsed
                for text, to_index in references(v)
            ]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"handle": self.handle, "status": self.status, "depth": self.depth}
        if self.values is not None:
            out["values"] = self.values
        return out


@dataclass(frozen=True, slots=True)
class Edge:
    """``source`` references ``target`` (index ``to_index``, 0 = all) from one of its values."""

    source: str
    target: str
    index: int
    type: str
    to_index: int


@dataclass(slots=True)
class Trace:
    """The answer: nodes (the root first, then by depth) keyed by handle key, and edges."""

    handle: str
    direction: Direction
    depth: int
    limit: int
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[Edge, None] = field(default_factory=dict)
    truncated: bool = False

    @property
    def max_edges(self) -> int:
        return self.limit * EDGES_PER_NODE

    def add_node(self, h: hs.Handle, depth: int) -> bool:
        """Take ``h`` in (True), unless it is already in or the answer is full (False)."""
        if h.key in self.nodes:
            return False
        if len(self.nodes) >= self.limit:
            self.truncated = True
            return False
        self.nodes[h.key] = Node(h.text, depth)
        return True

    def add_edge(self, edge: Edge) -> None:
        if edge.source in self.nodes and edge.target in self.nodes and edge not in self.edges:
            if len(self.edges) >= self.max_edges:
                self.truncated = True
            else:
                self.edges[edge] = None

    def to_json(self) -> dict[str, Any]:
        name = {key: node.handle for key, node in self.nodes.items()}
        return {
            "responseCode": 1,
            "handle": self.handle,
            "direction": self.direction,
            "depth": self.depth,
            "limit": self.limit,
            "nodes": [node.to_json() for node in self.nodes.values()],
            "edges": [
                {
                    "from": name[e.source],
                    "to": name[e.target],
                    "via": {"index": e.index, "type": e.type},
                    "toIndex": e.to_index,
                }
                for e in self.edges
            ],
            "truncated": self.truncated,
        }


def public_values(raw: str) -> list[dict[str, Any]]:
    """The publicly readable values of a record's stored JSON, in their served form."""
    return [v for v in orjson.loads(raw) if v.get("permissions", "1110")[2] == "1"]


def references(value: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """The (handle, index) pairs one value references: its ``references`` and vlist data."""
    data = value.get("data")
    listed = list(value.get("references", ()))
    if isinstance(data, dict) and data.get("format") == "vlist":
        listed += data.get("value", ())
    for ref in listed:
        if isinstance(ref, dict) and isinstance(ref.get("handle"), str):
            yield ref["handle"], int(ref.get("index", 0))


def _target(text: str) -> hs.Handle | None:
    try:
        return hs.parse(text)
    except InvalidHandle:  # written before it was checked: not a link to follow
        return None


async def _fetch_level(
    conn: asyncpg.Connection, trace: Trace, level: Sequence[hs.Handle], *, links: bool = True
) -> None:
    """Fill in the status and public values (and links) of the level's nodes, with one query."""
    rows = await conn.fetch(
        _LEVEL,
        [h.prefix_key for h in level],
        [h.suffix_key for h in level],
        [hs.fold(h.homing_prefix) for h in level],
    )
    for row in rows:
        node = trace.nodes[level[row["i"] - 1].key]
        if row["homed"] is None:
            node.status = FOREIGN
        elif row["handle"] is not None:
            node.found(row["handle"], row["values"], row["all_public"], links=links)


def _down_step(trace: Trace, level: Sequence[hs.Handle], depth: int) -> list[hs.Handle]:
    """The edges out of the level's found nodes, and the new nodes they reach."""
    following: list[hs.Handle] = []
    for h in level:
        for link in trace.nodes[h.key].links:
            target = _target(link.handle)
            if target is None:
                continue
            if trace.add_node(target, depth + 1):
                following.append(target)
            trace.add_edge(Edge(h.key, target.key, link.index, link.type, link.to_index))
    return following


async def _up_step(
    conn: asyncpg.Connection, trace: Trace, level: Sequence[hs.Handle], depth: int
) -> list[hs.Handle]:
    """The records that reference the level's nodes (one query), as edges and new nodes."""
    room = trace.max_edges - len(trace.edges) + 1
    rows = await conn.fetch(
        _REFERRERS, [h.prefix_key for h in level], [h.suffix_key for h in level], room
    )
    if len(rows) >= room:
        trace.truncated = True
    following: list[hs.Handle] = []
    for row in rows:
        text, cut = row["handle"], len(row["prefix_key"])
        source = hs.Handle(text, text[:cut], text[cut + 1 :])
        if trace.add_node(source, depth + 1):
            following.append(source)
            trace.nodes[source.key].found(text, row["values"], row["all_public"], links=False)
        target_key = f"{row['to_prefix_key']}/{row['to_suffix_key']}"
        trace.add_edge(Edge(source.key, target_key, row["idx"], row["type"], row["to_index"]))
    return following


async def trace(
    store: Store,
    h: hs.Handle,
    direction: Direction = "down",
    *,
    depth: int = DEFAULT_DEPTH,
    limit: int = DEFAULT_LIMIT,
) -> Trace:
    """The graph around ``h``, ``depth`` references away at most, ``limit`` nodes at most."""
    result = Trace(h.text, direction, depth, limit)
    result.nodes[h.key] = Node(h.text, 0)
    async with translated(), store.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await _fetch_level(conn, result, [h], links=direction == "down")
            root = result.nodes[h.key]
            if root.status == FOREIGN:
                raise NotResponsible(
                    f"prefix {h.homing_prefix} is not homed on this node", handle=h.text
                )
            if root.status == NOT_FOUND:
                raise HandleNotFound(handle=h.text)
            level = [h]
            for d in range(depth):
                if direction == "down":
                    level = _down_step(result, level, d)
                    if level:
                        await _fetch_level(conn, result, level)
                else:
                    level = await _up_step(conn, result, level, d)
                if not level:
                    break
            root.handle = h.text  # the root as the caller wrote it
    return result
