"""Numbered SQL migrations from ``schemas/sql``, applied once each, in order.

Safe to run twice and from several processes at once: a session advisory lock
serialises runners, and each file is applied and recorded in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

_LOCK_ID = 0x1D0DE_0001
MIGRATION_TIMEOUT = 24 * 3600.0
"""A migration (or waiting for another process's) may take far longer than a query."""
_NAME_RE = re.compile(r"(\d+)_([\w-]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with the package, in order."""
    found = []
    for entry in resources.files("schemas").joinpath("sql").iterdir():
        m = _NAME_RE.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    return sorted(found, key=lambda mig: mig.version)


async def applied(conn: asyncpg.Connection) -> set[int]:
    """Versions already recorded (empty on a fresh database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply what is missing; answer the migrations applied by this call."""
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID, timeout=MIGRATION_TIMEOUT)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        have = await applied(conn)
        for mig in available():
            if mig.version in have:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql, timeout=MIGRATION_TIMEOUT)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )
            done.append(mig)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return done


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    """Migrations not yet applied."""
    have = await applied(conn)
    return [m for m in available() if m.version not in have]
