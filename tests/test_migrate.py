"""Migrations (registry.migrate) on a database created for each test: applied once each,
recorded, idempotent, safe when two runners race, atomic per file."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from registry import migrate


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


async def advisory_locks_held(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        """SELECT count(*) FROM pg_locks
           WHERE locktype = 'advisory' AND granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
    )
    return count


def test_migrations_are_shipped_in_order() -> None:
    found = migrate.available()
    assert found, "no migrations found in schemas/sql"
    versions = [m.version for m in found]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    assert all(m.sql.strip() and m.name for m in found)


async def test_migrate_applies_everything_once(fresh_db: str) -> None:
    expected = [(m.version, m.name) for m in migrate.available()]
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await migrate.applied(conn) == set()
        assert [(m.version, m.name) for m in await migrate.pending(conn)] == expected

        done = await migrate.migrate(conn)
        assert [(m.version, m.name) for m in done] == expected
        assert await recorded(conn) == expected
        assert await migrate.applied(conn) == {v for v, _ in expected}
        for table in ("handles", "prefixes", "audit_log"):
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table), table
        assert await migrate.pending(conn) == []

        assert await migrate.migrate(conn) == []  # a second run applies nothing
        assert await recorded(conn) == expected
        assert await migrate.pending(conn) == []
        assert await advisory_locks_held(conn) == 0
    finally:
        await conn.close()


async def test_concurrent_migrations(fresh_db: str) -> None:
    expected = [(m.version, m.name) for m in migrate.available()]
    first, second = await asyncpg.connect(fresh_db), await asyncpg.connect(fresh_db)
    try:
        done_a, done_b = await asyncio.gather(migrate.migrate(first), migrate.migrate(second))
        # between them the two runs applied every migration exactly once
        applied_versions = sorted(m.version for m in [*done_a, *done_b])
        assert applied_versions == [v for v, _ in expected]
        counts = await first.fetch(
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1"
        )
        assert [(r["version"], r["n"]) for r in counts] == [(v, 1) for v, _ in expected]
        assert await recorded(second) == expected
        assert await migrate.pending(first) == []
        assert await migrate.pending(second) == []
        assert await advisory_locks_held(first) == 0
    finally:
        await first.close()
        await second.close()


async def test_failed_migration_is_not_recorded_and_releases_the_lock(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrate.available()
    broken = migrate.Migration(9001, "broken", "CREATE TABLE half_done (x int); SELECT 1/0;")
    monkeypatch.setattr(migrate, "available", lambda: [*shipped, broken])
    conn = await asyncpg.connect(fresh_db)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate.migrate(conn)
        # the good migrations stay applied; the broken one left nothing behind
        assert await recorded(conn) == [(m.version, m.name) for m in shipped]
        assert not await conn.fetchval("SELECT to_regclass('half_done') IS NOT NULL")
        assert [m.version for m in await migrate.pending(conn)] == [9001]
        assert await advisory_locks_held(conn) == 0

        fixed = migrate.Migration(9001, "fixed", "CREATE TABLE half_done (x int);")
        monkeypatch.setattr(migrate, "available", lambda: [*shipped, fixed])
        other = await asyncpg.connect(fresh_db)  # another runner is not blocked
        try:
            done = await asyncio.wait_for(migrate.migrate(other), timeout=10)
        finally:
            await other.close()
        assert [m.version for m in done] == [9001]
        assert await conn.fetchval("SELECT to_regclass('half_done') IS NOT NULL")
        assert await migrate.pending(conn) == []
    finally:
        await conn.close()
