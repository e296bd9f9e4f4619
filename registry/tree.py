"""The Merkle tree over the audit log, its signed checkpoints and the proofs.

- **The tree** (``integrate``): the hashes of RFC 9162 over the entries' leaves
  (``audit_leaf`` in ``schemas/sql/006_audit.sql``), kept as the hashes of complete
  subtrees in ``audit_tree``, filled in order behind the writers. A proof reads
  O(log² n) stored hashes, never the log.
- **Checkpoints** (``make_checkpoint``): the tree's size and root and the time,
  signed with the node's Ed25519 audit key, in the text form of C2SP's
  checkpoints (origin, size, base64 root, then ``time …``).
- **Proofs**: inclusion (RFC 9162 2.1.3) and consistency (2.1.4), each against a
  signed checkpoint.

The entries themselves are ``registry.audit``'s; verification lives apart, in
``registry/verify.py``, which imports none of this.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from registry import audit, merkle
from registry.errors import AuditNotFound, ProtocolError
from registry.keys import AuditKey

Clock = Callable[[], float]
_TREE_LOCK = 0x1D0A_0D17
"""Advisory lock key: one integrator (and checkpoint maker) at a time, across processes."""
_LEAVES = (
    "SELECT seq, sha256('\\x00'::bytea || audit_leaf(seq, at, actor, client, operation, handle,"
    " indexes, before, after)) AS leaf FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2"
)


# --- subtrees ----------------------------------------------------------------------------


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def decomposition(start: int, end: int) -> list[tuple[int, int]]:
    """The complete subtrees (level, idx) that make up leaves [start, end), largest first."""
    out = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length()
        while 1 << level > end - start:
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def inclusion_ranges(m: int, n: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make PATH(m, D[0:n]) (RFC 9162 2.1.3.1), bottom up."""
    out = []
    start, end = 0, n
    while end - start > 1:
        k = _split(end - start)
        if m - start < k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    return out[::-1]


def consistency_ranges(m: int, n: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make PROOF(m, D[0:n]) (RFC 9162 2.1.4.1)."""
    if not 0 < m < n:
        return []
    out = []
    start, end, complete = 0, n, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            m -= k
            start += k
            complete = False
    if not complete:
        out.append((start, end))
    return out[::-1]


def outside_ranges(size: int, first: int, end: int) -> list[tuple[int, int]]:
    """The subtrees outside leaves [first, end) in the order MTH meets them, left to right:
    with those leaves they give the root (``verify.range_root``)."""
    out: list[tuple[int, int]] = []

    def walk(start: int, stop: int) -> None:
        if stop <= first or start >= end:
            out.append((start, stop))
        elif stop - start > 1:
            k = _split(stop - start)
            walk(start, start + k)
            walk(start + k, stop)

    if size:
        walk(0, size)
    return out


async def tree_size(conn: asyncpg.Connection) -> int:
    """How many entries the stored tree covers."""
    size: int = await conn.fetchval(
        "SELECT coalesce(max(idx) + 1, 0) FROM audit_tree WHERE level = 0"
    )
    return size


async def hashes(conn: asyncpg.Connection, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The Merkle hash of each leaf range, from stored subtrees, with one query."""
    parts = [decomposition(start, end) for start, end in ranges]
    wanted = sorted({node for part in parts for node in part})
    rows = await conn.fetch(
        "SELECT level, idx, hash FROM audit_tree WHERE (level, idx) IN"
        " (SELECT * FROM unnest($1::smallint[], $2::bigint[]))",
        [level for level, _ in wanted],
        [idx for _, idx in wanted],
    )
    stored = {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
    out = []
    for part in parts:
        missing = [node for node in part if node not in stored]
        if missing:
            raise AuditNotFound(f"the audit tree has no subtree {missing[0]} yet")
        hashed = stored[part[-1]]
        for node in reversed(part[:-1]):
            hashed = merkle.node_hash(stored[node], hashed)
        out.append(hashed)
    return out


async def root_at(conn: asyncpg.Connection, size: int) -> bytes:
    if size == 0:
        return merkle.EMPTY_ROOT
    (hashed,) = await hashes(conn, [(0, size)])
    return hashed


async def integrate(conn: asyncpg.Connection, *, batch: int = 20_000, wait: bool = True) -> int:
    """Hash the entries the tree does not cover yet into it; answer the tree's size.

    One integrator at a time (an advisory lock); without ``wait``, answer at once
    when another is at work.
    """
    async with conn.transaction():
        if wait:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _TREE_LOCK)
        elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _TREE_LOCK):
            return await tree_size(conn)
        size = await tree_size(conn)
        frontier = decomposition(0, size)
        known = await hashes(conn, [(idx << level, (idx + 1) << level) for level, idx in frontier])
        stack = [(level, idx, h) for (level, idx), h in zip(frontier, known, strict=True)]
        while True:
            rows = await conn.fetch(_LEAVES, size, batch)
            made: list[tuple[int, int, bytes]] = []
            for row in rows:
                if row["seq"] != size:
                    raise AuditNotFound(f"audit entry {size} is missing: the log has a gap")
                stack.append((0, size, bytes(row["leaf"])))
                made.append(stack[-1])
                while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
                    (level, idx, left), (_, _, right) = stack[-2], stack[-1]
                    stack[-2:] = [(level + 1, idx >> 1, merkle.node_hash(left, right))]
                    made.append(stack[-1])
                size += 1
            if made:
                await conn.copy_records_to_table(
                    "audit_tree", records=made, columns=["level", "idx", "hash"]
                )
            if len(rows) < batch:
                return size


# --- checkpoints -------------------------------------------------------------------------


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def origin(public: bytes) -> str:
    """The log's name in its checkpoints: the node's audit key names it."""
    return f"idnode/{key_id(public)}"


def checkpoint_json(row: asyncpg.Record, key: AuditKey | None) -> dict[str, Any]:
    """A stored checkpoint as published, with the C2SP signed-note form of it."""
    body, signature = row["body"], bytes(row["signature"])
    name = body.split("\n", 1)[0]
    published: dict[str, Any] = {
        "size": row["size"],
        "rootHash": base64.b64encode(bytes(row["root"])).decode("ascii"),
        "time": audit.rfc3339(row["at"].timestamp()),
        "origin": name,
        "keyId": row["key_id"],
        "body": body,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    if key is not None and key_id(key.public) == row["key_id"]:
        published["publicKey"] = base64.b64encode(key.public).decode("ascii")
        note_key = hashlib.sha256(name.encode() + b"\n\x01" + key.public).digest()[:4]
        stamp = base64.b64encode(note_key + signature).decode("ascii")
        published["note"] = f"{body}\n\u2014 {name} {stamp}\n"
    return published


_CHECKPOINT = "SELECT size, root, at, body, key_id, signature FROM audit_checkpoints"


async def make_checkpoint(
    conn: asyncpg.Connection, key: AuditKey, clock: Clock
) -> asyncpg.Record | None:
    """Integrate, then sign a checkpoint of the tree unless the latest one has its size.

    Answers the checkpoint made, or None when there was nothing new to sign.
    """
    size = await integrate(conn)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _TREE_LOCK)
        latest = await conn.fetchval("SELECT max(size) FROM audit_checkpoints")
        if latest is not None and latest >= size:
            return None
        root = await root_at(conn, size)
        now = clock()
        body = (
            f"{origin(key.public)}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"
            f"time {audit.rfc3339(now)}\n"
        )
        row: asyncpg.Record = await conn.fetchrow(
            "INSERT INTO audit_checkpoints (size, root, at, body, key_id, signature)"
            " VALUES ($1, $2, to_timestamp($3), $4, $5, $6)"
            " RETURNING size, root, at, body, key_id, signature",
            size,
            root,
            now,
            body,
            key_id(key.public),
            key.sign(body.encode()),
        )
        return row


async def checkpoint(conn: asyncpg.Connection, size: int | None = None) -> asyncpg.Record:
    """The checkpoint of ``size`` leaves, or the latest one."""
    if size is None:
        row = await conn.fetchrow(f"{_CHECKPOINT} ORDER BY size DESC LIMIT 1")
    else:
        row = await conn.fetchrow(f"{_CHECKPOINT} WHERE size = $1", size)
    if row is None:
        what = "no checkpoint yet" if size is None else f"no checkpoint of size {size}"
        raise AuditNotFound(f"{what}: checkpoints are signed every few entries or on demand")
    return row


async def covering(conn: asyncpg.Connection, size: int) -> asyncpg.Record | None:
    """The first checkpoint that covers ``size`` entries, if any."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"{_CHECKPOINT} WHERE size >= $1 ORDER BY size LIMIT 1", size
    )
    return row


# --- proofs ------------------------------------------------------------------------------


def _b64(items: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in items]


async def inclusion_proof(
    conn: asyncpg.Connection, seq: int, size: int | None, key: AuditKey | None
) -> dict[str, Any]:
    """The proof that entry ``seq`` is in the tree of a signed checkpoint (default: the latest)."""
    signed = await checkpoint(conn, size)
    if not 0 <= seq < signed["size"]:
        raise ProtocolError(
            f"entry {seq} is not in the tree of {signed['size']} entries of that checkpoint"
        )
    found = await hashes(conn, [(seq, seq + 1), *inclusion_ranges(seq, signed["size"])])
    return {
        "seq": seq,
        "treeSize": signed["size"],
        "leafHash": _b64(found[:1])[0],
        "path": _b64(found[1:]),
        "checkpoint": checkpoint_json(signed, key),
    }


async def consistency_proof(
    conn: asyncpg.Connection, first: int, second: int | None, key: AuditKey | None
) -> dict[str, Any]:
    """The proof that the checkpoint of ``second`` entries extends the one of ``first``."""
    later = await checkpoint(conn, second)
    if first > later["size"]:
        raise ProtocolError(f"size {first} is beyond the tree of {later['size']} entries")
    earlier = await checkpoint(conn, first)
    path = await hashes(conn, consistency_ranges(first, later["size"]))
    return {
        "first": checkpoint_json(earlier, key),
        "second": checkpoint_json(later, key),
        "path": _b64(path),
    }
