"""Trace latency over 10,000 linked identifiers (issue 8's goal: depth 5 under 50 ms).

1. **Data.** Its own database ``idnode_bench_trace`` on the benchmark server
   (``DATABASE_URL`` or the embedded one under ``.data/bench/pg``), recreated on
   every run: a supply chain under ``88.951.1`` of ``VEHICLES`` vehicles, each
   referencing ``PARTS_PER_VEHICLE`` parts of its own; every part referencing one
   of ``BATCHES`` production batches; every batch one of ``LOTS`` steel coil lots;
   every lot its mill's certificate under a prefix not homed here (a ``foreign``
   link). 1,600 + 8,000 + 360 + 40 = 10,000 identifiers, written by COPY into
   ``handles`` (so the reverse index is filled by the migration's triggers, and the
   COPY's time with them is reported).
2. **Latency** over HTTP against ``idnode serve`` (one worker, rate limits off), one
   request at a time after a warm-up, ``REQUESTS`` each, timed to the answer's last
   byte (the client's JSON parsing is not counted): down from a random vehicle
   (depth 5: the vehicle, its parts, their batches, lots and the foreign mill), up
   from a random batch (depth 5: the parts made from it and their vehicles), and up
   from a random lot (depth 5: ~9 batches, ~200 parts, ~200 vehicles). Reported:
   p50, p99 and max, with the nodes and edges of each answer.

``python -m benchmarks.trace`` runs it alone; ``run(server)`` answers the result lines.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks import dataset, targets
from benchmarks.system import ROOT
from registry import values as hv
from registry.handle import fold
from registry.registry import Registry
from registry.store import Store, create_pool, stored_columns
from resolver.database import start_embedded

DATABASE = "idnode_bench_trace"
PREFIX = "88.951.1"
MILL_PREFIX = "88.700.3"
VEHICLES, PARTS_PER_VEHICLE, BATCHES, LOTS = 1600, 5, 360, 40
PART_KINDS = ("ENGINE", "BATTERY-PACK", "ECU", "SEAT", "WHEEL")
TIMESTAMP = "2026-03-01T08:00:00Z"
DEPTH = 5
REQUESTS = 300
WARMUP = 30
GOAL_MS = 50.0
BENCH_DIR = ROOT / ".data" / "bench"
LOG_DIR = BENCH_DIR / "logs"


def vin(n: int) -> str:
    return f"{PREFIX}/VIN-LSV{n:08d}"


def part(n: int) -> str:
    return f"{PREFIX}/PART-{PART_KINDS[n % PARTS_PER_VEHICLE]}-{n:06d}"


def batch(n: int) -> str:
    return f"{PREFIX}/BATCH-2026-{n:04d}"


def lot(n: int) -> str:
    return f"{PREFIX}/COIL-LOT-{n:03d}"


def _value(index: int, vtype: str, data: str, *refs: str) -> hv.Value:
    return hv.Value(
        index, vtype, "string", data, timestamp=TIMESTAMP, references=tuple((r, 0) for r in refs)
    )


def records() -> Iterator[tuple[str, list[hv.Value]]]:
    """Every identifier of the chain and its values."""
    for n in range(LOTS):
        mill = f"{MILL_PREFIX}/CERT-{n:05d}"
        yield (
            lot(n),
            [_value(1, "MATERIAL", "cold-rolled steel DC04"), _value(2, "MILL", mill, mill)],
        )
    for n in range(BATCHES):
        source = lot(n % LOTS)
        yield batch(n), [_value(1, "LINE", f"line {n % 4}"), _value(2, "MATERIAL", source, source)]
    for n in range(VEHICLES * PARTS_PER_VEHICLE):
        b = batch((n * 7) % BATCHES)
        yield part(n), [_value(1, "SERIAL", f"S{n:08d}"), _value(2, "BATCH", b, b)]
    for n in range(VEHICLES):
        parts = [part(n * PARTS_PER_VEHICLE + k) for k in range(PARTS_PER_VEHICLE)]
        yield vin(n), [_value(1, "MODEL", "EV-S 2026"), _value(2, "PARTS", "bill", *parts)]


def rows() -> Iterator[tuple[Any, ...]]:
    for handle, values in records():
        prefix, _, suffix = handle.partition("/")
        yield (fold(prefix), fold(suffix), handle, *stored_columns(values))


async def seed(server: str) -> tuple[str, int, float]:
    """The database, the identifiers written and the seconds their COPY took."""
    dsn = await dataset.recreate(server, DATABASE)
    pool = await create_pool(dsn, max_size=1)
    try:
        await Registry(Store(pool)).home_prefix(PREFIX, "bench-secret", actor="bench")
    finally:
        await pool.close()
    conn = await asyncpg.connect(dsn)
    try:
        all_rows = list(rows())
        started = time.perf_counter()
        await conn.copy_records_to_table("handles", records=all_rows, columns=dataset.COLUMNS)
        seconds = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE handles, handle_refs")
        refs = await conn.fetchval("SELECT count(*) FROM handle_refs")
        print(f"trace: {len(all_rows):,} identifiers, {refs:,} references indexed", flush=True)
    finally:
        await conn.close()
    return dsn, len(all_rows), seconds


async def timed(
    http: aiohttp.ClientSession, base: str, pick: Callable[[int], str], direction: str
) -> tuple[list[float], list[tuple[int, int]]]:
    """Milliseconds per request, and (nodes, edges) per answer."""
    ms: list[float] = []
    sizes: list[tuple[int, int]] = []
    for i in range(WARMUP + REQUESTS):
        url = f"{base}/api/trace/{pick(i)}?direction={direction}&depth={DEPTH}"
        started = time.perf_counter()
        async with http.get(url) as r:
            raw = await r.read()
        elapsed = (time.perf_counter() - started) * 1000  # to the answer's last byte
        body = orjson.loads(raw)
        if r.status != 200 or body["truncated"]:
            raise RuntimeError(f"trace of {pick(i)} answered {r.status}: {str(body)[:200]}")
        if i >= WARMUP:
            ms.append(elapsed)
            sizes.append((len(body["nodes"]), len(body["edges"])))
    return ms, sizes


def line(name: str, ms: list[float], sizes: list[tuple[int, int]]) -> str:
    ordered = sorted(ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    nodes = statistics.mean(n for n, _ in sizes)
    edges = statistics.mean(e for _, e in sizes)
    verdict = "meets" if p99 < GOAL_MS else "misses"
    return (
        f"{name:<28} p50 {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  "
        f"max {ordered[-1]:6.2f} ms  ~{nodes:,.0f} nodes, ~{edges:,.0f} edges  "
        f"({verdict} the {GOAL_MS:.0f} ms goal at p99)"
    )


async def measure(server: str) -> list[str]:
    dsn, count, copy_seconds = await seed(server)
    rng = random.Random(8)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    lines = [f"trace: COPY of {count:,} linked identifiers with the triggers {copy_seconds:.2f} s"]
    with tempfile.TemporaryDirectory(prefix="idnode-bench-trace-") as tmp:
        with targets.node(dsn, Path(tmp), LOG_DIR / "node-trace.log") as base:
            async with aiohttp.ClientSession() as http:
                cases = [
                    ("down from a vehicle", lambda i: vin(rng.randrange(VEHICLES)), "down"),
                    ("up from a batch", lambda i: batch(rng.randrange(BATCHES)), "up"),
                    ("up from a coil lot", lambda i: lot(rng.randrange(LOTS)), "up"),
                ]
                for name, pick, direction in cases:
                    ms, sizes = await timed(http, base, pick, direction)
                    lines.append(line(f"{name} (depth {DEPTH})", ms, sizes))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines.append(f"note: {REQUESTS} requests each, one at a time; load average {load} (2 cores)")
    return lines


def run(server: str) -> list[str]:
    """Seed and measure; answers the result lines."""
    return asyncio.run(measure(server))


def main() -> int:
    server = os.environ.get("DATABASE_URL") or start_embedded(BENCH_DIR.resolve() / "pg")
    for result in run(server):
        print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
