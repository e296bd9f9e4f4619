"""The audit log: every change appended in its own transaction, and read back (history,
the filing export, verification).

- **Entries** (``append``): sequence number, time, actor, client address,
  operation, handle, value indexes, and the SHA-256 digests of the canonical
  content before and after (a record's stored values JSON; a template's JSON).
  The content after is kept too, so past versions can be read back. Numbers are
  gap-free, in commit order: the writer takes them from the row of ``audit_head``
  and holds its lock until it commits.

The Merkle tree over the entries, its checkpoints and the proofs are ``registry.tree``'s.
Verification lives apart, in ``registry/verify.py``, which imports none of this.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from registry.errors import AuditNotFound
from registry.handle import fold

CLIENT: ContextVar[str | None] = ContextVar("idnode_audit_client", default=None)
"""The address of the client whose request is being served; the HTTP face sets it."""

_COLUMNS = [
    "seq",
    "actor",
    "client",
    "operation",
    "handle",
    "handle_key",
    "indexes",
    "before",
    "after",
    "content",
]
_ENTRY = (
    "seq, at, actor, client, operation, handle, indexes,"
    " encode(before, 'hex') AS before, encode(after, 'hex') AS after"
)


def _text(content: str | bytes | None) -> str | None:
    return content.decode() if isinstance(content, bytes) else content


def digest(content: str | bytes | None) -> bytes | None:
    """SHA-256 of a canonical content (UTF-8); None for no content."""
    text = _text(content)
    return None if text is None else hashlib.sha256(text.encode()).digest()


@dataclass(frozen=True, slots=True)
class Change:
    """One entry to append: who did what to which handle, and the content before and after."""

    actor: str
    operation: str
    handle: str
    indexes: Sequence[int] | None = None
    before: str | bytes | None = None
    after: str | bytes | None = None
    client: str | None = field(default_factory=CLIENT.get)

    def row(self, seq: int) -> tuple[Any, ...]:
        after = _text(self.after)
        indexes = None if self.indexes is None else list(self.indexes)
        return (
            seq,
            self.actor,
            self.client,
            self.operation,
            self.handle,
            fold(self.handle),
            indexes,
            digest(self.before),
            digest(after),
            after,
        )


_APPEND_ONE = (
    "WITH head AS (UPDATE audit_head SET size = size + 1 RETURNING size),"
    f" entry AS (INSERT INTO audit_log ({', '.join(_COLUMNS)})"
    " SELECT head.size - 1, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM head)"
    " SELECT pg_notify($10, p) FROM unnest($11::text[]) AS p"
)
_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


async def append(
    conn: asyncpg.Connection,
    changes: Sequence[Change],
    channel: str = "",
    notifications: Sequence[str] = (),
) -> None:
    """Append ``changes`` in the caller's transaction, numbered after every committed entry,
    and send ``notifications`` on ``channel`` (with one change, in the same statement).

    The head's row stays locked until the transaction ends: append last, just before
    committing, so other writers wait for as short a time as possible.
    """
    if len(changes) == 1:
        await conn.execute(_APPEND_ONE, *changes[0].row(0)[1:], channel, list(notifications))
        return
    if changes:
        size = await conn.fetchval(
            "UPDATE audit_head SET size = size + $1 RETURNING size", len(changes)
        )
        first = size - len(changes)
        await conn.copy_records_to_table(
            "audit_log",
            records=[c.row(first + i) for i, c in enumerate(changes)],
            columns=_COLUMNS,
        )
    if notifications:
        await conn.execute(_NOTIFY, channel, list(notifications))


_STAGE = "idnode_audit_stage"


async def stage(conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
    """Keep ``changes`` aside in the transaction, for ``append_staged`` at its end."""
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (ord bigserial,"
        " LIKE audit_log INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    await conn.copy_records_to_table(_STAGE, records=[c.row(0) for c in changes], columns=_COLUMNS)


async def append_staged(conn: asyncpg.Connection) -> None:
    """Append the staged changes, numbered in the order they were staged."""
    if not await conn.fetchval(f"SELECT to_regclass('pg_temp.{_STAGE}') IS NOT NULL"):
        return
    fields = ", ".join(_COLUMNS[1:])
    await conn.execute(
        f"WITH n AS (SELECT count(*) AS n FROM {_STAGE}),"
        " head AS (UPDATE audit_head SET size = size + (SELECT n FROM n) RETURNING size)"
        f" INSERT INTO audit_log (seq, {fields})"
        " SELECT (SELECT size FROM head) - (SELECT n FROM n)"
        f" + row_number() OVER (ORDER BY ord) - 1, {fields} FROM {_STAGE}"
    )


def rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- reading entries ---------------------------------------------------------------------


def entry_json(row: asyncpg.Record) -> dict[str, Any]:
    """An entry in its published form (the fields its leaf is made of)."""
    return {
        "seq": row["seq"],
        "at": rfc3339(row["at"].timestamp()),
        "actor": row["actor"],
        "client": row["client"],
        "operation": row["operation"],
        "handle": row["handle"],
        "indexes": row["indexes"],
        "before": row["before"],
        "after": row["after"],
    }


async def entry(conn: asyncpg.Connection, seq: int) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {_ENTRY}, content FROM audit_log WHERE seq = $1", seq)
    if row is None:
        raise AuditNotFound(f"no audit entry {seq}")
    return row


async def latest_of(conn: asyncpg.Connection, handle: str, below: int) -> int | None:
    """The last entry of ``handle`` before entry ``below``."""
    seq: int | None = await conn.fetchval(
        "SELECT max(seq) FROM audit_log WHERE handle_key = $1 AND seq < $2", fold(handle), below
    )
    return seq


async def history(
    conn: asyncpg.Connection, handle: str, *, after: int, limit: int
) -> list[asyncpg.Record]:
    """The entries of one handle, oldest first, from entry ``after`` on."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_ENTRY}, content FROM audit_log WHERE handle_key = $1 AND seq > $2"
        " ORDER BY seq LIMIT $3",
        fold(handle),
        after,
        limit,
    )
    return rows


async def entries(
    conn: asyncpg.Connection, first: int, end: int | None = None, *, page: int = 5000
) -> AsyncIterator[asyncpg.Record]:
    """Entries [first, end) in order with their content and stored leaf hash, a page at a time."""
    while end is None or first < end:
        rows = await conn.fetch(
            f"SELECT {_ENTRY}, content, t.hash AS leaf FROM audit_log a"
            " LEFT JOIN audit_tree t ON t.level = 0 AND t.idx = a.seq"
            " WHERE a.seq >= $1 AND ($2::bigint IS NULL OR a.seq < $2) ORDER BY a.seq LIMIT $3",
            first,
            end,
            page,
        )
        for row in rows:
            yield row
        if len(rows) < page:
            return
        first = rows[-1]["seq"] + 1


async def period(
    conn: asyncpg.Connection, since: datetime.datetime, until: datetime.datetime
) -> tuple[int, int]:
    """The entries [first, end) made in [since, until): times grow with sequence numbers."""
    row = await conn.fetchrow(
        "SELECT min(seq) AS first, max(seq) AS last FROM audit_log WHERE at >= $1 AND at < $2",
        since,
        until,
    )
    if row["first"] is None:
        first: int = await conn.fetchval(
            "SELECT coalesce(min(seq), (SELECT size FROM audit_head)) FROM audit_log"
            " WHERE at >= $1",
            since,
        )
        return first, first
    return row["first"], row["last"] + 1
