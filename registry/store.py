"""The PostgreSQL store: the source of truth for records and homed prefixes.

Every write happens inside ``Store.writing()``: one transaction that changes
rows, appends the audit entry and sends ``NOTIFY idnode_changes`` with the
changed handle's key, so every serving process can drop it from its cache.
asyncpg's exceptions stop here: callers see only the node's own error tree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Protocol

import asyncpg
import orjson

from registry import audit
from registry import values as hv
from registry.errors import NotResponsible, ServerTooBusy, StoreError
from registry.handle import Handle, fold

_RECORD_COLUMNS = 'handle, "values", all_public, public_ttl'
CHANNEL = "idnode_changes"
"""The NOTIFY channel that carries the keys of the changed handles, one per line."""
NOTIFY_PAYLOAD_BYTES = 7900
"""PostgreSQL refuses NOTIFY payloads of 8000 bytes or more."""


def notification_payloads(keys: Collection[str]) -> list[str]:
    """The changed keys packed into as few payloads as fit, one key per line.

    Handles cannot contain control characters, so a newline never occurs in a key.
    """
    payloads: list[str] = []
    lines: list[str] = []
    size = 0
    for key in sorted(keys):
        length = len(key.encode()) + 1
        if lines and size + length > NOTIFY_PAYLOAD_BYTES:
            payloads.append("\n".join(lines))
            lines, size = [], 0
        lines.append(key)
        size += length
    if lines:
        payloads.append("\n".join(lines))
    return payloads


class Record:
    """A handle's whole record as stored.

    ``raw`` is the stored JSON array of the values in their served form (UTF-8
    bytes: a record whose values are all public is answered with them as they
    are); the values are parsed from it only when someone asks for them.
    """

    __slots__ = ("handle", "raw", "all_public", "public_ttl", "_values")

    def __init__(self, handle: str, raw: bytes, all_public: bool, public_ttl: int | None) -> None:
        self.handle = handle
        self.raw = raw
        self.all_public = all_public
        self.public_ttl = public_ttl
        self._values: tuple[hv.Value, ...] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.handle, self.raw) == (other.handle, other.raw)

    def __hash__(self) -> int:
        return hash((self.handle, self.raw))

    def __repr__(self) -> str:
        return f"Record({self.handle!r}, {self.raw!r})"

    @classmethod
    def of(cls, handle: str, values: Sequence[hv.Value]) -> Record:
        raw, all_public, public_ttl = stored_columns(values)
        return cls(handle, raw.encode(), all_public, public_ttl)

    @property
    def values(self) -> tuple[hv.Value, ...]:
        if self._values is None:
            self._values = tuple(hv.from_stored(item) for item in orjson.loads(self.raw))
        return self._values


def stored_columns(values: Sequence[hv.Value]) -> tuple[str, bool, int | None]:
    """The ``values``, ``all_public`` and ``public_ttl`` columns of a record."""
    ordered = sorted(values, key=lambda v: v.index)
    raw = orjson.dumps([v.to_json() for v in ordered]).decode()
    public_ttls = [v.ttl for v in ordered if v.public_read]
    return raw, len(public_ttls) == len(ordered), min(public_ttls, default=None)


def _record(row: asyncpg.Record) -> Record:
    return Record(row["handle"], row["values"].encode(), row["all_public"], row["public_ttl"])


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Translate asyncpg and socket failures into the node's errors."""
    try:
        yield
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        raise ServerTooBusy(f"database unavailable: {type(exc).__name__}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"database error {exc.sqlstate}: {exc}") from exc


CONNECT_TIMEOUT = 5.0
"""Seconds to open a PostgreSQL connection before the request fails (503) instead of hanging."""
COMMAND_TIMEOUT = 10.0
"""Seconds one statement may take before it fails (503) instead of hanging."""


async def _reset(conn: asyncpg.Connection) -> None:
    """Reset a released connection only when it needs it.

    asyncpg's default reset sends a query on every release (a round trip per
    lookup); this store leaves no session state behind (no LISTEN, advisory
    locks released explicitly), so only a connection left in a transaction needs it.
    """
    if conn.is_in_transaction():
        await conn.reset()


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, command_timeout: float = COMMAND_TIMEOUT
) -> asyncpg.Pool:
    """A connection pool set up for this store."""
    async with translated():
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=command_timeout,
            reset=_reset,
        )
    return pool


class Reader(Protocol):
    """Reads a record: the pool outside a transaction, the transaction's own connection inside."""

    async def get(self, h: Handle) -> Record | None: ...


_GET = f"SELECT {_RECORD_COLUMNS} FROM handles WHERE prefix_key = $1 AND suffix_key = $2"
_LOOKUP = (
    f"SELECT false AS is_prefix, suffix_key AS key, {_RECORD_COLUMNS} FROM handles"
    " WHERE prefix_key = $1 AND suffix_key = ANY($2::text[])"
    " UNION ALL SELECT true, prefix_key, NULL::text, NULL::json, NULL::boolean, NULL::integer"
    " FROM prefixes WHERE prefix_key = ANY($3::text[])"
)


def _homing_key(h: Handle) -> str:
    return h.suffix_key if h.is_prefix_record else h.prefix_key


class Transaction:
    """The write side of one open transaction.

    Everything read while the transaction runs (authorisation included) goes
    through its own connection: a second connection from the pool per write
    would let a burst of writes exhaust the pool and wait on each other forever.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.changed: set[str] = set()
        self._written: dict[str, str | None] = {}
        """The content each changed handle was left with (None: deleted), for its audit entry."""
        self.entries: list[audit.Change] = []
        """Audit entries to append when the transaction ends (see ``Store.writing``)."""

    @property
    def conn(self) -> asyncpg.Connection:
        """The transaction's connection, for set-based work (bulk writes, templates)."""
        return self._conn

    async def get(self, h: Handle) -> Record | None:
        row = await self._conn.fetchrow(_GET, h.prefix_key, h.suffix_key)
        return _record(row) if row else None

    async def lock(self, h: Handle) -> Record | None:
        """Read a record and lock it until the transaction ends."""
        row = await self._conn.fetchrow(
            f"SELECT {_RECORD_COLUMNS} FROM handles"
            " WHERE prefix_key = $1 AND suffix_key = $2 FOR UPDATE",
            h.prefix_key,
            h.suffix_key,
        )
        return _record(row) if row else None

    async def insert(self, h: Handle, values: Sequence[hv.Value]) -> bool:
        """Create a record; False when it exists already."""
        columns = stored_columns(values)
        inserted = await self._conn.fetchval(
            'INSERT INTO handles (prefix_key, suffix_key, handle, "values", all_public, public_ttl)'
            " VALUES ($1, $2, $3, $4::json, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
            h.prefix_key,
            h.suffix_key,
            h.text,
            *columns,
        )
        if inserted:
            self.changed.add(h.key)
            self._written[h.key] = columns[0]
        return bool(inserted)

    async def update(self, h: Handle, values: Sequence[hv.Value]) -> None:
        columns = stored_columns(values)
        await self._conn.execute(
            'UPDATE handles SET "values" = $3::json, all_public = $4, public_ttl = $5,'
            " updated_at = now() WHERE prefix_key = $1 AND suffix_key = $2",
            h.prefix_key,
            h.suffix_key,
            *columns,
        )
        self.changed.add(h.key)
        self._written[h.key] = columns[0]

    async def delete(self, h: Handle) -> bool:
        status = await self._conn.execute(
            "DELETE FROM handles WHERE prefix_key = $1 AND suffix_key = $2",
            h.prefix_key,
            h.suffix_key,
        )
        self.changed.add(h.key)
        self._written[h.key] = None
        return bool(status.endswith(" 1"))

    async def home_prefix(self, prefix: str) -> bool:
        """Record a homed prefix; False when it was homed already."""
        return bool(
            await self._conn.fetchval(
                "INSERT INTO prefixes (prefix_key, prefix) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                fold(prefix),
                prefix,
            )
        )

    def audit(
        self,
        actor: str,
        operation: str,
        h: Handle,
        indexes: Sequence[int] | None = None,
        *,
        before: Record | None = None,
    ) -> None:
        """The audit entry of this transaction's change to ``h``: its content ``before`` and
        the content this transaction left it with. Appended as the transaction ends."""
        after = self._written.get(h.key)
        content = None if before is None else before.raw
        self.entries.append(audit.Change(actor, operation, h.text, indexes, content, after))


ChangeHook = Callable[[Collection[str]], None]


class Store:
    """Reads and transactions over one asyncpg pool.

    ``on_change`` hooks are called with the keys a transaction changed, after it
    committed and before the write is answered (the writing process's own cache
    is invalidated there; other processes learn of it through ``NOTIFY``).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.on_change: list[ChangeHook] = []

    async def lookup_many(self, handles: Sequence[Handle]) -> list[tuple[bool, Record | None]]:
        """For each handle: whether its prefix is homed here, and its record.

        One statement per prefix among the handles (usually one): the records by
        ``suffix_key = ANY(...)`` on the primary key, and the homed prefixes.
        """
        groups: dict[str, list[Handle]] = {}
        for h in handles:
            groups.setdefault(h.prefix_key, []).append(h)
        found: dict[tuple[str, str], Record] = {}
        homed: set[str] = set()
        async with translated(), self.pool.acquire() as conn:
            for prefix_key, group in groups.items():
                rows = await conn.fetch(
                    _LOOKUP,
                    prefix_key,
                    [h.suffix_key for h in group],
                    list({_homing_key(h) for h in group}),
                )
                for row in rows:
                    if row["is_prefix"]:
                        homed.add(row["key"])
                    else:
                        found[(prefix_key, row["key"])] = _record(row)
        return [(_homing_key(h) in homed, found.get((h.prefix_key, h.suffix_key))) for h in handles]

    async def get(self, h: Handle) -> Record | None:
        """The whole record of one handle, by one primary-key lookup."""
        async with translated():
            row = await self.pool.fetchrow(_GET, h.prefix_key, h.suffix_key)
        return _record(row) if row else None

    async def is_homed(self, prefix: str) -> bool:
        async with translated():
            found = await self.pool.fetchval(
                "SELECT true FROM prefixes WHERE prefix_key = $1", fold(prefix)
            )
        return bool(found)

    async def require_homed(self, prefix: str, handle: str) -> None:
        """Raise ``NotResponsible`` unless ``prefix`` is homed on this node."""
        if not await self.is_homed(prefix):
            raise NotResponsible(f"prefix {prefix} is not homed on this node", handle=handle)

    async def homed_prefixes(self) -> list[str]:
        async with translated():
            rows = await self.pool.fetch("SELECT prefix FROM prefixes ORDER BY prefix_key")
        return [r["prefix"] for r in rows]

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[Transaction]:
        """One write transaction; notifies the changed handles when it commits."""
        async with translated(), self.pool.acquire() as conn:
            async with conn.transaction():
                tx = Transaction(conn)
                yield tx
                # last, in one statement: the audit log's head stays locked until the commit
                await audit.append(conn, tx.entries, CHANNEL, notification_payloads(tx.changed))
        if tx.changed:
            for hook in self.on_change:
                hook(tx.changed)

    async def ping(self) -> float:
        """Round-trip time of a trivial query, in seconds."""
        started = time.perf_counter()
        async with translated():
            await self.pool.fetchval("SELECT 1")
        return time.perf_counter() - started
