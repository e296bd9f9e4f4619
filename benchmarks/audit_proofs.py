"""Proof latency over a ten-million-entry audit log (issue 8's goal: p99 under 5 ms).

1. **Data.** Its own database ``idnode_bench_audit`` on the benchmark server, KEPT
   between runs: seeded only when it does not already hold the full set (the seeding
   figures are kept in the database's comment and reported on every run).
   ``IDNODE_BENCH_AUDIT_ENTRIES`` entries (default 10,000,000) about a quarter as many
   handles ``88.960.<1-8>/P<h>``, each created, replaced, changed at one value and
   deleted, the four entries of a handle spread across the log (handle ``h`` is written
   at ``n ≡ h × 48271⁻¹ mod H``, plus 0, H, 2H, 3H); actor, client address (none for
   one in twenty, as from the CLI), value indexes, SHA-256 digests of the content
   before and after, the short content itself (none after a delete), one entry every
   3 s. Written set-based by ``INSERT ... SELECT FROM generate_series`` in chunks on two
   connections, with the log's secondary indexes dropped and rebuilt at the end.
2. **The tree** is built by the node's own ``registry.tree.integrate`` in stages, and
   a checkpoint signed with ``registry.tree.make_checkpoint`` after each (sizes
   ``STAGES`` of the whole, the last one all of it), so consistency proofs have earlier
   checkpoints to start from. Its speed (entries/s) is the node's catch-up speed.
3. **Latency** over HTTP against ``idnode serve`` (one worker, rate limits off, the
   bench's audit key) one request at a time after a warm-up: inclusion proofs of random
   entries and of random handles' latest entries in the latest checkpoint, and
   consistency proofs from random earlier checkpoints to the latest; then the latest
   checkpoint alone (one small query: the floor of this node on this machine). Every answer is
   checked; a sample is verified with ``registry.verify`` against the pinned key, the
   inclusion proofs with their entries as read from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import orjson

from benchmarks import dataset
from benchmarks.search import Failed, Timing, expect, fetch, table
from benchmarks.system import ROOT, free_port, server
from registry import audit, tree, verify
from registry.keys import AuditKey

ENTRIES = int(os.environ.get("IDNODE_BENCH_AUDIT_ENTRIES", "10000000"))
DATABASE = "idnode_bench_audit"
BENCH_DIR = ROOT / ".data" / "bench"
KEY_PATH = BENCH_DIR / "keys" / "audit.pem"
LOG_DIR = BENCH_DIR / "logs"
PREFIXES = 8
MULTIPLIER = 48271
"""Entry n is about handle ``n × 48271 mod H`` (a bijection on [0, H) when coprime to H)."""
FIRST_AT = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
SPACING_SECONDS = 3
STAGES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Checkpoints at these shares of the log (less an odd offset: no power-of-two sizes)."""
CHUNK = 250_000
WORKERS = 2
MAINTENANCE_WORK_MEM = "1GB"
REQUESTS = 2000
WARMUP = 200
VERIFIED = 100
"""Answers of each kind verified with ``registry.verify``."""
GOAL_MS = 5.0


def say(text: str) -> None:
    print(f"audit: {text}", flush=True)


def handles(entries: int) -> int:
    return max(math.ceil(entries / 4), 1)


def handle(h: int) -> str:
    return f"88.960.{h % PREFIXES + 1}/P{h:08d}"


def latest_seq(h: int, entries: int) -> int:
    """The last entry about handle ``h`` in a log of ``entries``."""
    count = handles(entries)
    first = h * pow(MULTIPLIER, -1, count) % count
    return first + (entries - 1 - first) // count * count


def stage_sizes(entries: int) -> list[int]:
    sizes = {max(int(entries * share) - (7919 * k) % 1000, 1) for k, share in enumerate(STAGES)}
    return sorted({*(s for s in sizes if s < entries), entries})


# --- seeding -------------------------------------------------------------------------------


def _content(version: str) -> str:
    """The SQL of an entry's short content (a URL value) at a version of its handle."""
    url = "https://parts.example.com/p/' || g.h || '?v=' || " + version + " || '"
    return '\'[{"index":1,"type":"URL","data":{"format":"string","value":"' + url + "\"}}]'"


INSERT_SQL = f"""
INSERT INTO audit_log (seq, at, actor, client, operation, handle, handle_key, indexes,
                       before, after, content)
SELECT g.n, $4::timestamptz + g.n * interval '{SPACING_SECONDS} seconds', '300:0.NA/' || g.p,
       CASE WHEN g.n % 20 = 0 THEN NULL ELSE '10.20.' || g.h % 256 || '.' || g.h / 256 % 256 END,
       (ARRAY['create', 'replace', 'put-values', 'delete'])[g.r + 1],
       g.p || '/P' || lpad(g.h::text, 8, '0'), g.p || '/p' || lpad(g.h::text, 8, '0'),
       CASE g.r WHEN 2 THEN '{{2}}'::integer[] WHEN 3 THEN NULL ELSE '{{1,2,3,100}}'::integer[] END,
       CASE WHEN g.r > 0 THEN sha256(convert_to({_content("(g.r - 1)")}, 'UTF8')) END,
       CASE WHEN g.r < 3 THEN sha256(convert_to({_content("g.r")}, 'UTF8')) END,
       CASE WHEN g.r < 3 THEN {_content("g.r")} END
FROM (SELECT n, h, n / $3 AS r, '88.960.' || (h % {PREFIXES} + 1) AS p
      FROM (SELECT n, n * {MULTIPLIER} % $3 AS h
            FROM generate_series($1::bigint, $2::bigint - 1) AS n) AS s) AS g
"""


@dataclass(frozen=True, slots=True)
class Seeding:
    """How the database was seeded (kept in its comment, so later runs report it)."""

    entries: int
    phases: dict[str, float]
    at: str
    key_id: str

    def lines(self, reused: bool) -> list[str]:
        when = f"reused; seeded {self.at}" if reused else f"seeded now, {self.at}"
        load, tree = self.phases["entries"], self.phases["tree"]
        phases = ", ".join(f"{k} {v:,.0f} s" for k, v in self.phases.items())
        return [
            f"seeding: {self.entries:,} entries in {sum(self.phases.values()):,.0f} s; entries"
            f" written set-based at {self.entries / load:,.0f} rows/s [{when}]",
            f"tree: registry.tree.integrate built it in {tree:,.0f} s:"
            f" {self.entries / tree:,.0f} entries/s (the node's catch-up speed)",
            f"seeding phases: {phases}",
        ]


async def seeding_of(conn: asyncpg.Connection, key: AuditKey) -> Seeding | None:
    """The seeding recorded in the database's comment, if the log, tree and checkpoint
    hold the full set signed with ``key``."""
    comment = await conn.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
        " WHERE datname = current_database()"
    )
    try:
        kept = orjson.loads(comment or "null")
        seeding = Seeding(int(kept["entries"]), dict(kept["phases"]), kept["at"], kept["key_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    row = await conn.fetchrow(
        "SELECT (SELECT size FROM audit_head) AS head, (SELECT max(size) FROM audit_checkpoints"
        " WHERE key_id = $1) AS signed",
        tree.key_id(key.public),
    )
    complete = row["head"] == row["signed"] == seeding.entries
    if not complete or await tree.tree_size(conn) != seeding.entries:
        return None
    return seeding


async def existing(server: str, entries: int, key: AuditKey) -> Seeding | None:
    seeding = await dataset.kept(server, DATABASE, partial(seeding_of, key=key))
    if seeding is None or seeding.entries != entries:
        say(f"{DATABASE} does not hold {entries:,} entries signed with the bench key: reseeding")
        return None
    return seeding


async def load_entries(dsn: str, start: int, stop: int, count: int) -> float:
    """Entries [start, stop) written in chunks on ``WORKERS`` connections; answers seconds."""
    pending = [(s, min(s + CHUNK, stop)) for s in range(start, stop, CHUNK)][::-1]
    started = time.perf_counter()

    async def worker() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while pending:
                low, high = pending.pop()
                await conn.execute(INSERT_SQL, low, high, count, FIRST_AT)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return time.perf_counter() - started


def checkpoint_clock(size: int) -> Callable[[], float]:
    """A checkpoint signed a second after the last entry it covers."""
    at = FIRST_AT.timestamp() + (size - 1) * SPACING_SECONDS + 1
    return lambda: at


async def build_in_stages(
    conn: asyncpg.Connection, dsn: str, entries: int, key: AuditKey, phases: dict[str, float]
) -> None:
    """Write the entries of each stage, integrate them and sign a checkpoint of the tree."""
    done, count = 0, handles(entries)
    for size in stage_sizes(entries):
        phases["entries"] += await load_entries(dsn, done, size, count)
        await conn.execute("UPDATE audit_head SET size = $1", size)
        began = time.perf_counter()
        if await tree.integrate(conn) != size:
            raise SystemExit(f"audit: the tree does not cover the {size:,} entries")
        phases["tree"] += time.perf_counter() - began
        began = time.perf_counter()
        await tree.make_checkpoint(conn, key, checkpoint_clock(size))
        phases["checkpoints"] += time.perf_counter() - began
        say(
            f"{size:,} entries, tree and checkpoint ({phases['entries']:,.0f} s writing,"
            f" {phases['tree']:,.0f} s integrating)"
        )
        done = size


async def rebuild(conn: asyncpg.Connection, indexes: list[asyncpg.Record]) -> dict[str, float]:
    """Re-create the dropped indexes, then vacuum and analyze the three tables."""
    began = time.perf_counter()
    await conn.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
    for row in indexes:
        await conn.execute(row["indexdef"])
    built = time.perf_counter()
    for name in ("audit_log", "audit_tree", "audit_checkpoints"):
        await conn.execute(f"VACUUM ANALYZE {name}")
    return {"indexes": built - began, "vacuum": time.perf_counter() - built}


async def record(conn: asyncpg.Connection, seeding: Seeding) -> None:
    """Keep the seeding figures in the database's comment."""
    kept = orjson.dumps(
        {
            "entries": seeding.entries,
            "phases": seeding.phases,
            "at": seeding.at,
            "key_id": seeding.key_id,
        }
    ).decode()
    quoted = kept.replace("'", "''")
    await conn.execute(f"COMMENT ON DATABASE {DATABASE} IS '{quoted}'")


async def seed(server: str, entries: int, key: AuditKey) -> Seeding:
    """A fresh database holding ``entries`` entries, their tree and its checkpoints."""
    if math.gcd(MULTIPLIER, handles(entries)) != 1:
        raise SystemExit(f"audit: choose another IDNODE_BENCH_AUDIT_ENTRIES ({MULTIPLIER} | H)")
    say(f"seeding {entries:,} audit entries into {DATABASE} (a fresh database)")
    phases = {"entries": 0.0, "tree": 0.0, "checkpoints": 0.0}
    dsn = await dataset.recreate(server, DATABASE)
    conn = await asyncpg.connect(dsn)
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_log'"
            " AND indexname <> 'audit_log_pkey' ORDER BY indexname"
        )
        for row in indexes:
            await conn.execute(f"DROP INDEX {row['indexname']}")
        await build_in_stages(conn, dsn, entries, key, phases)
        phases.update(await rebuild(conn, indexes))
        at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        seeding = Seeding(entries, phases, at, tree.key_id(key.public))
        await record(conn, seeding)
        if await seeding_of(conn, key) is None:
            raise SystemExit("audit: the seeded database does not hold the full set")
    finally:
        await conn.close()
    return seeding


async def prepare(server: str, entries: int, key: AuditKey) -> tuple[str, Seeding, bool]:
    """The database's URL, how it was seeded, and whether it was reused."""
    seeding = await existing(server, entries, key)
    reused = seeding is not None
    if seeding is None:
        seeding = await seed(server, entries, key)
    else:
        say(f"{DATABASE} already holds {entries:,} entries; not reseeding")
    return dataset.with_database(server, DATABASE), seeding, reused


@dataclass(frozen=True, slots=True)
class Disk:
    database: int
    log: int
    log_indexes: int
    tree: int

    def line(self) -> str:
        gb = 1e9
        return (
            f"disk: database {self.database / gb:,.2f} GB (audit_log {self.log / gb:,.2f} GB of"
            f" which indexes {self.log_indexes / gb:,.2f} GB; audit_tree {self.tree / gb:,.2f} GB"
            " with its primary key)"
        )


async def disk(conn: asyncpg.Connection) -> Disk:
    row = await conn.fetchrow(
        "SELECT pg_database_size(current_database()) AS db,"
        " pg_total_relation_size('audit_log') AS log, pg_indexes_size('audit_log') AS ix,"
        " pg_total_relation_size('audit_tree') AS tree"
    )
    return Disk(row["db"], row["log"], row["ix"], row["tree"])


# --- latency -------------------------------------------------------------------------------


@contextlib.contextmanager
def node(dsn: str, workdir: Path) -> Iterator[str]:
    """``idnode serve`` of this checkout (``python -m resolver.cli`` run from ROOT), one
    worker, rate limits off, signing with the bench's audit key."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDNODE_")}
    env.update(
        DATABASE_URL=dsn,
        IDNODE_HOST="127.0.0.1",
        IDNODE_PORT=str(port),
        IDNODE_LOG_LEVEL="WARNING",
        IDNODE_WORKERS="1",
        IDNODE_DATA_DIR=str(workdir),
        IDNODE_AUDIT_KEY=str(KEY_PATH.resolve()),
        IDNODE_READ_RATE="0",
        IDNODE_WRITE_RATE="0",
    )
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "resolver.cli", "serve"]
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "node-audit.log"
    with server("idnode", argv, ready_url=base + "/healthz", log=log, env=env):
        yield base


Check = Callable[[Any], None]


async def timed(
    http: aiohttp.ClientSession, name: str, make: Callable[[int], tuple[str, Check]]
) -> tuple[Timing, list[Any]]:
    """``REQUESTS`` requests one at a time after ``WARMUP``; every answer checked; answers
    the timing and the first ``VERIFIED`` bodies."""
    for i in range(WARMUP):
        address, check = make(i)
        check((await fetch(http, address))[1])
    samples: list[float] = []
    kept: list[Any] = []
    for i in range(REQUESTS):
        address, check = make(WARMUP + i)
        ms, body = await fetch(http, address)
        check(body)
        samples.append(ms)
        if len(kept) < VERIFIED:
            kept.append(body)
    t = Timing(name, samples)
    say(f"{name:<44} p50 {t.p50:6.2f}  p90 {t.p90:6.2f}  p99 {t.p99:6.2f}  max {t.max:7.2f} ms")
    return t, kept


BY_SEQ = "inclusion proof, random seq"
BY_HANDLE = "inclusion proof, random handle="
CONSISTENCY = "consistency proof, earlier → latest"
BASELINE = "latest checkpoint (baseline: one query)"


async def latency(base: str, entries: int, sizes: list[int]) -> dict[str, tuple[Timing, list[Any]]]:
    rng = random.Random()  # other entries every run: none cached by an earlier run
    count = handles(entries)
    out = {}

    def by_seq(i: int) -> tuple[str, Check]:
        seq = rng.randrange(entries)

        def check(body: Any) -> None:
            expect(f"proof of {seq}", (body["seq"], body["treeSize"]), (seq, entries))

        return f"{base}/api/audit/proof?seq={seq}", check

    def by_handle(i: int) -> tuple[str, Check]:
        h = rng.randrange(count)

        def check(body: Any) -> None:
            expect(f"proof of {handle(h)}", body["seq"], latest_seq(h, entries))

        return f"{base}/api/audit/proof?{urlencode({'handle': handle(h)})}", check

    def consistency(i: int) -> tuple[str, Check]:
        first = rng.choice(sizes[:-1])

        def check(body: Any) -> None:
            sizes_got = (body["first"]["size"], body["second"]["size"])
            expect(f"consistency {first} → {entries}", sizes_got, (first, entries))

        return f"{base}/api/audit/consistency?first={first}", check

    def latest(i: int) -> tuple[str, Check]:
        def check(body: Any) -> None:
            expect("latest checkpoint", body["size"], entries)

        return f"{base}/api/audit/checkpoint", check

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        out[BY_SEQ] = await timed(http, BY_SEQ, by_seq)
        out[BY_HANDLE] = await timed(http, BY_HANDLE, by_handle)
        out[CONSISTENCY] = await timed(http, CONSISTENCY, consistency)
        out[BASELINE] = await timed(http, BASELINE, latest)
    return out


async def verified(conn: asyncpg.Connection, answers: dict[str, list[Any]], key: AuditKey) -> str:
    """Check sampled answers with the standalone verifier; an inclusion proof's entry is read
    from the database, so its leaf is also rebuilt in Python from the published fields."""
    for kind in (BY_SEQ, BY_HANDLE):
        for proof in answers[kind]:
            entry = audit.entry_json(await audit.entry(conn, proof["seq"]))
            verify.verify_inclusion_proof(proof, key.public, entry)
    for proof in answers[CONSISTENCY]:
        verify.verify_consistency_proof(proof, key.public)
    counted = {kind: len(bodies) for kind, bodies in answers.items()}
    return (
        f"verified with registry.verify against the pinned key: {counted[BY_SEQ]}"
        f" + {counted[BY_HANDLE]} inclusion proofs (with their entries' leaves rebuilt from the"
        f" database's fields) and {counted[CONSISTENCY]} consistency proofs: all valid"
    )


def goal(ms: float) -> str:
    return f"goal < {GOAL_MS:g} ms: {'met' if ms < GOAL_MS else 'NOT met'}"


async def measure(server: str, entries: int = ENTRIES) -> list[str]:
    KEY_PATH.parent.mkdir(parents=True, exist_ok=True)
    key = AuditKey.load_or_create(KEY_PATH)
    dsn, seeding, reused = await prepare(server, entries, key)
    conn = await asyncpg.connect(dsn)
    try:
        size = await disk(conn)
        sizes = [r["size"] for r in await conn.fetch("SELECT size FROM audit_checkpoints")]
        with tempfile.TemporaryDirectory(prefix="idnode-bench-audit-") as tmp:
            with node(dsn, Path(tmp)) as base:
                found = await latency(base, entries, sorted(sizes))
        checked = await verified(conn, {k: v[1] for k, v in found.items()}, key)
    except Failed as exc:
        raise SystemExit(f"audit: a proof answer was wrong: {exc}") from None
    except verify.VerificationError as exc:
        raise SystemExit(f"audit: a proof did not verify: {exc}") from None
    finally:
        await conn.close()
    timings = [t for t, _ in found.values()]
    lines = table(timings)
    lines += [
        f"audit log: {entries:,} entries, {len(sizes)} checkpoints (database {DATABASE})",
        *seeding.lines(reused),
        size.line(),
    ]
    for t in timings:
        verdict = "the same node's floor" if t.name == BASELINE else goal(t.p99)
        lines.append(f"{t.name}: p99 {t.p99:.2f} ms (p50 {t.p50:.2f} ms; {verdict})")
    lines.append(checked)
    return lines
