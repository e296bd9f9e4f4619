"""Search and listing latency over ten million records (issue 5's goal).

Goal: p99 under 10 ms for an exact value match and for page 10,000 of a listing,
over 10 million records.

1. **Data.** Its own database ``idnode_bench_search`` on the benchmark server
   (``DATABASE_URL`` or the embedded one under ``.data/bench/pg``), KEPT between
   runs: seeded only when it does not already hold the full set (the seeding
   figures are kept in the database's comment and reported on every run).
   ``IDNODE_BENCH_SEARCH_RECORDS`` records (default 10,000,000) ``88.950.1/P<n>``,
   each an auto part: URL (unique), PART_NUMBER (unique, ``JX-`` and 8 scrambled
   digits), BATCH_NUMBER (5,000 records a batch), PRODUCTION_DATE (public strings)
   and the HS_ADMIN a record made by the prefix admin gets, stored as the node
   stores them (the JSON text is built in SQL from a template made by
   ``registry.store.stored_columns``, and checked against it afterwards).
2. **Seeding** bypasses the search triggers for the bulk load: the ``handle_terms``
   indexes are dropped and the user triggers on ``handles`` disabled; the records
   are written by ``INSERT ... SELECT FROM generate_series`` in chunks (two
   connections); then ``handle_terms`` and ``handle_counts`` are filled set-based
   with the migration's own backfill (``handle_terms_of``, slot 0), the indexes
   re-created from their own definitions, the triggers enabled, and both tables
   vacuumed and analyzed. Reported: seconds by phase, rows/s, disk used.
3. **Latency** over HTTP against ``idnode serve`` (one worker, rate limits off),
   one request at a time after a warm-up: exact, prefix and batch searches on
   ``/api/search``, ``/hrls/handles`` by exact URL, and the listing
   ``/api/handles?prefix=`` at page 1 and at page 10,000 (by keyset cursor, and by
   ``page=`` offset for comparison). The listing is authenticated once, by a Handle
   challenge-response session (HS_SECKEY, SHA256) whose ``JSESSIONID`` cookie the
   client then sends alone.

``python -m benchmarks.search`` runs it alone; ``run(server)`` answers the result lines.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import orjson

from benchmarks import dataset, targets
from benchmarks.system import ROOT
from registry import handle as hs
from registry import permissions
from registry import values as hv
from registry.auth import Identity
from registry.keys import Sealer
from registry.registry import ADMIN_INDEX, SECRET_INDEX, Registry
from registry.store import Store, create_pool, stored_columns
from resolver.database import start_embedded

RECORDS = int(os.environ.get("IDNODE_BENCH_SEARCH_RECORDS", "10000000"))
DATABASE = "idnode_bench_search"
PREFIX = "88.950.1"
SECRET = "bench-secret"
ADMIN_IDENTITY = f"{SECRET_INDEX}:0.NA/{PREFIX}"
TIMESTAMP = "2026-01-05T08:00:00Z"
BENCH_DIR = ROOT / ".data" / "bench"
LOG_DIR = BENCH_DIR / "logs"

DIGITS = 8
"""Digits of ``n`` in a suffix (``P00000042``) and of a part number: up to 10^8 records."""
PART_SPACE = 10**DIGITS
PART_FACTOR, PART_SHIFT = 48271, 12345
"""Part number of record n: ``(n × 48271 + 12345) mod 10^8`` (a bijection: 48271 is prime)."""
BATCH_SIZE = 5000
FIRST_DAY = datetime.date(2026, 1, 1)
PREFIX_DIGITS = 5
"""Digits of a part number before the ``*`` of a prefix search: ~100 matches in 10^7 records."""

CHUNK = 250_000
WORKERS = 2
"""Connections loading at once (the machine has two cores)."""
MAINTENANCE_WORK_MEM = "1GB"

REQUESTS = 2000
WARMUP = 200
OFFSET_REQUESTS = 20
HRLS_REQUESTS = 200
PAGE_SIZE = 100
DEEP_PAGE = 10_000
"""Page number (from 1) of the deep listing page: rows 999,901 to 1,000,000."""
GOAL_MS = 10.0


# --- the records ---------------------------------------------------------------------------


def suffix(n: int) -> str:
    return f"P{n:0{DIGITS}d}"


def handle(n: int) -> str:
    return f"{PREFIX}/{suffix(n)}"


def url(n: int) -> str:
    return f"https://parts.example.com/p/{suffix(n)}"


def part_number(n: int) -> str:
    return f"JX-{(n * PART_FACTOR + PART_SHIFT) % PART_SPACE:0{DIGITS}d}"


def batch_number(n: int) -> str:
    return f"B2026-{n // BATCH_SIZE:05d}"


def production_date(n: int) -> str:
    return (FIRST_DAY + datetime.timedelta(days=(n // BATCH_SIZE) % 365)).isoformat()


def values_of(url_text: str, part: str, batch: str, day: str) -> list[hv.Value]:
    """A record's values, in index order, as the node would store them."""
    admin = {
        "handle": f"0.NA/{PREFIX}",
        "index": SECRET_INDEX,
        "permissions": permissions.HANDLE_ADMIN_DEFAULT,
    }
    return [
        hv.Value(1, "URL", "string", url_text, timestamp=TIMESTAMP),
        hv.Value(2, "PART_NUMBER", "string", part, timestamp=TIMESTAMP),
        hv.Value(3, "BATCH_NUMBER", "string", batch, timestamp=TIMESTAMP),
        hv.Value(4, "PRODUCTION_DATE", "string", day, timestamp=TIMESTAMP),
        hv.Value(ADMIN_INDEX, hv.ADMIN_TYPE, "admin", admin, timestamp=TIMESTAMP),
    ]


def record_values(n: int) -> list[hv.Value]:
    return values_of(url(n), part_number(n), batch_number(n), production_date(n))


# The same in SQL, for the rows of generate_series: each placeholder of the template
# is a column of the subquery `g` below.
_PLACEHOLDERS = {
    "@@URL@@": "g.url",
    "@@PART@@": "g.part",
    "@@BATCH@@": "g.batch",
    "@@DAY@@": "g.day",
}
_SERIES = f"""
    SELECT s, 'https://parts.example.com/p/' || s AS url,
           'JX-' || lpad(((n * {PART_FACTOR} + {PART_SHIFT}) % {PART_SPACE})::text, {DIGITS}, '0')
               AS part,
           'B2026-' || lpad((n / {BATCH_SIZE})::text, 5, '0') AS batch,
           to_char(date '{FIRST_DAY.isoformat()}' + ((n / {BATCH_SIZE}) % 365)::integer,
                   'YYYY-MM-DD') AS day
    FROM (SELECT n, 'P' || lpad(n::text, {DIGITS}, '0') AS s
          FROM generate_series($5::bigint, $6::bigint - 1) AS n) AS numbered
"""


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def insert_sql() -> tuple[str, bool, int | None]:
    """The INSERT of records [$5, $6), and the (equal for all) all_public and public_ttl."""
    text, all_public, ttl = stored_columns(values_of(*_PLACEHOLDERS))
    pieces = re.split("(" + "|".join(map(re.escape, _PLACEHOLDERS)) + ")", text)
    expression = " || ".join(_PLACEHOLDERS.get(p) or _sql_literal(p) for p in pieces if p)
    sql = (
        'INSERT INTO handles (prefix_key, suffix_key, handle, "values", all_public, public_ttl)'
        f" SELECT $1, lower(g.s), $2 || g.s, ({expression})::json, $3, $4 FROM ({_SERIES}) AS g"
    )
    return sql, all_public, ttl


TERMS_SQL = """
INSERT INTO handle_terms (prefix_key, suffix_key, idx, type_key, term, whole)
SELECT f.* FROM handles AS h, handle_terms_of(h.prefix_key, h.suffix_key, h."values") AS f
WHERE h.prefix_key = $1 AND h.suffix_key >= $2 AND h.suffix_key < $3
"""
"""The migration's backfill of handle_terms, for one range of the prefix's records."""
COUNTS_SQL = """
INSERT INTO handle_counts (prefix_key, slot, n)
SELECT prefix_key, 0, count(*) FROM handles WHERE prefix_key = $1 GROUP BY prefix_key
"""
"""The migration's backfill of handle_counts, for the prefix."""


# --- the database --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seeding:
    """How the database was seeded (kept in its comment, so later runs report it)."""

    records: int
    phases: dict[str, float]
    at: str

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())

    def lines(self, reused: bool) -> list[str]:
        phases = ", ".join(f"{k} {v:,.0f} s" for k, v in self.phases.items())
        load = self.phases.get("handles", 0.0)
        when = f"reused; seeded {self.at}" if reused else f"seeded now, {self.at}"
        return [
            f"seeding: {self.records:,} records in {self.seconds:,.0f} s"
            f" ({self.records / self.seconds:,.0f} records/s overall;"
            f" handles loaded at {self.records / load:,.0f} rows/s) [{when}]",
            f"seeding phases: {phases}",
            "seeding bypassed the search triggers (handle_terms indexes dropped, user"
            " triggers on handles disabled) and rebuilt handle_terms, handle_counts and"
            " the indexes afterwards, as migration 003's backfill does",
        ]


async def seeding_of(conn: asyncpg.Connection) -> Seeding | None:
    """The seeding recorded in the database's comment, if the set is complete."""
    comment = await conn.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname = current_database()"
    )
    try:
        kept = orjson.loads(comment or "null")
        seeding = Seeding(int(kept["records"]), dict(kept["phases"]), str(kept["at"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    counted = await conn.fetchval(
        "SELECT coalesce(sum(n), 0) FROM handle_counts WHERE prefix_key = $1", hs.fold(PREFIX)
    )
    indexes = await conn.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'handle_terms'"
        " AND indexname IN ('handle_terms_match', 'handle_terms_record')"
    )
    disabled = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'handles'::regclass"
        " AND NOT tgisinternal AND tgenabled = 'D'"
    )
    if int(counted) != seeding.records or indexes != 2 or disabled:
        return None
    return seeding


async def existing(server: str, records: int) -> Seeding | None:
    seeding = await dataset.kept(server, DATABASE, seeding_of)
    if seeding is not None and seeding.records != records:
        print(f"search: {DATABASE} holds {seeding.records:,} records, want {records:,}")
        return None
    return seeding


async def fresh_database(server: str) -> str:
    dsn = await dataset.recreate(server, DATABASE)
    pool = await create_pool(dsn, max_size=1)
    try:
        await Registry(Store(pool)).home_prefix(PREFIX, SECRET, actor="bench")
    finally:
        await pool.close()
    return dsn


Chunk = Callable[[asyncpg.Connection, int, int], Awaitable[Any]]


async def in_chunks(dsn: str, what: str, records: int, work: Chunk) -> float:
    """Run ``work(conn, start, stop)`` over [0, records) in chunks on ``WORKERS`` connections."""
    chunks = [(s, min(s + CHUNK, records)) for s in range(0, records, CHUNK)]
    pending = list(reversed(chunks))
    done = 0
    step = max(records // 10, 1)
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        conn = await asyncpg.connect(dsn)
        try:
            while pending:
                start, stop = pending.pop()
                await work(conn, start, stop)
                before, done = done, done + (stop - start)
                if done // step != before // step or done == records:
                    elapsed = time.perf_counter() - started
                    print(
                        f"search: {what} {done:,}/{records:,} ({elapsed:,.0f} s,"
                        f" {done / elapsed:,.0f} records/s)",
                        flush=True,
                    )
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return time.perf_counter() - started


async def seed(server: str, records: int) -> Seeding:
    """A fresh database holding ``records`` records, seeded in bulk."""
    if not 0 < records <= PART_SPACE:
        raise SystemExit(f"search: IDNODE_BENCH_SEARCH_RECORDS must be from 1 to {PART_SPACE:,}")
    phases: dict[str, float] = {}
    started = time.perf_counter()
    print(f"search: seeding {records:,} records into {DATABASE} (a fresh database)", flush=True)
    dsn = await fresh_database(server)
    phases["database"] = time.perf_counter() - started
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'handle_terms'"
            " ORDER BY indexname"
        )
        names, definitions = [r["indexname"] for r in found], [r["indexdef"] for r in found]
        for name in names:
            await conn.execute(f"DROP INDEX {name}")
        await conn.execute("ALTER TABLE handles DISABLE TRIGGER USER")
        print(f"search: dropped {', '.join(names)}; user triggers on handles disabled", flush=True)

        sql, all_public, ttl = insert_sql()
        prefix_key = hs.fold(PREFIX)

        async def load(c: asyncpg.Connection, start: int, stop: int) -> None:
            await c.execute(sql, prefix_key, PREFIX + "/", all_public, ttl, start, stop)

        async def terms(c: asyncpg.Connection, start: int, stop: int) -> None:
            low, high = hs.fold(suffix(start)), hs.fold(suffix(stop))
            await c.execute(TERMS_SQL, prefix_key, low, high)

        phases["handles"] = await in_chunks(dsn, "handles", records, load)
        await check_stored(conn, records)
        phases["terms"] = await in_chunks(dsn, "handle_terms", records, terms)
        began = time.perf_counter()
        await conn.execute(COUNTS_SQL, prefix_key)
        phases["counts"] = time.perf_counter() - began

        began = time.perf_counter()
        await conn.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        for name, definition in zip(names, definitions, strict=True):
            one = time.perf_counter()
            await conn.execute(definition)
            print(f"search: built {name} ({time.perf_counter() - one:,.0f} s)", flush=True)
        await conn.execute("ALTER TABLE handles ENABLE TRIGGER USER")
        phases["indexes"] = time.perf_counter() - began

        began = time.perf_counter()
        for table in ("handles", "handle_terms"):
            one = time.perf_counter()
            await conn.execute(f"VACUUM ANALYZE {table}")
            print(f"search: vacuumed {table} ({time.perf_counter() - one:,.0f} s)", flush=True)
        phases["vacuum"] = time.perf_counter() - began

        at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        seeding = Seeding(records, phases, at)
        kept = orjson.dumps({"records": records, "phases": phases, "at": at}).decode()
        await conn.execute(f"COMMENT ON DATABASE {DATABASE} IS {_sql_literal(kept)}")
        if await seeding_of(conn) is None:
            raise SystemExit("search: the seeded database does not hold the full set")
    finally:
        await conn.close()
    return seeding


async def check_stored(conn: asyncpg.Connection, records: int) -> None:
    """The records written in SQL are the bytes the node would have written."""
    for n in sorted({0, 1, records // 2, records - 1, random.randrange(records)}):
        row = await conn.fetchrow(
            'SELECT handle, "values", all_public, public_ttl FROM handles'
            " WHERE prefix_key = $1 AND suffix_key = $2",
            hs.fold(PREFIX),
            hs.fold(suffix(n)),
        )
        expected = (handle(n), *stored_columns(record_values(n)))
        if row is None or tuple(row) != expected:
            raise SystemExit(f"search: record {n} was stored as {row}, expected {expected}")


@dataclass(frozen=True, slots=True)
class Disk:
    database: int
    handles: int
    terms: int
    terms_indexes: int

    def line(self) -> str:
        gb = 1e9
        return (
            f"disk: database {self.database / gb:,.2f} GB (handles {self.handles / gb:,.2f} GB"
            f" with its primary key, handle_terms {self.terms / gb:,.2f} GB of which indexes"
            f" {self.terms_indexes / gb:,.2f} GB)"
        )


async def disk(dsn: str) -> Disk:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT pg_database_size(current_database()) AS db,"
            " pg_total_relation_size('handles') AS handles,"
            " pg_total_relation_size('handle_terms') AS terms,"
            " pg_indexes_size('handle_terms') AS terms_indexes"
        )
    finally:
        await conn.close()
    return Disk(row["db"], row["handles"], row["terms"], row["terms_indexes"])


async def prepare(server: str, records: int) -> tuple[str, Seeding, bool]:
    """The database's URL, how it was seeded, and whether it was reused."""
    seeding = await existing(server, records)
    if seeding is not None:
        print(f"search: {DATABASE} already holds {records:,} records; not reseeding", flush=True)
        return dataset.with_database(server, DATABASE), seeding, True
    seeding = await seed(server, records)
    return dataset.with_database(server, DATABASE), seeding, False


async def reseal(dsn: str, sealer: Sealer) -> None:
    """Store the admin secret sealed with the node's sealing key, so the node can check a
    challenge answer keyed by it (a hash alone only serves HTTP Basic)."""
    pool = await create_pool(dsn, max_size=1)
    try:
        registry = Registry(Store(pool), sealer=sealer)
        record = hs.prefix_record(PREFIX)
        secret = hv.Value(
            SECRET_INDEX,
            hv.SECKEY_TYPE,
            "string",
            SECRET,
            timestamp=registry.timestamp(),
            permissions=hv.SECRET_PERMISSIONS,
        )
        who = Identity(SECRET_INDEX, record)
        await registry.put_values(who, record, [secret], [SECRET_INDEX])
    finally:
        await pool.close()


# --- latency -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    name: str
    samples: list[float]
    """Milliseconds, one per request."""
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]

    @property
    def p50(self) -> float:
        return self.pct(0.50)

    @property
    def p90(self) -> float:
        return self.pct(0.90)

    @property
    def p99(self) -> float:
        return self.pct(0.99)

    @property
    def max(self) -> float:
        return max(self.samples)


Check = Callable[[Any], None]
Request = tuple[str, Check]


class Failed(Exception):
    pass


def expect(what: str, got: object, wanted: object) -> None:
    if got != wanted:
        raise Failed(f"{what}: got {str(got)[:300]}, expected {str(wanted)[:300]}")


async def fetch(http: aiohttp.ClientSession, address: str) -> tuple[float, Any]:
    started = time.perf_counter()
    async with http.get(address) as r:
        body = await r.read()
    ms = (time.perf_counter() - started) * 1000
    if r.status != 200:
        raise Failed(f"GET {address} answered {r.status}: {body[:300]!r}")
    return ms, orjson.loads(body)


async def timed(
    http: aiohttp.ClientSession,
    name: str,
    make: Callable[[int], Request],
    count: int,
    warmup: int = WARMUP,
    note: str = "",
) -> Timing:
    """``count`` requests one at a time after ``warmup`` untimed ones; every answer checked."""
    for i in range(warmup):
        address, check = make(i)
        check((await fetch(http, address))[1])
    samples = []
    for i in range(count):
        address, check = make(warmup + i)
        ms, body = await fetch(http, address)
        check(body)
        samples.append(ms)
    t = Timing(name, samples, note)
    print(
        f"search: {name:<44} p50 {t.p50:7.2f}  p90 {t.p90:7.2f}  p99 {t.p99:7.2f}"
        f"  max {t.max:8.2f} ms ({count} requests)",
        flush=True,
    )
    return t


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


async def log_in(http: aiohttp.ClientSession, base: str) -> float:
    """Authenticate a session once (HS_SECKEY challenge-response, SHA256); the client then
    carries it in the JSESSIONID cookie. Answers the milliseconds it took."""
    started = time.perf_counter()
    async with http.post(f"{base}/api/sessions") as r:
        challenge = await r.json()
        if r.status != 201:
            raise Failed(f"POST /api/sessions answered {r.status}: {challenge}")
    nonce, cnonce, secret = base64.b64decode(challenge["nonce"]), os.urandom(16), SECRET.encode()
    signature = hashlib.sha256(secret + nonce + cnonce + secret).digest()
    header = (
        f'Handle version="0", sessionId="{challenge["sessionId"]}", id="{ADMIN_IDENTITY}",'
        f' type="HS_SECKEY", cnonce="{_b64(cnonce)}", alg="SHA256", signature="{_b64(signature)}"'
    )
    async with http.put(f"{base}/api/sessions/this", headers={"Authorization": header}) as r:
        answer = await r.json()
        if r.status != 200 or not answer.get("authenticated"):
            raise Failed(f"the session answer was refused ({r.status}): {answer}")
    return (time.perf_counter() - started) * 1000


def api(base: str, path: str, **query: object) -> str:
    return f"{base}{path}?{urlencode(query)}"


@dataclass(frozen=True, slots=True)
class Latency:
    timings: list[Timing]
    notes: list[str]

    def get(self, name: str) -> Timing:
        return next(t for t in self.timings if t.name == name)


EXACT = "search exact PART_NUMBER"
PREFIX_MATCH = "search prefix PART_NUMBER (JX-nnnnn*)"
BATCH = "search BATCH_NUMBER in prefix, limit 100"
HRLS = "/hrls/handles?URL=<exact url>"
PAGE_ONE = "listing page 1"
DEEP_CURSOR = "listing page {page:,} by cursor"
DEEP_OFFSET = "listing page {page:,} by page= (OFFSET)"


async def measure_latency(base: str, records: int) -> Latency:
    rng = random.Random()  # other values every run: none cached by an earlier run
    draws = [rng.randrange(records) for _ in range(WARMUP + REQUESTS)]
    notes: list[str] = []
    timings: list[Timing] = []
    page_size = min(PAGE_SIZE, records)
    deep = min(DEEP_PAGE, records // page_size)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        def exact(i: int) -> Request:
            n = draws[i]

            def check(body: Any) -> None:
                expect(f"search for {part_number(n)}", body["handles"], [handle(n)])

            return api(base, "/api/search", type="PART_NUMBER", value=part_number(n)), check

        hits: list[int] = []

        def starts(i: int) -> Request:
            start = part_number(draws[i])[: 3 + PREFIX_DIGITS]

            def check(body: Any) -> None:
                found = body["handles"]
                if not found or len(found) > 100:
                    raise Failed(f"prefix search {start}*: {len(found)} handles")
                hits.append(len(found))

            return api(base, "/api/search", type="PART_NUMBER", value=start + "*"), check

        def batch(i: int) -> Request:
            n = draws[i]
            first = n - n % BATCH_SIZE
            wanted = [handle(m) for m in range(first, min(first + 100, records))]

            def check(body: Any) -> None:
                expect(f"batch {batch_number(n)}", body["handles"], wanted)

            address = api(
                base, "/api/search", prefix=PREFIX, type="BATCH_NUMBER", value=batch_number(n)
            )
            return address + "&limit=100", check

        def hrls(i: int) -> Request:
            n = draws[i]

            def check(body: Any) -> None:
                expect(f"/hrls/handles?URL={url(n)}", body, [handle(n)])

            return api(base, "/hrls/handles", URL=url(n)), check

        timings.append(await timed(http, EXACT, exact, REQUESTS))
        timings.append(await timed(http, PREFIX_MATCH, starts, REQUESTS))
        notes.append(
            f"prefix search: {sum(hits) / len(hits):.0f} handles a page on average"
            f" (limit 100, {PREFIX_DIGITS} of {DIGITS} digits given)"
        )
        timings.append(await timed(http, BATCH, batch, REQUESTS))
        timings.append(await timed(http, HRLS, hrls, HRLS_REQUESTS, warmup=20))

    jar = aiohttp.CookieJar(unsafe=True)  # keep the node's cookie although it is an IP address
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=jar) as http:
        listing = api(base, "/api/handles", prefix=PREFIX, pageSize=page_size)
        async with http.get(listing) as r:
            expect("listing without a session", r.status, 401)
        login_ms = await log_in(http, base)
        first_ms, _ = await fetch(http, listing)
        notes.append(
            f"listing auth: one HS_SECKEY challenge-response session ({login_ms:.1f} ms), then"
            f" the JSESSIONID cookie alone; first cookie-only listing {first_ms:.1f} ms"
            " (no Authorization header; without the cookie: 401)"
        )
        page_one = [handle(n) for n in range(page_size)]

        def first_page(i: int) -> Request:
            def check(body: Any) -> None:
                expect("listing page 1", body["handles"], page_one)
                expect("totalCount", body["totalCount"], str(records))

            return listing, check

        timings.append(await timed(http, PAGE_ONE, first_page, REQUESTS))

        # the cursor of page `deep`: the `next` of the page before it (fetched once, untimed)
        if deep < 2:
            raise SystemExit("search: the deep listing page needs at least two pages of records")
        cursor_ms, before = await fetch(http, f"{listing}&page={deep - 2}")
        cursor = before["next"]
        notes.append(
            f"cursor of page {deep:,}: the `next` of page={deep - 2} (one untimed OFFSET"
            f" request, {cursor_ms:.0f} ms)"
        )
        deep_rows = [handle(n) for n in range((deep - 1) * page_size, deep * page_size)]

        def deep_page(i: int) -> Request:
            def check(body: Any) -> None:
                expect(f"listing page {deep:,}", body["handles"], deep_rows)

            return f"{listing}&cursor={cursor}", check

        def deep_offset(i: int) -> Request:
            def check(body: Any) -> None:
                expect(f"listing page={deep - 1}", body["handles"], deep_rows)

            return f"{listing}&page={deep - 1}", check

        timings.append(await timed(http, DEEP_CURSOR.format(page=deep), deep_page, REQUESTS))
        timings.append(
            await timed(http, DEEP_OFFSET.format(page=deep), deep_offset, OFFSET_REQUESTS, warmup=2)
        )
    return Latency(timings, notes)


# --- report --------------------------------------------------------------------------------


def table(timings: Sequence[Timing]) -> list[str]:
    out = [f"{'request':<44}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms)"]
    for t in timings:
        out.append(
            f"{t.name:<44}{len(t.samples):>6}{t.p50:>9.2f}{t.p90:>9.2f}{t.p99:>9.2f}{t.max:>9.2f}"
        )
    return out


def verdict(ms: float) -> str:
    return f"goal < {GOAL_MS:g} ms: {'met' if ms < GOAL_MS else 'NOT met'}"


def result_lines(
    records: int, seeding: Seeding, reused: bool, size: Disk, lat: Latency
) -> list[str]:
    deep = min(DEEP_PAGE, records // min(PAGE_SIZE, records))
    exact, starts, batch = lat.get(EXACT), lat.get(PREFIX_MATCH), lat.get(BATCH)
    hrls, one = lat.get(HRLS), lat.get(PAGE_ONE)
    cursor = lat.get(DEEP_CURSOR.format(page=deep))
    offset = lat.get(DEEP_OFFSET.format(page=deep))
    return [
        f"records: {records:,} under {PREFIX} (database {DATABASE})",
        *seeding.lines(reused),
        size.line(),
        f"search exact p99 {exact.p99:.2f} ms (p50 {exact.p50:.2f} ms; {verdict(exact.p99)})",
        f"search prefix p99 {starts.p99:.2f} ms (p50 {starts.p50:.2f} ms)",
        f"search batch in prefix (limit 100) p99 {batch.p99:.2f} ms (p50 {batch.p50:.2f} ms)",
        f"hrls exact URL p99 {hrls.p99:.2f} ms (p50 {hrls.p50:.2f} ms; {len(hrls.samples)}"
        " requests)",
        f"listing page {deep:,} by cursor p99 {cursor.p99:.2f} ms (page 1: {one.p99:.2f} ms;"
        f" ratio {cursor.p99 / one.p99:.2f}; {verdict(cursor.p99)})",
        f"listing page {deep:,} by page={deep - 1} (OFFSET) p99 {offset.p99:.2f} ms"
        f" (p50 {offset.p50:.2f} ms; {len(offset.samples)} requests;"
        f" {offset.p50 / cursor.p50:,.0f}× the cursor's p50)",
    ]


async def measure(server: str, records: int = RECORDS) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"search: load average at start {load}", flush=True)
    dsn, seeding, reused = await prepare(server, records)
    size = await disk(dsn)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="idnode-bench-search-") as tmp:
        workdir = Path(tmp)
        await reseal(dsn, Sealer.load_or_create(workdir / "keys" / "sealing.key"))
        log = LOG_DIR / "node-search.log"
        with targets.node(dsn, workdir, log, workers=targets.NODE_WORKERS) as base:
            latency = await measure_latency(base, records)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = table(latency.timings)
    lines.append(f"note: load average after the requests {load} (2 cores, shared machine)")
    lines += [f"note: {n}" for n in latency.notes]
    lines += result_lines(records, seeding, reused, size, latency)
    return lines


def run(server: str) -> list[str]:
    """Seed (unless already seeded) and measure; answers the table and result lines."""
    return asyncio.run(measure(server))


def main() -> int:
    server = os.environ.get("DATABASE_URL") or start_embedded(BENCH_DIR.resolve() / "pg")
    started = time.monotonic()
    lines = run(server)
    print()
    for line in lines:
        print(line)
    print(f"\nsearch: {time.monotonic() - started:,.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
