"""``python -m benchmarks.handle_udp``: cached resolutions over the Handle protocol (UDP)
next to the HTTP fast path, on the same node in the same run.

1. Seeds 10,000 identifiers ``88.118.8/P<n>`` into the database ``idnode_bench_handle``
   (recreated each run) of ``DATABASE_URL`` or an embedded PostgreSQL under
   ``.data/bench-handle/pg``.
2. Starts ``idnode serve`` (one worker, pinned to core 1) with the Handle protocol on a
   free port, checks one answer over UDP, and warms the cache with the hot set (1,000
   identifiers) over HTTP and over UDP.
3. Measures, twice and alternately, the HTTP fast path with ``wrk -t1 -c64 --latency``
   and the ``hot.lua`` script (as ``make bench``'s "cached" scenario), then UDP with a
   load generator pinned to core 0: one process keeping 64 datagrams outstanding (the
   hot set, each request as a CNRI client sends it: public only, with a request digest),
   counting answers for the same time.
4. Prints both rates and their ratio (goal: UDP at least the HTTP fast path's rate).

``IDNODE_BENCH_SECONDS`` (default 10) sets each measurement's length. Not part of
``make bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from benchmarks import dataset, targets, wrk
from benchmarks.system import ROOT, ensure_packages, free_port, http_get, pinned
from resolver import handle_client as client

SECONDS = int(os.environ.get("IDNODE_BENCH_SECONDS", "10"))
COUNT = 10_000
HOT = 1000
WINDOW = 64
ROUNDS = 2
DATABASE = "idnode_bench_handle"
BENCH_DIR = ROOT / ".data" / "bench-handle"
HOT_LUA = Path(__file__).resolve().parent / "hot.lua"


def hot_handles() -> list[str]:
    """The hot set, spread over the identifiers as ``hot.lua`` spreads it."""
    return [dataset.handle((i * 7919) % COUNT) for i in range(HOT)]


@contextlib.contextmanager
def node(dsn: str, workdir: Path, log: Path) -> Iterator[tuple[str, int]]:
    """``idnode serve`` (this checkout) with the Handle protocol: (HTTP base, Handle port)."""
    handle_port = free_port()
    settings = {"IDNODE_HANDLE_PORT": str(handle_port)}
    with targets.node(dsn, workdir, log, workers=1, **settings) as base:
        yield base, handle_port


def generate(host: str, port: int, seconds: float) -> dict[str, float]:
    """Keep ``WINDOW`` resolutions outstanding for ``seconds``; count what comes back."""
    messages = [client.resolution_request(h, request_id=i + 1) for i, h in enumerate(hot_handles())]
    random.Random(1).shuffle(messages)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect((host, port))
    # a kernel receive timeout, not settimeout(): that would poll() before every recv
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 500_000))
    send, recv = sock.send, sock.recv
    stream = itertools.cycle(messages)
    answered = not_ok = truncated = lost = outstanding = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        while outstanding < WINDOW:
            send(next(stream))
            outstanding += 1
        try:
            data = recv(4096)
        except (TimeoutError, BlockingIOError):
            lost += outstanding
            outstanding = 0
            continue
        outstanding -= 1
        answered += 1
        if data[27] != 1 or data[24:27] != b"\0\0\0":
            not_ok += 1
        if data[2] & 0x20:
            truncated += 1
        if answered % 256 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    sock.close()
    return {"answered": answered, "seconds": elapsed, "rate": answered / elapsed,
            "not_ok": not_ok, "truncated": truncated, "lost": lost}  # fmt: skip


def run_generator(port: int, seconds: int) -> dict[str, float]:
    """The load generator in its own process, pinned to core 0."""
    argv = pinned(
        0, [sys.executable, "-m", "benchmarks.handle_udp", "generate", str(port), str(seconds)]
    )
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()}")
    result: dict[str, float] = orjson.loads(done.stdout)
    return result


async def check_and_warm(port: int) -> int:
    """One answer checked whole, then every hot identifier once; answers its size in bytes."""
    first = await client.query("127.0.0.1", port, dataset.handle(0))
    if first.header.response_code != 1 or len(first.values) != 5:
        raise RuntimeError(f"unexpected answer over UDP: {client.as_json(first, '')}")
    for h in hot_handles():
        await client.query("127.0.0.1", port, h)
    raw = await client.exchange_udp(
        "127.0.0.1", port, client.resolution_request(dataset.handle(0), request_id=1), 5.0
    )
    return len(raw)


def handle_counts(base: str) -> str:
    _, text = http_get(base + "/metrics", timeout=5.0)
    lines = [
        ln for ln in text.decode().splitlines() if ln.startswith("idnode_handle_requests_total{")
    ]
    return "; ".join(lines) or "(none)"


async def prepare() -> str:
    server_dsn = dataset.database_url(BENCH_DIR)
    dsn = await dataset.recreate(server_dsn, DATABASE)
    await dataset.prepare(dsn, COUNT)
    return dsn


def report(https: list[wrk.WrkResult], udps: list[dict[str, float]], size: int) -> None:
    for n, (http, udp) in enumerate(zip(https, udps, strict=True), 1):
        print(
            f"round {n}: HTTP fast path (wrk -t1 -c64, hot set of {HOT}):"
            f" {http.requests_per_second:,.0f} req/s  p50 {http.p50_ms:.2f} ms"
            f"  p99 {http.p99_ms:.2f} ms  errors {http.errors}"
        )
        print(
            f"round {n}: Handle protocol over UDP ({WINDOW} outstanding, same hot set,"
            f" {size}-byte answers): {udp['rate']:,.0f} queries/s  (not responseCode 1:"
            f" {udp['not_ok']:.0f}, truncated: {udp['truncated']:.0f}, lost: {udp['lost']:.0f})"
        )
    http_rate = sum(h.requests_per_second for h in https) / len(https)
    udp_rate = sum(u["rate"] for u in udps) / len(udps)
    print(
        f"mean: HTTP fast path {http_rate:,.0f} req/s, UDP {udp_rate:,.0f} queries/s;"
        f" ratio UDP / HTTP fast path {udp_rate / http_rate:.2f} (goal >= 1.0)"
    )


def main() -> int:
    ensure_packages()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    dsn = asyncio.run(prepare())
    with tempfile.TemporaryDirectory(prefix="idnode-bench-handle-") as tmp:
        log = BENCH_DIR / "node.log"
        with node(dsn, Path(tmp), log) as (base, port):
            size = asyncio.run(check_and_warm(port))
            args = (dataset.PREFIX, dataset.LETTER, dataset.WIDTH, HOT, COUNT)
            wrk.run(base + "/", 3, HOT_LUA, args)  # warm-up
            https, udps = [], []
            for _ in range(ROUNDS):  # alternated: a busy machine slows both alike
                https.append(wrk.run(base + "/", SECONDS, HOT_LUA, args))
                udps.append(run_generator(port, SECONDS))
            counts = handle_counts(base)
    report(https, udps, size)
    print(f"node counters: {counts}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["generate"]:
        print(orjson.dumps(generate("127.0.0.1", int(sys.argv[2]), float(sys.argv[3]))).decode())
        raise SystemExit(0)
    raise SystemExit(main())
