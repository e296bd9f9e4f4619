"""Bulk import and export, each against a baseline measured in the same run.

- **Import**: ``idnode import`` (a process of its own, as an operator runs it, so the
  figure includes starting Python and connecting) of ``IDNODE_BENCH_IMPORT_ROWS``
  CSV rows (default 300,000) of auto parts under a prefix whose template is
  ``schemas/templates/auto-parts.json``, so every row is validated; against a raw
  ``COPY`` of the same rows, encoded beforehand exactly as the node stores them,
  into the same table (its indexes and triggers included). Each measurement starts
  from an empty database (``idnode_bench_bulk``, recreated each time); the two
  alternate for ``ROUNDS`` rounds and the best round of each counts.
- **Export**: ``idnode export`` of one imported prefix to a file: records/s.

Runs in its own database ``idnode_bench_bulk`` (recreated for every measurement) on the
benchmark server (``DATABASE_URL`` or the embedded one under ``.data/bench/pg``).
``python -m benchmarks.bulk`` runs it alone; ``make bench`` runs it after the
request benchmarks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from benchmarks import dataset
from benchmarks.system import ROOT
from registry import handle as hs
from registry import values as hv
from registry.registry import Registry
from registry.store import Record, Store, create_pool
from resolver.database import start_embedded

ROWS = int(os.environ.get("IDNODE_BENCH_IMPORT_ROWS", "300000"))
ROUNDS = 2
DATABASE = "idnode_bench_bulk"
TEMPLATE = ROOT / "schemas" / "templates" / "auto-parts.json"
TIMESTAMP = "2026-01-05T08:00:00Z"
COLUMNS = [
    "URL",
    "PART_NUMBER",
    "PART_NAME",
    "SUPPLIER_CODE",
    "BATCH_NUMBER",
    "PRODUCTION_DATE",
    "QUANTITY",
]
GOAL_IMPORT_VS_COPY = 0.8
GOAL_EXPORT_PER_SECOND = 100_000


def cells(n: int) -> list[str]:
    return [
        f"https://parts.example.com/p/{n}",
        f"JX-{n % 9000 + 1000}-{n % 7}",
        "brake caliper, front left",
        "SUP0042",
        f"B2026-{n // 5000:04d}",
        f"2026-01-{n % 28 + 1:02d}",
        str(n % 500 + 1),
    ]


def write_csv(path: Path, prefix: str, rows: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("handle," + ",".join(COLUMNS) + "\n")
        for n in range(rows):
            f.write(f"{prefix}/AP{n:08d}," + ",".join(f'"{c}"' for c in cells(n)) + "\n")


def stored_rows(prefix: str, rows: int) -> list[tuple[object, ...]]:
    """The rows the import writes, as the node stores them (encoded before timing)."""
    out: list[tuple[object, ...]] = []
    for n in range(rows):
        h = hs.parse(f"{prefix}/AP{n:08d}")
        values = [
            hv.Value(i + 1, t, "string", c, timestamp=TIMESTAMP)
            for i, (t, c) in enumerate(zip(COLUMNS, cells(n), strict=True))
        ]
        r = Record.of(h.text, values)
        out.append((h.prefix_key, h.suffix_key, h.text, r.raw.decode(), r.all_public, r.public_ttl))
    return out


async def fresh_database(server: str) -> str:
    return await dataset.recreate(server, DATABASE)


async def home(dsn: str, prefixes: list[str]) -> None:
    template = orjson.loads(TEMPLATE.read_bytes())
    pool = await create_pool(dsn, max_size=1)
    try:
        registry = Registry(Store(pool))
        for prefix in prefixes:
            await registry.home_prefix(prefix, "bench-secret", actor="bench")
            await registry.operator_set_template(prefix, template, actor="bench")
    finally:
        await pool.close()


async def raw_copy(dsn: str, rows: list[tuple[object, ...]]) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "handles",
            records=rows,
            columns=["prefix_key", "suffix_key", "handle", "values", "all_public", "public_ttl"],
        )
        return time.perf_counter() - started
    finally:
        await conn.close()


def idnode(dsn: str, data_dir: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "DATABASE_URL": dsn, "IDNODE_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "resolver.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench: idnode {' '.join(args)} failed:\n{done.stderr}")
    return elapsed, done.stderr


async def count(dsn: str, prefix: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM handles WHERE prefix_key = $1", prefix)
        )
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Figures:
    rows: int
    copy_seconds: float
    import_seconds: float
    export_seconds: float
    export_bytes: int

    @property
    def ratio(self) -> float:
        return self.copy_seconds / self.import_seconds

    def lines(self) -> list[str]:
        copy_rate = self.rows / self.copy_seconds
        import_rate = self.rows / self.import_seconds
        export_rate = self.rows / self.export_seconds
        return [
            f"raw COPY into handles: {copy_rate:,.0f} rows/s ({self.rows:,} rows, best of"
            f" {ROUNDS})",
            f"idnode import (CSV, auto-parts template validated, own process): "
            f"{import_rate:,.0f} rows/s",
            f"import ÷ raw COPY: {self.ratio:.2f} (goal ≥ {GOAL_IMPORT_VS_COPY})",
            f"idnode export to a file: {export_rate:,.0f} records/s"
            f" ({self.export_bytes / 1e6:,.0f} MB; goal ≥ {GOAL_EXPORT_PER_SECOND:,}/s)",
        ]


async def fresh(server: str, prefix: str) -> str:
    """An empty database with ``prefix`` homed and its template set: each measurement starts
    from the same state (an index's insert cost grows with its size)."""
    dsn = await fresh_database(server)
    await home(dsn, [prefix])
    return dsn


async def measure(server: str, rows: int = ROWS) -> Figures:
    prefix = "88.900.1"
    copies: list[float] = []
    imports: list[float] = []
    with tempfile.TemporaryDirectory(prefix="idnode-bench-bulk-") as tmp:
        work = Path(tmp)
        source = work / "parts.csv"
        write_csv(source, prefix, rows)
        encoded = stored_rows(prefix, rows)
        for r in range(ROUNDS):
            copies.append(await raw_copy(await fresh(server, prefix), encoded))
            dsn = await fresh(server, prefix)
            seconds, out = idnode(dsn, work, "import", str(source), "--progress-interval", "60")
            if await count(dsn, prefix) != rows:
                raise SystemExit(f"bench: the import did not write every row:\n{out}")
            imports.append(seconds)
            print(
                f"bench: round {r + 1}: raw COPY {rows / copies[-1]:,.0f} rows/s,"
                f" import {rows / seconds:,.0f} rows/s",
                flush=True,
            )
        del encoded
        target = work / "export.ndjson"
        export_seconds, _ = idnode(dsn, work, "export", "--prefix", prefix, "--output", str(target))
        exported = target.stat().st_size
        if sum(1 for _ in target.open("rb")) != rows:
            raise SystemExit("bench: the export did not write every record")
    return Figures(rows, min(copies), min(imports), export_seconds, exported)


def run(server: str) -> list[str]:
    figures = asyncio.run(measure(server))
    return figures.lines()


def main() -> int:
    bench_dir = ROOT / ".data" / "bench"
    server = os.environ.get("DATABASE_URL") or start_embedded(bench_dir.resolve() / "pg")
    for line in run(server):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
