"""Listing and searching handles with costs that do not grow with the table.

The tables are those of ``schemas/sql/003_search.sql``, kept by triggers on
``handles``: ``handle_counts`` (live count per prefix) and ``handle_terms`` (the
lower-cased text of every public string value, under its lower-cased type).

* A listing pages by keyset: the cursor holds the last suffix key, so a page
  deep in ten million handles costs what the first one does.
* A search matches one pattern per type. The text before the first ``*`` of a
  pattern is a range of the ``(type_key, term)`` index; a pattern that starts
  with ``*`` has none and reads every term of its type. Patterns match
  case-insensitively (``lower()`` on both sides); ``*`` is the only wildcard,
  ``%``, ``_`` and ``\\`` are literal. Each handle is answered once, at its first
  matching value (in term order), so cursor pages never repeat a handle.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from registry.errors import ProtocolError
from registry.handle import fold
from registry.store import Store, translated

TERM_CHARS = 256
"""Characters of a value kept in its term (the migration cuts terms to this)."""
MAX_PATTERN_CHARS = 4096
"""Longest search pattern accepted."""
MAX_CURSOR_CHARS = 8192
"""Longest cursor accepted (a cursor holds a term and a handle key)."""
_MAX_CHAR = 0x10FFFF
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]*")
_LIST_TAG, _SEARCH_TAG = "l", "s"
_MALFORMED = "cursor is malformed: pass the `next` of an earlier answer as it was"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of handles (as registered) and the cursor of the next page, if any."""

    handles: list[str]
    next: str | None


@dataclass(frozen=True, slots=True)
class Pattern:
    """A search pattern: ``*`` is the wildcard, everything else literal."""

    like: str
    """As a LIKE pattern (``%`` for ``*``, ``%``, ``_`` and ``\\`` escaped)."""
    start: str
    """The literal text before the first ``*``, cut to ``TERM_CHARS``: the index range."""
    exact: bool
    """No wildcard and shorter than a term: matching terms equal ``start``."""


def pattern(text: str, *, what: str = "pattern") -> Pattern:
    """Parse a search pattern; 400 when it cannot be one."""
    _check_text(text, what, MAX_PATTERN_CHARS)
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    start = text.split("*", 1)[0][:TERM_CHARS]
    exact = "*" not in text and len(text) < TERM_CHARS
    return Pattern(escaped.replace("*", "%"), start, exact)


def _check_text(text: str, what: str, longest: int) -> None:
    if len(text) > longest:
        raise ProtocolError(f"{what} is longer than {longest} characters")
    if "\x00" in text:
        raise ProtocolError(f"{what} must not contain NUL characters")


# --- cursors -------------------------------------------------------------------------------


def _encode(*parts: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).rstrip(b"=").decode()


def _decode(cursor: str, tag: str) -> list[Any]:
    """The parts of a cursor made by ``_encode(tag, ...)``; 400 for anything else."""
    bad = ProtocolError(_MALFORMED)
    if len(cursor) > MAX_CURSOR_CHARS or not _CURSOR_RE.fullmatch(cursor):
        raise bad
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(parts, list) or not parts or parts[0] != tag:
        raise bad
    for part in parts[1:]:
        if isinstance(part, str) and "\x00" in part:
            raise bad
    return parts[1:]


class SearchKey(NamedTuple):
    """Where a search page ends: the last row's term and key, in the order pages are read."""

    term: str
    prefix_key: str
    suffix_key: str
    idx: int


def listing_after(cursor: str) -> str:
    """The suffix key a listing cursor continues after; 400 when it is not one."""
    parts = _decode(cursor, _LIST_TAG)
    if len(parts) != 1 or not isinstance(parts[0], str):
        raise ProtocolError(_MALFORMED)
    return str(parts[0])


def search_after(cursor: str) -> SearchKey:
    """The position a search cursor continues after; 400 when it is not one."""
    parts = _decode(cursor, _SEARCH_TAG)
    if (
        len(parts) != 4
        or not all(isinstance(p, str) for p in parts[:3])
        or type(parts[3]) is not int
        or not -(2**31) <= parts[3] < 2**31
    ):
        raise ProtocolError(_MALFORMED)
    return SearchKey(*parts)


# --- listing -------------------------------------------------------------------------------


async def count_handles(store: Store, prefix: str) -> int:
    """How many handles the prefix holds, from the trigger-kept counters."""
    async with translated():
        total = await store.pool.fetchval(
            "SELECT coalesce(sum(n), 0) FROM handle_counts WHERE prefix_key = $1", fold(prefix)
        )
    return int(total)


def listing_query(
    prefix: str, *, after: str | None = None, offset: int = 0, limit: int
) -> tuple[str, list[object]]:
    """The statement and arguments of one listing page (``limit`` rows and one more)."""
    args: list[object] = [fold(prefix)]
    keyset = ""
    if after is not None:
        args.append(after)
        keyset = f" AND suffix_key > ${len(args)}"
    args += [offset, limit + 1]
    sql = (
        f"SELECT handle, suffix_key FROM handles WHERE prefix_key = $1{keyset}"
        f" ORDER BY suffix_key OFFSET ${len(args) - 1} LIMIT ${len(args)}"
    )
    return sql, args


async def list_handles(
    store: Store, prefix: str, *, after: str | None = None, offset: int = 0, limit: int
) -> Page:
    """The handles of a prefix by suffix key: after the key ``after`` (keyset) or from
    ``offset``. ``offset`` walks the rows it skips; deep pages should follow ``next``.
    """
    if limit == 0:
        return Page([], None)
    sql, args = listing_query(prefix, after=after, offset=offset, limit=limit)
    async with translated():
        rows = await store.pool.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    following = _encode(_LIST_TAG, rows[-1]["suffix_key"]) if more else None
    return Page([r["handle"] for r in rows], following)


# --- search --------------------------------------------------------------------------------


class _Args:
    """Numbered query arguments."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _match(alias: str, like: str) -> str:
    """``alias``'s value matches ``like``: by its term when the term is the whole value (tested
    on the index entry, before the record is read), else by the full stored value."""
    return (
        f"(({alias}.term LIKE {like} OR NOT {alias}.whole) AND ({alias}.whole OR EXISTS ("
        'SELECT 1 FROM jsonb_array_elements(handle_values_jsonb(h."values")) AS v'
        f" WHERE (v->>'index')::integer = {alias}.idx"
        f" AND lower(v->'data'->>'value') LIKE {like})))"
    )


def _range(alias: str, p: Pattern, start: str) -> str:
    """The index range of the terms that can match ``p``: equal to its start when exact,
    else from its start to its start followed by the last code point."""
    if p.exact:
        return f"{alias}.term = {start}"
    return f"{alias}.term >= {start} AND {alias}.term <= {start} || chr({_MAX_CHAR})"


def _criterion(alias: str, type_key: str, p: Pattern, arg: _Args) -> tuple[str, str, str]:
    """SQL for one (type, pattern): the type test, the range, and the match, on ``alias``."""
    like, start = f"lower({arg(p.like)})", f"lower({arg(p.start)})"
    return f"{alias}.type_key = lower({arg(type_key)})", _range(alias, p, start), like


def search_query(
    criteria: Sequence[tuple[str, Pattern]],
    *,
    prefix: str | None = None,
    after: SearchKey | None = None,
    offset: int = 0,
    limit: int,
) -> tuple[str, list[object]]:
    """The statement and arguments of one page of a search (``limit`` rows and one more).

    The most selective criterion (exact, then the longest literal start) drives the
    scan of the ``(type_key, term)`` index; every other one is checked on the
    candidate's own terms. Rows come in ``(term, prefix_key, suffix_key, idx)`` order
    of the driving criterion; a handle is kept only at its first matching term.
    """
    if not criteria:
        raise ProtocolError("give at least one search term")
    ordered = sorted(criteria, key=lambda c: (not c[1].exact, -len(c[1].start)))
    arg = _Args()
    (type_key, p), others = ordered[0], ordered[1:]
    is_type, in_range, like = _criterion("t", type_key, p, arg)
    where = [is_type]
    if after is None:
        where.append(in_range)
    else:
        start = f"({arg(after.term)}, {arg(after.prefix_key)}, {arg(after.suffix_key)},"
        start += f" {arg(after.idx)}::integer)"
        where += [f"(t.term, t.prefix_key, t.suffix_key, t.idx) > {start}", in_range]
    if prefix is not None:
        where.append(f"t.prefix_key = {arg(fold(prefix))}")
    where.append(_match("t", like))
    where.append(
        "NOT EXISTS (SELECT 1 FROM handle_terms AS e WHERE e.prefix_key = t.prefix_key"
        " AND e.suffix_key = t.suffix_key AND e.type_key = t.type_key"
        f" AND (e.term, e.idx) < (t.term, t.idx) AND {_match('e', like)})"
    )
    for n, (other_type, other) in enumerate(others):
        alias = f"o{n}"
        o_type, o_range, o_like = _criterion(alias, other_type, other, arg)
        where.append(
            f"EXISTS (SELECT 1 FROM handle_terms AS {alias} WHERE {alias}.prefix_key = t.prefix_key"
            f" AND {alias}.suffix_key = t.suffix_key AND {o_type} AND {o_range}"
            f" AND {_match(alias, o_like)})"
        )
    sql = (
        "SELECT h.handle, t.term, t.prefix_key, t.suffix_key, t.idx FROM handle_terms AS t"
        " JOIN handles AS h ON h.prefix_key = t.prefix_key AND h.suffix_key = t.suffix_key"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY t.term, t.prefix_key, t.suffix_key, t.idx"
        f" OFFSET {arg(offset)} LIMIT {arg(limit + 1)}"
    )
    return sql, arg.values


async def _search(
    store: Store,
    criteria: Sequence[tuple[str, Pattern]],
    *,
    prefix: str | None,
    after: SearchKey | None,
    offset: int,
    limit: int,
) -> Page:
    if limit == 0:
        return Page([], None)
    sql, args = search_query(criteria, prefix=prefix, after=after, offset=offset, limit=limit)
    async with translated():
        rows = await store.pool.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    following = None
    if more:
        last = rows[-1]
        following = _encode(
            _SEARCH_TAG, last["term"], last["prefix_key"], last["suffix_key"], last["idx"]
        )
    return Page([r["handle"] for r in rows], following)


async def find(
    store: Store,
    type_key: str,
    p: Pattern,
    *,
    prefix: str | None = None,
    after: SearchKey | None = None,
    limit: int,
) -> Page:
    """Handles with a public value of type ``type_key`` matching ``p``, a page after ``after``.

    ``type_key`` is matched case-insensitively and exactly (``URL`` is not ``URL.mirror``);
    a caller that knows a data-template field maps it to its type and calls this.
    """
    return await _search(store, [(type_key, p)], prefix=prefix, after=after, offset=0, limit=limit)


async def search(
    store: Store,
    criteria: Sequence[tuple[str, Pattern]],
    *,
    prefix: str | None = None,
    offset: int = 0,
    limit: int,
) -> list[str]:
    """Handles with, for every (type, pattern), a public value of that type matching it.

    Paged by ``offset`` (the Handle reverse-lookup protocol has no cursor): a deep
    page walks the matches before it.
    """
    page = await _search(store, criteria, prefix=prefix, after=None, offset=offset, limit=limit)
    return page.handles
