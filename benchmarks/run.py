"""``make bench``: request-rate ceilings of idnode against nginx and a naive baseline.

1. Installs ``wrk`` and ``nginx`` with apt-get when missing.
2. Prepares the benchmark database: ``DATABASE_URL``, or an embedded PostgreSQL
   under ``.data/bench/pg`` (stopped when this run exits); migrations, prefix
   88.118.8, 1,000,000 identifiers ``88.118.8/P<n>`` (seeded once, reused).
3. Runs each server alone, pinned to core 1, with ``wrk -t1 -c64 -d10s
   --latency`` pinned to core 0: nginx answering the same bytes from memory,
   the naive baseline (one asyncpg fetch per request), and the node in three
   scenarios (cached hot set, uniform misses, Zipf(0.9)). PostgreSQL is not
   pinned.
4. Prints the table and the ratios the project tracks, and writes them to
   ``benchmarks/results/latest.md``; then runs ``benchmarks.hit_ratio``,
   ``benchmarks.memory`` (bytes per cached entry) and ``benchmarks.coherence``
   (time until every worker of a two-worker node drops a changed record) and
   appends their results.
5. Runs ``benchmarks.bulk`` (``idnode import`` against a raw COPY of the same rows,
   ``idnode export``) and ``benchmarks.search`` (search and listing latency over
   10,000,000 records, seeded once into their own database) and appends them.
6. Runs, each as its own process, the benchmarks that start their own nodes and print their
   own same-run baselines: the Handle protocol and DNS over UDP against the HTTP fast path,
   recursion (upstream round trips saved), traceability and the audit log (with and without
   it; proofs over 10,000,000 entries); their output is appended as it was printed.

Environment: ``IDNODE_BENCH_SECONDS`` (default 10), ``IDNODE_BENCH_IDENTIFIERS``
(default 1000000), ``DATABASE_URL`` (default: the embedded server). The machine
should be otherwise idle: the header shows the load average at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import orjson

from benchmarks import bulk, coherence, dataset, hit_ratio, memory, search, targets, wrk
from benchmarks.system import ROOT, ensure_packages, git_describe, http_get

HERE = Path(__file__).resolve().parent
BENCH_DIR = ROOT / ".data" / "bench"
LOG_DIR = BENCH_DIR / "logs"
RESULTS = HERE / "results" / "latest.md"
SECONDS = int(os.environ.get("IDNODE_BENCH_SECONDS", "10"))
COUNT = int(os.environ.get("IDNODE_BENCH_IDENTIFIERS", str(dataset.DEFAULT_COUNT)))
HOT = 1000
ZIPF_EXPONENT = 0.9
WARMUP_SECONDS = {"cached": 3, "zipf": 10}
"""Long enough for the hot set to be cached, and for Zipf to fill most of the node's cache."""
GOAL_CACHED_VS_NGINX = 0.5
GOAL_MISS_VS_NAIVE = 3.0

ID_ARGS = (dataset.PREFIX, dataset.LETTER, dataset.WIDTH)
HOT_LUA, UNIFORM_LUA, ZIPF_LUA = HERE / "hot.lua", HERE / "uniform.lua", HERE / "zipf.lua"


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    server: str
    result: wrk.WrkResult


@dataclass(frozen=True, slots=True)
class Load:
    """One wrk scenario: a Lua script and its arguments (no script: one fixed URL)."""

    name: str
    script: Path | None
    args: tuple[object, ...] = ()
    path: str = "/"


STATIC = Load("static", None, path=f"/api/handles/{dataset.handle(0)}")
CACHED = Load("cached", HOT_LUA, (*ID_ARGS, HOT, COUNT))
MISS = Load("miss", UNIFORM_LUA, (*ID_ARGS, COUNT))
ZIPF = Load("zipf", ZIPF_LUA, (*ID_ARGS, COUNT, ZIPF_EXPONENT))


def load(base: str, scenario: Load, seconds: int = SECONDS) -> wrk.WrkResult:
    return wrk.run(base + scenario.path, seconds, scenario.script, scenario.args)


def measure(rows: list[Row], server: str, base: str, scenario: Load) -> None:
    print(f"bench: {scenario.name:<7} {server:<6} ({SECONDS} s) ...", end=" ", flush=True)
    result = load(base, scenario)
    rows.append(Row(scenario.name, server, result))
    print(
        f"{result.requests_per_second:>10,.0f} req/s  p50 {fmt_ms(result.p50_ms)}"
        f"  p99 {fmt_ms(result.p99_ms)}  errors {result.errors}",
        flush=True,
    )


def warm_up(base: str, scenario: Load) -> None:
    seconds = WARMUP_SECONDS[scenario.name]
    print(f"bench: warm-up {scenario.name} ({seconds} s)", flush=True)
    load(base, scenario, seconds)


def check_answer(base: str, server: str, n: int = 0) -> None:
    """Warn unless the server answers identifier ``n`` with the expected JSON and size.

    Key order may differ from ``served_body`` (PostgreSQL's jsonb reorders object keys).
    """
    status, body = http_get(f"{base}/api/handles/{dataset.handle(n)}")
    expected = dataset.served_body(n)
    same = len(body) == len(expected) and orjson.loads(body) == orjson.loads(expected)
    if status != 200 or not same:
        print(
            f"bench: WARNING {server} answered {status} with {len(body)} bytes "
            f"for {dataset.handle(n)}; expected 200 with {len(expected)} bytes",
            flush=True,
        )


def request_counts(base: str) -> dict[str, float]:
    """``idnode_http_requests_total`` by its label text, from the node's metrics."""
    _, text = http_get(base + "/metrics", timeout=5.0)
    counts = {}
    for line in text.decode().splitlines():
        if line.startswith("idnode_http_requests_total{"):
            labels, _, value = line.partition("} ")
            counts[labels.removeprefix("idnode_http_requests_total{")] = float(value)
    return counts


def split(before: dict[str, float], after: dict[str, float]) -> str:
    """How the resolutions between two snapshots were answered."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if 'endpoint="resolve"' in k}
    fast = sum(v for k, v in delta.items() if 'frontend="http-fast"' in k)
    total = sum(delta.values())
    share = fast / total if total else 0.0
    return f"{total:,.0f} resolutions, {share:.0%} answered by the fast path (rest: aiohttp)"


def measure_node(rows: list[Row], notes: list[str], base: str, scenario: Load) -> None:
    before = request_counts(base)
    measure(rows, "idnode", base, scenario)
    notes.append(f"{scenario.name}: {split(before, request_counts(base))}")


def node_report(base: str, log: Path) -> list[str]:
    """Answers other than 200 since the node started, and what it logged."""
    notes = []
    with contextlib.suppress(OSError):
        counts = request_counts(base)
        notes += [f"{v:,.0f} × {k}" for k, v in counts.items() if v and 'code="200"' not in k]
    logged = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if line.strip() and not line.startswith("idnode: serving on")
    ]
    if logged:
        notes.append(f"{log.name}: {len(logged)} lines logged, first: {logged[0][:300]}")
    return notes


@contextlib.contextmanager
def fresh_node(dsn: str, workdir: Path, scenario: str, notes: list[str]) -> Iterator[str]:
    log = LOG_DIR / f"node-{scenario}.log"
    with targets.node(dsn, workdir, log) as base:
        check_answer(base, "idnode")
        yield base
        notes.extend(f"node {scenario}: {n}" for n in node_report(base, log))


def run_servers(dsn: str, workdir: Path) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    with targets.nginx(workdir / "nginx", dataset.served_body(0)) as base:
        measure(rows, "nginx", base, STATIC)
        measure(rows, "nginx", base, CACHED)
    with targets.naive(dsn, LOG_DIR) as base:
        check_answer(base, "naive")
        measure(rows, "naive", base, MISS)
    with fresh_node(dsn, workdir, "miss", notes) as base:
        measure_node(rows, notes, base, MISS)
    with fresh_node(dsn, workdir, "cached", notes) as base:
        warm_up(base, CACHED)
        measure_node(rows, notes, base, CACHED)
    with fresh_node(dsn, workdir, "zipf", notes) as base:
        warm_up(base, ZIPF)
        measure_node(rows, notes, base, ZIPF)
    return rows, notes


def fmt_ms(ms: float) -> str:
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms"


def rate(rows: Sequence[Row], scenario: str, server: str) -> float:
    found = [
        r.result.requests_per_second for r in rows if (r.scenario, r.server) == (scenario, server)
    ]
    return found[0] if found else float("nan")


def ratios(rows: Sequence[Row]) -> list[tuple[str, float, float]]:
    """(what, ratio, goal) for the numbers the project tracks."""
    cached = rate(rows, "cached", "idnode")
    return [
        ("node cached ÷ nginx (same hot-set script)", cached / rate(rows, "cached", "nginx"),
         GOAL_CACHED_VS_NGINX),
        ("node cached ÷ nginx (one URL, no script)", cached / rate(rows, "static", "nginx"),
         GOAL_CACHED_VS_NGINX),
        ("node miss ÷ naive miss", rate(rows, "miss", "idnode") / rate(rows, "miss", "naive"),
         GOAL_MISS_VS_NAIVE),
    ]  # fmt: skip


def errors_text(result: wrk.WrkResult) -> str:
    parts = [f"{result.non_2xx} non-2xx"] if result.non_2xx else []
    parts += [f"{n} {kind}" for kind, n in result.socket_errors.items()]
    return ", ".join(parts) or "0"


def text_table(rows: Sequence[Row]) -> str:
    out = [f"{'scenario':<9}{'server':<8}{'requests/s':>12}{'p50':>11}{'p99':>11}  errors"]
    for r in rows:
        res = r.result
        out.append(
            f"{r.scenario:<9}{r.server:<8}{res.requests_per_second:>12,.0f}"
            f"{fmt_ms(res.p50_ms):>11}{fmt_ms(res.p99_ms):>11}  {errors_text(res)}"
        )
    return "\n".join(out)


def ratio_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for what, value, goal in ratios(rows):
        verdict = "met" if value >= goal else "NOT met"
        lines.append(f"{what}: {value:.2f} (goal ≥ {goal:g}: {verdict})")
    return lines


def markdown(header: str, rows: Sequence[Row], notes: Sequence[str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        header,
        "",
        f"wrk `-t1 -c{wrk.CONNECTIONS} -d{SECONDS}s --latency` on core 0, each server alone "
        f"on core 1 (idnode with {targets.NODE_WORKERS} worker), PostgreSQL unpinned; "
        f"{COUNT:,} identifiers, answer {len(dataset.served_body(0))} bytes.",
        "",
        "| scenario | server | requests/s | p50 | p99 | errors |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        res = r.result
        lines.append(
            f"| {r.scenario} | {r.server} | {res.requests_per_second:,.0f} | "
            f"{fmt_ms(res.p50_ms)} | {fmt_ms(res.p99_ms)} | {errors_text(res)} |"
        )
    lines += ["", *(f"- {line}" for line in ratio_lines(rows))]
    if notes:
        lines += ["", "Node under load:", "", *(f"- `{n}`" for n in notes)]
    return "\n".join(lines) + "\n"


def header_line() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"commit {git_describe()}, {now} (load average at start {load})"


def prepare_database() -> str:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    dsn = dataset.database_url(BENCH_DIR)
    asyncio.run(dataset.prepare(dsn, COUNT))
    return dsn


def coherence_line(dsn: str) -> str:
    """Time until no worker of a two-worker node answers a changed record's old version."""
    with tempfile.TemporaryDirectory(prefix="idnode-coherence-") as tmp:
        log = LOG_DIR / "node-coherence.log"
        with targets.node(dsn, Path(tmp), log, workers=2) as base:
            delays = coherence.measure(
                base, dataset.ADMIN_IDENTITY, dataset.DEFAULT_SECRET, writes=200
            )
    return coherence.summary(delays) + " (2 workers; goal p99 < 50 ms)"


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers stopped, embedded PostgreSQL stopped


SEPARATE = (
    ("Handle protocol over UDP against the HTTP fast path", "benchmarks.handle_udp"),
    ("DNS over UDP against the HTTP fast path", "benchmarks.dns_udp"),
    ("Recursion: upstream round trips saved, foreign against local", "benchmarks.recursion"),
    ("Traceability", "benchmarks.trace"),
    ("Audit log", "benchmarks.audit"),
)
"""Benchmarks that start their own nodes and print their own ratios, run one after another."""


def separate(module: str) -> list[str]:
    """Run ``python -m module``, echo its output as it comes, and answer its lines."""
    print(f"\nbench: python -m {module}", flush=True)
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    if process.returncode:
        lines.append(f"(python -m {module} exited with status {process.returncode})")
    return lines


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    header = header_line()
    print(f"bench: {header}", flush=True)
    ensure_packages()
    dsn = prepare_database()
    print(f"bench: database ready ({time.monotonic() - started:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="idnode-bench-") as tmp:
        rows, notes = run_servers(dsn, Path(tmp))
    print()
    print(header)
    print(text_table(rows))
    for line in ratio_lines(rows):
        print(line)
    for note in notes:
        print(f"node: {note}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(markdown(header, rows, notes), encoding="utf-8")
    print(flush=True)
    hit_ratio.run(hit_ratio.REQUESTS, hit_ratio.UNIVERSE, hit_ratio.CAPACITY, RESULTS)
    extra = [memory.summary(), coherence_line(dsn)]
    print("\n" + "\n".join(extra))
    with RESULTS.open("a", encoding="utf-8") as out:
        out.write("\n### Memory and coherence\n\n" + "".join(f"- {line}\n" for line in extra))
    for title, measure_part in (("Bulk import and export", bulk.run), ("Search", search.run)):
        lines = measure_part(dsn)
        print(f"\n{title}:\n" + "\n".join(lines), flush=True)
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(f"\n### {title}\n\n" + "".join(f"- {line}\n" for line in lines))
    for title, module in SEPARATE:
        lines = separate(module)
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(f"\n### {title}\n\n```\n" + "\n".join(lines) + "\n```\n")
    print(f"\nbench: wrote {RESULTS.relative_to(ROOT)}; {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
