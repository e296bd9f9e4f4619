"""Bulk writes: many operations per transaction, written set-based.

A batch is a stream of operations (``create``, ``replace``, ``put-values``,
``delete``, ``delete-values``), each a JSON object such as
``{"op": "create", "handle": "88.118.8/A1", "values": [...]}`` (``op`` defaults
to ``create``, so the lines ``idnode export`` writes import as they are).

``BulkWriter.write`` takes one chunk of operations inside a transaction:

1. it reads and locks the chunk's existing records with one statement;
2. it applies the operations in order to that in-memory state, each with the
   same rules as a single write (responsibility, permissions checked once per
   prefix and permission, values checked, the prefix's data template), so two
   operations on one handle in a batch behave as two requests in a row;
3. it writes the final state of every changed handle set-based: new records by
   ``COPY`` straight into ``handles`` (falling back to a staging table and
   ``INSERT ... ON CONFLICT`` when a concurrent writer created one of them),
   changed ones by ``COPY`` into a staging table and one ``UPDATE ... FROM``,
   deleted ones by one ``DELETE``, and one audit entry per applied operation by
   ``COPY``; the transaction notifies every changed key.

A chunk in which every operation creates a record skips step 1: its records
were worked out ahead (``prepare``, while PostgreSQL wrote the previous chunk)
and are COPied at once; an existing record fails that COPY in its savepoint and
the chunk takes the three steps above.

``run`` drives a whole batch: in ``each`` mode every chunk is its own
transaction and a failing operation fails alone; in ``atomic`` mode one
transaction holds the whole batch and any failure rolls all of it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import orjson

from registry import audit
from registry import handle as hs
from registry import values as hv
from registry.auth import Identity
from registry.errors import (
    ClientError,
    HandleAlreadyExists,
    HandleNotFound,
    InsufficientPermissions,
    NotResponsible,
    ProtocolError,
    TemplateViolation,
    ValuesNotFound,
)
from registry.permissions import Perm
from registry.registry import Registry, keep_timestamps, needed_permissions, stored_value
from registry.store import Record, Store, Transaction, translated
from registry.templates import Template

OPERATIONS = ("create", "replace", "put-values", "delete", "delete-values")
CHUNK_SIZE = 2000
"""Operations per set-based write (and per transaction in ``each`` mode)."""

_HANDLE_COLUMNS = ["prefix_key", "suffix_key", "handle", "values", "all_public", "public_ttl"]
_STAGE = "idnode_bulk_stage"


class Mode(enum.StrEnum):
    ATOMIC = "atomic"
    EACH = "each"


@dataclass(frozen=True, slots=True)
class Operation:
    """One parsed operation; ``position`` is its item (or line) number in the batch."""

    position: int
    op: str
    handle: hs.Handle
    values: tuple[hv.Value, ...] = ()
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one operation: ``response_code`` 1 when it was applied."""

    position: int
    handle: str
    response_code: int
    message: str
    details: list[dict[str, str]] | None = None

    @property
    def ok(self) -> bool:
        return self.response_code == 1

    @classmethod
    def failed(cls, position: int, handle: str, exc: ClientError) -> Outcome:
        return cls(position, handle, exc.response_code, exc.message, exc.details)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "item": self.position,
            "handle": self.handle,
            "responseCode": self.response_code,
            "message": self.message,
        }
        if self.details:
            doc["errors"] = self.details
        return doc


Item = Operation | Outcome
"""What a batch reader yields: an operation, or the outcome of one it could not parse."""


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _restored(value: hv.Value, raw: Any) -> hv.Value:
    """``value`` with the timestamp its source carried, when it carried a well-formed one."""
    stamp = raw.get("timestamp") if isinstance(raw, Mapping) else None
    if isinstance(stamp, str) and _TIMESTAMP.fullmatch(stamp):
        return replace(value, timestamp=stamp)
    return value


def parse_operation(
    doc: Any, position: int, *, timestamp: str, keep_timestamps: bool = False
) -> Operation:
    """One operation from its JSON object; raises the node's ``ClientError`` when malformed.

    Values are stamped with ``timestamp``; with ``keep_timestamps`` (an operator
    restoring an export) a value keeps the timestamp it carries.
    """
    if not isinstance(doc, Mapping):
        raise ProtocolError("an operation must be a JSON object with at least a handle")
    unknown = set(doc) - {"op", "handle", "values", "index"}
    if unknown:
        raise ProtocolError(f"unknown operation field(s): {', '.join(sorted(map(str, unknown)))}")
    op = doc.get("op", "create")
    if op not in OPERATIONS:
        raise ProtocolError(f"op must be one of {', '.join(OPERATIONS)}, not {op!r}")
    text = doc.get("handle")
    if not isinstance(text, str):
        raise ProtocolError("handle must be a string")
    h = hs.parse(text)
    values: list[hv.Value] = []
    indexes: list[int] = []
    if op in ("create", "replace", "put-values"):
        if "values" not in doc:
            raise ProtocolError(f"{op} needs values")
        values = hv.parse_values(doc["values"], timestamp=timestamp)
        if keep_timestamps and isinstance(doc["values"], list):
            values = [_restored(v, raw) for v, raw in zip(values, doc["values"], strict=True)]
    elif "values" in doc:
        raise ProtocolError(f"{op} takes no values")
    if op == "delete-values":
        raw = doc.get("index")
        if not isinstance(raw, list) or not raw:
            raise ProtocolError("delete-values needs index: a non-empty array of indexes")
        indexes = [hv.parse_index(i) for i in raw]
    elif "index" in doc:
        raise ProtocolError(f"{op} takes no index (give the values' own indexes)")
    return Operation(position, op, h, tuple(values), tuple(indexes))


def parse_item(doc: Any, position: int, *, timestamp: str, keep_timestamps: bool = False) -> Item:
    """An operation, or the failed outcome of a document that is not one."""
    try:
        return parse_operation(doc, position, timestamp=timestamp, keep_timestamps=keep_timestamps)
    except ClientError as exc:
        handle = doc.get("handle") if isinstance(doc, Mapping) else None
        return Outcome.failed(position, handle if isinstance(handle, str) else "", exc)


def parse_line(raw: bytes, position: int, *, timestamp: str, keep_timestamps: bool = False) -> Item:
    """One NDJSON line (``position`` is its line number) as ``parse_item`` reads it."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Outcome.failed(position, "", ProtocolError(f"line {position}: not JSON: {exc}"))
    return parse_item(doc, position, timestamp=timestamp, keep_timestamps=keep_timestamps)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What creating a record would write, worked out ahead (see ``BulkWriter.prepare``)."""

    template: Template | None
    values: list[hv.Value]
    record: Record
    problem: TemplateViolation | None


@dataclass(slots=True)
class _Change:
    """The pending change of one handle in a chunk."""

    handle: hs.Handle
    before: Record | None
    after: Record | None
    audits: list[tuple[int, audit.Change]] = field(default_factory=list)
    """(position, audit entry) of every operation applied to it."""


class BulkWriter:
    """Applies chunks of operations for one caller.

    ``who`` is the authenticated caller; ``None`` with ``operator=True`` is the
    node's operator (``idnode import``), who may write under every homed prefix.
    Responsibility and permissions are looked up once per prefix (and
    permission) for the whole batch, from the prefix records' HS_ADMIN values:
    a batch writes as a prefix admin, never through a record's own HS_ADMIN.
    """

    def __init__(
        self,
        registry: Registry,
        who: Identity | None,
        *,
        actor: str,
        overwrite: bool,
        operator: bool = False,
    ) -> None:
        self.registry = registry
        self.who = who
        self.actor = actor
        self.overwrite = overwrite
        self.operator = operator
        self._homed: dict[str, bool] = {}
        self._allowed: dict[tuple[str, Perm], ClientError | None] = {}
        self._templates: dict[str, Template | None] = {}
        """The template each prefix had at its last chunk: what ``prepare`` checks against."""
        self._prepared: dict[int, _Prepared] = {}
        self.hold_audit = False

    async def prepare(self, ops: Sequence[Item]) -> None:
        """Work out ahead what creating each record would write, while the previous chunk is
        in PostgreSQL's hands: the stored values, the record's JSON and the template check.

        ``_apply`` uses it when the record turns out not to exist and the prefix's
        template is still the one checked here; otherwise it works it out again.
        """
        for n, op in enumerate(ops):
            if n % 64 == 63:
                await asyncio.sleep(0)  # let the previous chunk's statements go on
            if not isinstance(op, Operation) or op.op not in ("create", "replace"):
                continue
            h = op.handle
            if h.prefix_key not in self._templates:
                continue
            template = self._templates[h.prefix_key]
            try:
                values = self._new_values(op)
                problem = None
                if template is not None:
                    problem = template.violation(h.text, values)
                self._prepared[op.position] = _Prepared(
                    template, values, Record.of(h.text, values), problem
                )
            except ClientError:
                continue  # _apply raises it where it belongs

    def _new_values(self, op: Operation) -> list[hv.Value]:
        values = [stored_value(v, self.registry.sealer) for v in op.values]
        if op.op == "create" and self.who is not None:
            values = self.registry.with_default_admin(self.who, values)
        return values

    async def write(self, tx: Transaction, ops: Sequence[Operation]) -> list[Outcome]:
        """Apply ``ops`` in order inside ``tx``; one outcome per operation."""
        templates: dict[str, Template | None] = {}
        created = await self._create_all(tx, ops, templates)
        if created is not None:
            return created
        changes = await self._existing(tx, ops)
        outcomes: list[Outcome] = []
        for op in ops:
            try:
                message = await self._apply(tx, op, changes[op.handle.key], templates)
            except ClientError as exc:
                outcomes.append(Outcome.failed(op.position, op.handle.text, exc))
            else:
                outcomes.append(Outcome(op.position, op.handle.text, 1, message))
        for op in ops:
            self._prepared.pop(op.position, None)
        lost = await self._store(tx, changes)
        if lost:
            raced = HandleAlreadyExists("created meanwhile by another writer")
            outcomes = [
                Outcome.failed(o.position, o.handle, raced) if o.position in lost else o
                for o in outcomes
            ]
        return outcomes

    async def _create_all(
        self, tx: Transaction, ops: Sequence[Operation], templates: dict[str, Template | None]
    ) -> list[Outcome] | None:
        """The usual chunk of an import, cheaply: when every operation creates a record worked
        out ahead under the prefix's current template, COPY them all at once without reading
        first; a record that exists makes the COPY fail, and None sends the chunk the long way.
        """
        ready: list[tuple[Operation, _Prepared]] = []
        for op in ops:
            prepared = self._prepared.get(op.position)
            if op.op not in ("create", "replace") or prepared is None:
                return None
            ready.append((op, prepared))
        if len({op.handle.key for op in ops}) != len(ops):
            return None  # a handle twice: the second operation must see the first
        refused: dict[str, ClientError | None] = {}  # per prefix: checked once a chunk
        for op, _ in ready:
            h = op.handle
            if h.is_prefix_record:
                return None
            if h.prefix_key not in refused:
                try:
                    await self._require_homed(tx, h)
                    await self._authorise(tx, h, {Perm.ADD_HANDLE})
                    refused[h.prefix_key] = None
                except ClientError as exc:
                    refused[h.prefix_key] = exc
                await self._template(tx, h, templates)
        outcomes: list[Outcome] = []
        made: list[tuple[hs.Handle, _Prepared]] = []
        for op, prepared in ready:
            h = op.handle
            if prepared.template is not templates[h.prefix_key]:
                return None  # the template changed since: work it out again
            problem = refused[h.prefix_key] or prepared.problem
            if problem is not None:
                outcomes.append(Outcome.failed(op.position, h.text, problem))
                continue
            made.append((h, prepared))
            outcomes.append(Outcome(op.position, h.text, 1, "created"))
        conn = tx.conn
        rows = _rows((h, p.record) for h, p in made)
        try:
            async with conn.transaction():  # a savepoint: an existing record undoes only this
                await conn.copy_records_to_table("handles", records=rows, columns=_HANDLE_COLUMNS)
        except asyncpg.UniqueViolationError:
            return None
        audits = [
            audit.Change(
                self.actor, "create", h.text, sorted(v.index for v in p.values), None, p.record.raw
            )
            for h, p in made
        ]
        await self._audit(conn, audits)
        tx.changed.update(h.key for h, _ in made)
        for op in ops:
            self._prepared.pop(op.position, None)
        return outcomes

    # --- reading and applying ------------------------------------------------------------

    async def _existing(self, tx: Transaction, ops: Sequence[Operation]) -> dict[str, _Change]:
        """Every handle of the chunk with its current record, read and locked in one go."""
        wanted = {op.handle.key: op.handle for op in ops}
        rows = await tx.conn.fetch(
            'SELECT prefix_key, suffix_key, handle, "values", all_public, public_ttl'
            " FROM handles WHERE (prefix_key, suffix_key) IN"
            " (SELECT * FROM unnest($1::text[], $2::text[])) FOR UPDATE",
            [h.prefix_key for h in wanted.values()],
            [h.suffix_key for h in wanted.values()],
        )
        found = {
            f"{r['prefix_key']}/{r['suffix_key']}": Record(
                r["handle"], r["values"].encode(), r["all_public"], r["public_ttl"]
            )
            for r in rows
        }
        return {key: _Change(h, found.get(key), found.get(key)) for key, h in wanted.items()}

    async def _apply(
        self, tx: Transaction, op: Operation, change: _Change, templates: dict[str, Template | None]
    ) -> str:
        """Apply one operation to the pending state of its handle; answer what it did."""
        h = op.handle
        await self._require_homed(tx, h)
        if h.is_prefix_record:
            raise InsufficientPermissions(
                "prefix records are managed with `idnode prefix add`, not in batches",
                handle=h.text,
            )
        old = change.after
        old_values = old.values if old is not None else ()
        prepared = self._prepared.pop(op.position, None)
        if op.op in ("put-values", "delete", "delete-values") and old is None:
            raise HandleNotFound(handle=h.text)
        new_values: list[hv.Value] | None
        audit_indexes: list[int] | None
        if op.op in ("create", "replace"):
            if op.op == "create" and old is not None and not self.overwrite:
                raise HandleAlreadyExists(handle=h.text)
            new_values = prepared.values if prepared is not None else self._new_values(op)
            audit_indexes = sorted(v.index for v in new_values)
        elif op.op == "put-values":
            wanted = {v.index for v in op.values}
            sent = [stored_value(v, self.registry.sealer) for v in op.values]
            new_values = [v for v in old_values if v.index not in wanted] + sent
            hv.check_count(len(new_values))
            audit_indexes = sorted(wanted)
        elif op.op == "delete-values":
            absent = set(op.indexes) - {v.index for v in old_values}
            if absent:
                raise ValuesNotFound(
                    f"no value at index {', '.join(map(str, sorted(absent)))}", handle=h.text
                )
            new_values = [v for v in old_values if v.index not in op.indexes]
            audit_indexes = sorted(set(op.indexes))
        else:
            new_values, audit_indexes = None, None
        if new_values is None:
            await self._authorise(tx, h, {Perm.DELETE_HANDLE})
            change.after = None
            change.audits.append((op.position, self._entry("delete", h, None, old, None)))
            return "deleted"
        if old is None:
            await self._authorise(tx, h, {Perm.ADD_HANDLE})
        else:
            await self._authorise(tx, h, needed_permissions(old_values, new_values))
            new_values = keep_timestamps(old_values, new_values)
        template = await self._template(tx, h, templates)
        if old is None and prepared is not None and prepared.template is template:
            if prepared.problem is not None:
                raise prepared.problem
            record = prepared.record
        else:
            if template is not None:
                template.require(h.text, new_values)
            record = Record.of(h.text, new_values)
        if old is not None and record.raw == old.raw:
            return "unchanged"
        change.after = record
        if old is None:
            name, done = "create", "created"
        elif op.op in ("put-values", "delete-values"):
            name, done = op.op, "values changed"
        else:
            name, done = "replace", "replaced"
        change.audits.append((op.position, self._entry(name, h, audit_indexes, old, record)))
        return done

    async def _require_homed(self, tx: Transaction, h: hs.Handle) -> None:
        prefix_key = hs.fold(h.homing_prefix)
        homed = self._homed.get(prefix_key)
        if homed is None:
            homed = bool(
                await tx.conn.fetchval(
                    "SELECT true FROM prefixes WHERE prefix_key = $1", prefix_key
                )
            )
            self._homed[prefix_key] = homed
        if not homed:
            raise NotResponsible(
                f"prefix {h.homing_prefix} is not homed on this node", handle=h.text
            )

    async def _authorise(self, tx: Transaction, h: hs.Handle, perms: set[Perm]) -> None:
        """Check each permission once per prefix for the whole batch, against the HS_ADMIN
        values of the prefix records (``0.NA/<prefix>`` and its parents)."""
        if self.operator:
            return
        for perm in sorted(perms):
            key = (hs.fold(h.homing_prefix), perm)
            if key not in self._allowed:
                try:
                    prefix_record = hs.prefix_record(h.homing_prefix)
                    await self.registry.authority.require(self.who, prefix_record, [perm], None, tx)
                    self._allowed[key] = None
                except ClientError as exc:
                    self._allowed[key] = exc
            refused = self._allowed[key]
            if refused is not None:
                raise type(refused)(refused.message, handle=h.text)

    async def _template(
        self, tx: Transaction, h: hs.Handle, templates: dict[str, Template | None]
    ) -> Template | None:
        """The prefix's current template, read once per chunk."""
        if h.prefix_key not in templates:
            current = await self.registry.templates.current(tx.conn, h.prefix_key)
            templates[h.prefix_key] = self._templates[h.prefix_key] = current
        return templates[h.prefix_key]

    # --- writing -------------------------------------------------------------------------

    async def _store(self, tx: Transaction, changes: Mapping[str, _Change]) -> set[int]:
        """Write the chunk's final state set-based; answer the positions that lost a race."""
        inserts = [c for c in changes.values() if c.before is None and c.after is not None]
        updates = [c for c in changes.values() if c.before is not None and c.after is not None]
        deletes = [c for c in changes.values() if c.before is not None and c.after is None]
        updates = [c for c in updates if c.after is not None and c.before != c.after]
        conn = tx.conn
        lost: set[int] = set()
        if inserts:
            lost = await self._insert(conn, inserts)
        if updates:
            await self._stage(conn, updates)
            await conn.execute(
                f'UPDATE handles h SET "values" = s."values", all_public = s.all_public,'
                f" public_ttl = s.public_ttl, updated_at = now() FROM {_STAGE} s"
                " WHERE h.prefix_key = s.prefix_key AND h.suffix_key = s.suffix_key"
            )
        if deletes:
            await conn.execute(
                "DELETE FROM handles WHERE (prefix_key, suffix_key) IN"
                " (SELECT * FROM unnest($1::text[], $2::text[]))",
                [c.handle.prefix_key for c in deletes],
                [c.handle.suffix_key for c in deletes],
            )
        kept = sorted(
            (
                (position, entry)
                for c in changes.values()
                if not any(position in lost for position, _ in c.audits)
                for position, entry in c.audits
            ),
            key=lambda kept: kept[0],
        )
        await self._audit(conn, [entry for _, entry in kept])
        for c in (*inserts, *updates, *deletes):
            if not any(position in lost for position, _ in c.audits):
                tx.changed.add(c.handle.key)
        return lost

    def _entry(
        self,
        operation: str,
        h: hs.Handle,
        indexes: list[int] | None,
        before: Record | None,
        after: Record | None,
    ) -> audit.Change:
        return audit.Change(
            self.actor,
            operation,
            h.text,
            indexes,
            None if before is None else before.raw,
            None if after is None else after.raw,
        )

    async def _audit(self, conn: asyncpg.Connection, entries: Sequence[audit.Change]) -> None:
        """One audit entry per applied operation: appended now, or staged until the batch
        commits when it is one transaction (``hold_audit``), so other writers do not wait
        behind the log's head for the whole batch."""
        if self.hold_audit:
            await audit.stage(conn, entries)
        else:
            await audit.append(conn, entries)

    async def _insert(self, conn: asyncpg.Connection, inserts: Sequence[_Change]) -> set[int]:
        """COPY new records straight into ``handles``; if another writer created one of them
        meanwhile, insert through the staging table instead and answer who lost."""
        try:
            async with conn.transaction():  # a savepoint: a conflict undoes only this COPY
                await conn.copy_records_to_table(
                    "handles",
                    records=_rows((c.handle, c.after) for c in inserts if c.after),
                    columns=_HANDLE_COLUMNS,
                )
            return set()
        except asyncpg.UniqueViolationError:
            pass
        await self._stage(conn, inserts)
        made = await conn.fetch(
            f"INSERT INTO handles ({', '.join(_quoted(_HANDLE_COLUMNS))})"
            f" SELECT {', '.join(_quoted(_HANDLE_COLUMNS))} FROM {_STAGE}"
            " ON CONFLICT DO NOTHING RETURNING prefix_key, suffix_key"
        )
        kept = {(r["prefix_key"], r["suffix_key"]) for r in made}
        return {
            position
            for c in inserts
            if (c.handle.prefix_key, c.handle.suffix_key) not in kept
            for position, _ in c.audits
        }

    @staticmethod
    async def _stage(conn: asyncpg.Connection, changes: Sequence[_Change]) -> None:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE}"
            " (LIKE handles INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
            f" TRUNCATE {_STAGE}"
        )
        await conn.copy_records_to_table(
            _STAGE,
            records=_rows((c.handle, c.after) for c in changes if c.after),
            columns=_HANDLE_COLUMNS,
        )


def _quoted(columns: Sequence[str]) -> list[str]:
    return [f'"{c}"' for c in columns]


def _rows(records: Iterable[tuple[hs.Handle, Record]]) -> list[tuple[object, ...]]:
    """``handles`` rows, in ``_HANDLE_COLUMNS`` order."""
    return [
        (h.prefix_key, h.suffix_key, r.handle, r.raw.decode(), r.all_public, r.public_ttl)
        for h, r in records
    ]


# --- driving a whole batch -----------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    mode: Mode
    items: int = 0
    succeeded: int = 0
    failed: int = 0
    committed: bool = False
    message: str = ""
    stopped: ClientError | None = None
    """Why the batch could not be read to its end (too large, malformed, broken off)."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "mode": str(self.mode),
            "items": self.items,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "committed": self.committed,
            "message": self.message,
        }
        if self.stopped is not None:
            doc["error"] = {
                "responseCode": self.stopped.response_code,
                "message": self.stopped.message,
            }
        return {"summary": doc}


class _RolledBack(Exception):
    """Raised inside an atomic batch's transaction to undo it."""


class CallerGone(Exception):
    """The caller stopped taking results (its connection closed): the batch ends there.

    Not an ``OSError``: inside a transaction that would read as the database failing.
    """


async def _told(emit: Emit, outcomes: Sequence[Outcome]) -> None:
    try:
        await emit(outcomes)
    except (ConnectionError, OSError) as exc:
        raise CallerGone(str(exc)) from exc


Emit = Callable[[Sequence[Outcome]], Awaitable[None]]
ChunkHook = Callable[[Transaction, Sequence[Outcome]], Awaitable[None]]
"""Called inside each chunk's transaction (``each`` mode) with the chunk's outcomes."""


async def _chunks(
    items: AsyncIterator[Item], size: int, summary: Summary
) -> AsyncIterator[list[Item]]:
    """The items in chunks; a batch that cannot be read on ends where it broke."""
    chunk: list[Item] = []
    try:
        async for item in items:
            chunk.append(item)
            if len(chunk) % 64 == 0:
                await asyncio.sleep(0)  # let the previous chunk's write go on meanwhile
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except ClientError as exc:
        summary.stopped = exc
    if chunk:
        yield chunk


async def _write_chunk(writer: BulkWriter, tx: Transaction, chunk: Sequence[Item]) -> list[Outcome]:
    """Outcomes in batch order: the chunk's operations written, its unparsable items kept."""
    ops = [item for item in chunk if isinstance(item, Operation)]
    done = {o.position: o for o in await writer.write(tx, ops)} if ops else {}
    return [item if isinstance(item, Outcome) else done[item.position] for item in chunk]


async def run(
    writer: BulkWriter,
    items: AsyncIterator[Item],
    *,
    mode: Mode,
    emit: Emit,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: ChunkHook | None = None,
) -> Summary:
    """Apply a whole batch and report every outcome through ``emit`` as it is known.

    In ``each`` mode a chunk's outcomes are emitted once it committed. In
    ``atomic`` mode they are emitted as the batch goes; nothing is written unless
    the summary says ``committed``. An exception from ``items`` (the upload broke
    off) or from ``emit`` (the caller went away) rolls back what is not committed.
    """
    summary = Summary(mode)
    store = writer.registry.store

    def count(outcomes: Sequence[Outcome]) -> None:
        summary.items += len(outcomes)
        summary.succeeded += sum(o.ok for o in outcomes)
        summary.failed += sum(not o.ok for o in outcomes)

    if mode is Mode.EACH:

        async def each(chunk: Sequence[Item]) -> None:
            async with store.writing() as tx:
                outcomes = await _write_chunk(writer, tx, chunk)
                if on_chunk is not None:
                    await on_chunk(tx, outcomes)
            count(outcomes)
            await _told(emit, outcomes)

        await _overlapped(_chunks(items, chunk_size, summary), each, writer.prepare)
        summary.committed = summary.succeeded > 0
        summary.message = f"{summary.succeeded} applied, {summary.failed} failed"
        if summary.stopped is not None:
            summary.message += f"; the batch stopped early: {summary.stopped.message}"
        return summary
    writer.hold_audit = True
    try:
        async with store.writing() as tx:

            async def atomic(chunk: Sequence[Item]) -> None:
                outcomes = await _write_chunk(writer, tx, chunk)
                count(outcomes)
                await _told(emit, outcomes)

            await _overlapped(_chunks(items, chunk_size, summary), atomic, writer.prepare)
            if summary.failed or summary.stopped is not None:
                raise _RolledBack
            await audit.append_staged(tx.conn)
    except _RolledBack:
        why = summary.stopped.message if summary.stopped else f"{summary.failed} failed"
        summary.message = f"nothing was written: {why}"
        return summary
    summary.committed = True
    summary.message = f"all {summary.items} applied"
    return summary


async def _overlapped(
    chunks: AsyncIterator[list[Item]],
    work: Callable[[Sequence[Item]], Awaitable[None]],
    prepare: Callable[[Sequence[Item]], Awaitable[None]] | None = None,
) -> None:
    """``work`` on each chunk in order, one at a time, while the next chunk is read.

    PostgreSQL works on a chunk in its own process; reading and parsing the next
    one meanwhile (readers yield to the loop now and then) keeps both busy.
    """
    running: asyncio.Task[None] | None = None
    try:
        async for chunk in chunks:
            if prepare is not None:
                await prepare(chunk)
            if running is not None:
                await running
            running = asyncio.ensure_future(work(chunk))
        if running is not None:
            await running
    finally:
        if running is not None and not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running


# --- resumable imports and exports ---------------------------------------------------------


@dataclass(slots=True)
class ImportJob:
    """Where an import of one file stands, as its last committed chunk left it."""

    job: str
    path: str
    byte_offset: int = 0
    line: int = 0
    errors_size: int = 0
    applied: int = 0
    failed: int = 0
    done: bool = False

    @classmethod
    async def open(cls, store: Store, job: str, path: str, *, restart: bool) -> ImportJob:
        """The saved progress of ``job`` (a fresh start with ``restart``)."""
        async with translated():
            if restart:
                await store.pool.execute("DELETE FROM imports WHERE job = $1", job)
            row = await store.pool.fetchrow(
                "INSERT INTO imports (job, path) VALUES ($1, $2)"
                " ON CONFLICT (job) DO UPDATE SET path = excluded.path"
                " RETURNING byte_offset, line, errors_size, applied, failed, done",
                job,
                path,
            )
        return cls(job, path, **dict(row))

    async def save(self, tx: Transaction) -> None:
        """Record the progress in the chunk's own transaction."""
        await tx.conn.execute(
            "UPDATE imports SET byte_offset = $2, line = $3, errors_size = $4, applied = $5,"
            " failed = $6, done = $7, updated_at = now() WHERE job = $1",
            self.job,
            self.byte_offset,
            self.line,
            self.errors_size,
            self.applied,
            self.failed,
            self.done,
        )


async def export_prefix(
    store: Store, prefix: str, write: Callable[[bytes], Awaitable[None]]
) -> None:
    """Every record under ``prefix`` as NDJSON lines ``{"handle": ..., "values": [...]}``,
    streamed by ``COPY`` in key order and written through ``write`` as it comes.

    The stored values are copied as they are (no parsing): ``CSV`` format with a
    quote and delimiter that JSON text never contains leaves each line untouched.
    """
    query = (
        'SELECT \'{"handle":\' || to_json(handle)::text || \',"values":\' || "values"::text'
        " || '}' FROM handles WHERE prefix_key = $1 ORDER BY suffix_key"
    )
    async with translated(), store.pool.acquire() as conn:
        await conn.copy_from_query(
            query,
            hs.fold(prefix),
            output=write,
            format="csv",
            delimiter="\x02",
            quote="\x01",
            timeout=None,
        )
