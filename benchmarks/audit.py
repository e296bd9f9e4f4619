"""What the audit log costs writers, and how fast its proofs are (issue 8's goals).

Goals: the audit log costs at most 10 % of single-write throughput and at most 15 % of
bulk-import throughput (with ÷ without, same run: ≥ 0.90 and ≥ 0.85); inclusion and
consistency proofs over a 10-million-entry log answer with p99 under 5 ms.

1. **Single writes**, in-process: ``WRITE_TASKS`` tasks call ``Registry.put_record``
   over a pool of as many connections, ``IDNODE_BENCH_AUDIT_WRITES`` writes a round
   (default 3,000; one in five replaces a record made earlier in the round, the rest
   create), after an untimed warm-up. Rounds with and without the audit log alternate,
   each in a freshly created database; the best round of each counts. "Without" means
   ``registry.audit.append`` replaced by a coroutine that does nothing, in this process,
   for that round only. In-process, not over HTTP: every HTTP write authenticates with
   HTTP Basic, whose PBKDF2 check of the secret costs more than the whole write.
2. **Bulk import**: ``idnode import`` of ``IDNODE_BENCH_IMPORT_ROWS`` CSV rows (default
   300,000; ``benchmarks/bulk.py``'s auto parts with their template) as its own process,
   against the same import run through ``benchmarks/no_audit.py`` (``append``, ``stage``
   and ``append_staged`` switched off, then ``resolver.cli.main()``); alternating,
   each in a fresh database, best of ``IMPORT_ROUNDS``.
3. **Proofs** over ``IDNODE_BENCH_AUDIT_ENTRIES`` entries (default 10,000,000) in the
   KEPT database ``idnode_bench_audit``: see ``benchmarks/audit_proofs.py``.

Each round counts the entries appended: all of them with the log, none without.
``python -m benchmarks.audit [writes] [import] [proofs]`` runs those parts (default: all)
on the benchmark server (``DATABASE_URL`` or the embedded one under ``.data/bench/pg``);
``run(server)`` answers the result lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from benchmarks import audit_proofs, bulk, dataset, no_audit
from benchmarks.system import ROOT
from registry import audit, permissions
from registry import handle as hs
from registry import values as hv
from registry.auth import Identity
from registry.registry import ADMIN_INDEX, SECRET_INDEX, Registry
from registry.store import Store, create_pool
from resolver.database import start_embedded

WRITES = int(os.environ.get("IDNODE_BENCH_AUDIT_WRITES", "3000"))
WRITE_WARMUP = 200
WRITE_TASKS = 8
WRITE_ROUNDS = 3
REPLACE_EVERY = 5
"""One write in five replaces a record created earlier in the round."""
WRITE_DATABASE = "idnode_bench_audit_writes"
WRITE_PREFIX = "88.910.1"
SECRET = "bench-secret"
IMPORT_ROWS = bulk.ROWS
IMPORT_ROUNDS = 2
IMPORT_PREFIX = "88.900.1"
GOAL_WRITES = 0.90
GOAL_IMPORT = 0.85
BENCH_DIR = ROOT / ".data" / "bench"


def say(text: str) -> None:
    print(f"audit: {text}", flush=True)


def verdict(ratio: float, goal: float) -> str:
    return f"goal ≥ {goal:.2f}: {'met' if ratio >= goal else 'NOT met'}"


async def head(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    size: int = await conn.fetchval("SELECT size FROM audit_head")
    return size


# --- 1. single writes ----------------------------------------------------------------------


@contextlib.contextmanager
def audit_off(off: bool) -> Iterator[None]:
    """``registry.audit.append`` replaced by a no-op while the block runs (when ``off``)."""
    saved = audit.append
    if off:
        audit.append = no_audit.skip_append
    try:
        yield
    finally:
        audit.append = saved


def write_values(n: int, version: int, stamp: str) -> list[hv.Value]:
    """A small product record with the HS_ADMIN a create by the prefix admin would get."""
    admin = {
        "handle": f"0.NA/{WRITE_PREFIX}",
        "index": SECRET_INDEX,
        "permissions": permissions.HANDLE_ADMIN_DEFAULT,
    }
    return [
        hv.Value(
            1, "URL", "string", f"https://parts.example.com/w/{n}?v={version}", timestamp=stamp
        ),
        hv.Value(2, "PART_NUMBER", "string", f"JX-{n * 48271 % 10**8:08d}", timestamp=stamp),
        hv.Value(3, "BATCH_NUMBER", "string", f"B2026-{n // 500:05d}", timestamp=stamp),
        hv.Value(ADMIN_INDEX, hv.ADMIN_TYPE, "admin", admin, timestamp=stamp),
    ]


async def write_many(registry: Registry, first: int, count: int, seed: int) -> None:
    """``count`` writes from ``WRITE_TASKS`` tasks: creates of handles ``first`` on, and one in
    ``REPLACE_EVERY`` a replace of a handle created earlier in this call."""
    who = Identity(SECRET_INDEX, hs.prefix_record(WRITE_PREFIX))
    rng = random.Random(seed)
    jobs = iter(range(count))
    created: list[int] = []

    async def task() -> None:
        for i in jobs:
            stamp = registry.timestamp()
            if i % REPLACE_EVERY == REPLACE_EVERY - 1 and created:
                n, version = rng.choice(created), i
            else:
                n, version = first + i, 0
            h = hs.parse(f"{WRITE_PREFIX}/W{n:08d}")
            done = await registry.put_record(who, h, write_values(n, version, stamp))
            if done.created:
                created.append(n)

    await asyncio.gather(*(task() for _ in range(WRITE_TASKS)))


async def write_round(server: str, audited: bool, writes: int, seed: int) -> float:
    """Seconds for ``writes`` writes in a fresh database, with or without the log."""
    dsn = await dataset.recreate(server, WRITE_DATABASE)
    pool = await create_pool(dsn, min_size=WRITE_TASKS, max_size=WRITE_TASKS)
    try:
        registry = Registry(Store(pool))
        await registry.home_prefix(WRITE_PREFIX, SECRET, actor="bench")
        with audit_off(not audited):
            await write_many(registry, 10**7, WRITE_WARMUP, seed)
            before = await head(pool)
            started = time.perf_counter()
            await write_many(registry, 0, writes, seed)
            seconds = time.perf_counter() - started
        appended = await head(pool) - before
    finally:
        await pool.close()
    if appended != (writes if audited else 0):
        raise SystemExit(
            f"audit: a round {'with' if audited else 'without'} the log"
            f" appended {appended} entries for {writes} writes"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class Compared:
    """Rates with and without the log, one per round, in the order measured."""

    what: str
    unit: str
    count: int
    with_log: list[float]
    without: list[float]

    @property
    def ratio(self) -> float:
        return max(self.with_log) / max(self.without)

    def line(self, goal: float) -> str:
        return (
            f"{self.what}: {max(self.with_log):,.0f} {self.unit} with the audit log,"
            f" {max(self.without):,.0f} without ({self.count:,} a round, best of"
            f" {len(self.with_log)}); with ÷ without {self.ratio:.2f} ({verdict(self.ratio, goal)})"
        )

    def rounds(self) -> str:
        pairs = zip(self.with_log, self.without, strict=True)
        return ", ".join(f"{w:,.0f}/{o:,.0f}" for w, o in pairs)


async def alternated(
    title: str,
    name: str,
    unit: str,
    size: int,
    rounds: int,
    one: Callable[[bool, int], Awaitable[float]],
) -> Compared:
    """``rounds`` rounds of ``one(audited, round)`` (its seconds for ``size`` items), with the log
    and without it in turn, so a busy machine slows both alike."""
    with_log: list[float] = []
    without: list[float] = []
    for r in range(rounds):
        for audited, rates in ((True, with_log), (False, without)):
            rates.append(size / await one(audited, r))
            say(
                f"{name} round {r + 1} {'with' if audited else 'without'} the log:"
                f" {rates[-1]:,.0f} {unit}"
            )
    return Compared(title, unit, size, with_log, without)


async def measure_writes(server: str, writes: int = WRITES) -> Compared:
    async def one(audited: bool, r: int) -> float:
        return await write_round(server, audited, writes, seed=r)

    title = "single writes (in-process put_record, 8 tasks)"
    return await alternated(title, "writes", "writes/s", writes, WRITE_ROUNDS, one)


def import_process(module: str, dsn: str, work: Path, source: Path) -> float:
    """``python -m <module> import <source>`` as an operator runs it; answers its seconds."""
    if module == "resolver.cli":
        seconds, _ = bulk.idnode(dsn, work, "import", str(source), "--progress-interval", "60")
        return seconds
    env = {**os.environ, "DATABASE_URL": dsn, "IDNODE_DATA_DIR": str(work)}
    argv = [sys.executable, "-m", module, "import", str(source), "--progress-interval", "60"]
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"audit: {' '.join(argv[2:])} failed:\n{done.stderr}")
    return time.perf_counter() - started


async def import_round(server: str, audited: bool, work: Path, source: Path, rows: int) -> float:
    dsn = await bulk.fresh(server, IMPORT_PREFIX)
    conn = await asyncpg.connect(dsn)
    try:
        before = await head(conn)
        module = "resolver.cli" if audited else "benchmarks.no_audit"
        seconds = import_process(module, dsn, work, source)
        appended = await head(conn) - before
    finally:
        await conn.close()
    if await bulk.count(dsn, IMPORT_PREFIX) != rows:
        raise SystemExit("audit: the import did not write every row")
    if appended != (rows if audited else 0):
        raise SystemExit(
            f"audit: an import {'with' if audited else 'without'} the log"
            f" appended {appended} entries for {rows} rows"
        )
    return seconds


async def measure_import(server: str, rows: int = IMPORT_ROWS) -> Compared:
    with tempfile.TemporaryDirectory(prefix="idnode-bench-audit-") as tmp:
        work = Path(tmp)
        source = work / "parts.csv"
        bulk.write_csv(source, IMPORT_PREFIX, rows)

        async def one(audited: bool, r: int) -> float:
            return await import_round(server, audited, work, source, rows)

        title = "idnode import (own process, CSV, template checked)"
        return await alternated(title, "import", "rows/s", rows, IMPORT_ROUNDS, one)


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


PARTS = ("writes", "import", "proofs")


async def measure(server: str, parts: Sequence[str] = PARTS) -> list[str]:
    say(f"load average at start {load()} (2 cores, shared machine)")
    lines: list[str] = []
    if "writes" in parts:
        writes = await measure_writes(server)
        lines += [
            writes.line(GOAL_WRITES),
            f"note: writes/s by round, with/without: {writes.rounds()}; 'without' ="
            " registry.audit.append replaced by a no-op coroutine in this process for that"
            " round; in-process because over HTTP each write's PBKDF2 Basic-auth check would"
            " dominate",
        ]
    if "import" in parts:
        imports = await measure_import(server)
        lines += [
            imports.line(GOAL_IMPORT),
            f"note: rows/s by round, with/without: {imports.rounds()}; 'without' ="
            " python -m benchmarks.no_audit import (append, stage and append_staged no-ops)",
        ]
    if "proofs" in parts:
        lines += await audit_proofs.measure(server)
    return [*lines, f"note: load average at the end {load()}"]


def run(server: str, parts: Sequence[str] = PARTS) -> list[str]:
    """Measure the three parts (or those named); answers the result lines."""
    return asyncio.run(measure(server, parts))


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    unknown = [part for part in argv if part not in PARTS]
    if unknown:
        print(f"usage: python -m benchmarks.audit [{'] ['.join(PARTS)}] (default: all)")
        return 2
    server = os.environ.get("DATABASE_URL") or start_embedded(BENCH_DIR.resolve() / "pg")
    started = time.monotonic()
    lines = run(server, argv or PARTS)
    print()
    for line in lines:
        print(line)
    print(f"\naudit: {time.monotonic() - started:,.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
