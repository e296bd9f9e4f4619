"""The benchmark data set: product identifiers ``88.118.8/P<n>`` in their own database.

Each record holds a URL, an EMAIL, two product fields (MODEL, and BATCH carrying
the production date) and the HS_ADMIN value a record created by the prefix admin
gets: about 750 bytes of served JSON. (Every value carries ~95 bytes of envelope
-- index, type, format, ttl, timestamp -- so a separate DATE value would push the
answer to ~880 bytes; five values is as close to the 500-byte reference as a
realistic record gets.) Records are stored exactly as the node stores them (the list of
``Value.to_json()`` dicts, sorted by index) and written with COPY in chunks.
Seeding is skipped when the database already holds the full set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from registry import migrate, permissions
from registry import values as hv
from registry.handle import fold
from registry.registry import ADMIN_INDEX, SECRET_INDEX, Registry
from registry.store import Store, create_pool, stored_columns
from resolver.database import start_embedded

PREFIX = "88.118.8"
LETTER = "P"
WIDTH = 7
"""Digits of ``n`` in a suffix (``P0000042``): room for 10,000,000 identifiers."""
DEFAULT_COUNT = 1_000_000
CHUNK = 50_000
TIMESTAMP = "2025-06-01T08:00:00Z"
DEFAULT_SECRET = "bench-secret"
ADMIN_IDENTITY = f"{SECRET_INDEX}:0.NA/{PREFIX}"
COLUMNS = ("prefix_key", "suffix_key", "handle", "values", "all_public", "public_ttl")
MODELS = ("JXDY-2106", "JXDY-3300", "KTR-88A", "KTR-90B", "MX-410")


T = TypeVar("T")


def suffix(n: int) -> str:
    return f"{LETTER}{n:0{WIDTH}d}"


def handle(n: int) -> str:
    return f"{PREFIX}/{suffix(n)}"


def record_values(n: int) -> list[hv.Value]:
    """The values of identifier ``n``, in index order, as the node would store them."""
    s = suffix(n)
    admin = {
        "handle": f"0.NA/{PREFIX}",
        "index": SECRET_INDEX,
        "permissions": permissions.HANDLE_ADMIN_DEFAULT,
    }
    day = n % 28 + 1
    return [
        hv.Value(1, "URL", "string", f"https://products.example.com/p/{s}", timestamp=TIMESTAMP),
        hv.Value(2, "EMAIL", "string", "quality@example.com", timestamp=TIMESTAMP),
        hv.Value(3, "MODEL", "string", MODELS[n % len(MODELS)], timestamp=TIMESTAMP),
        hv.Value(4, "BATCH", "string", f"B{n // 1000:05d}/2025-05-{day:02d}", timestamp=TIMESTAMP),
        hv.Value(ADMIN_INDEX, hv.ADMIN_TYPE, "admin", admin, timestamp=TIMESTAMP),
    ]


def served_body(n: int) -> bytes:
    """The body the node answers for ``GET /api/handles/88.118.8/P<n>``."""
    values = orjson.dumps([v.to_json() for v in record_values(n) if v.public_read])
    return b'{"responseCode":1,"handle":' + orjson.dumps(handle(n)) + b',"values":' + values + b"}"


def rows(start: int, stop: int) -> Iterator[tuple[str, str, str, str, bool, int | None]]:
    prefix_key = fold(PREFIX)
    for n in range(start, stop):
        s = suffix(n)
        yield (prefix_key, fold(s), f"{PREFIX}/{s}", *stored_columns(record_values(n)))


def database_url(bench_dir: Path) -> str:
    """``DATABASE_URL`` when set, else the embedded server under ``bench_dir/pg``."""
    url = os.environ.get("DATABASE_URL")
    return url if url else start_embedded(bench_dir.resolve() / "pg")


def with_database(url: str, database: str) -> str:
    """``url`` naming another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def recreate(server: str, database: str) -> str:
    """``database`` dropped if it exists, created empty and migrated; answers its URL."""
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {database}")
    finally:
        await conn.close()
    dsn = with_database(server, database)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    return dsn


async def prepare(dsn: str, count: int, secret: str = DEFAULT_SECRET) -> None:
    """Migrate, home the prefix and seed ``count`` identifiers unless they are there."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    await home(dsn, secret)
    await seed(dsn, count)


async def home(dsn: str, secret: str) -> None:
    pool = await create_pool(dsn, max_size=1)
    try:
        if await Registry(Store(pool)).home_prefix(PREFIX, secret, actor="bench"):
            print(f"bench: homed {PREFIX}; admin {ADMIN_IDENTITY}, secret {secret!r}", flush=True)
    finally:
        await pool.close()


async def seeded(conn: asyncpg.Connection) -> int:
    found = await conn.fetchval(
        "SELECT count(*) FROM handles WHERE prefix_key = $1 AND suffix_key LIKE $2",
        fold(PREFIX),
        fold(LETTER) + "%",
    )
    return int(found)


async def seed(dsn: str, count: int) -> None:
    """Write identifiers 0..count-1 with COPY; a partial or different set is replaced."""
    conn = await asyncpg.connect(dsn)
    try:
        have = await seeded(conn)
        if have == count:
            print(f"bench: {count:,} identifiers already seeded", flush=True)
            return
        if have:
            print(f"bench: replacing {have:,} identifiers (want {count:,})", flush=True)
            await conn.execute(
                "DELETE FROM handles WHERE prefix_key = $1 AND suffix_key LIKE $2",
                fold(PREFIX),
                fold(LETTER) + "%",
            )
        await copy_all(conn, count)
        await conn.execute("VACUUM ANALYZE handles")
    finally:
        await conn.close()


async def copy_all(conn: asyncpg.Connection, count: int) -> None:
    started = time.perf_counter()
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        await conn.copy_records_to_table("handles", records=rows(start, stop), columns=COLUMNS)
        if stop % (CHUNK * 4) == 0 or stop == count:
            rate = stop / (time.perf_counter() - started)
            print(f"bench: seeded {stop:,}/{count:,} ({rate:,.0f} rows/s)", flush=True)


async def kept(
    server: str, database: str, read: Callable[[asyncpg.Connection], Awaitable[T | None]]
) -> T | None:
    """What ``read`` finds in the kept benchmark database ``database``; None without one."""
    conn = await asyncpg.connect(server)
    try:
        found = await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", database)
    finally:
        await conn.close()
    if not found:
        return None
    conn = await asyncpg.connect(with_database(server, database))
    try:
        return await read(conn)
    finally:
        await conn.close()
