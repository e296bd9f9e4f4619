"""DNS over UDP from the cache, next to the HTTP fast path, in one run.

``python -m benchmarks.dns_udp`` seeds a small data set (``IDNODE_BENCH_IDENTIFIERS``,
default 10,000) in its own database, starts ``idnode serve`` (one worker, pinned to
core 1) with the DNS front-end on, and from core 0:

1. warms both faces on a hot set of 1,000 identifiers;
2. measures the HTTP fast path with wrk (``hot.lua``, as ``benchmarks/run.py``'s
   "cached" scenario);
3. measures cached TXT resolutions over UDP with a load generator that sends
   pre-rendered query wires (random ids, names in mixed case as resolvers using
   0x20 do), keeps many datagrams outstanding, and counts answers (NOERROR with
   an answer, not truncated; anything else is counted as an error).

Then prints both rates and their ratio. Not part of ``make bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name

from benchmarks import dataset, targets, wrk
from benchmarks.run import HOT, HOT_LUA, ID_ARGS
from benchmarks.system import ROOT, ensure_packages, free_port, git_describe
from registry.handle import parse
from resolver.dns_names import to_name

BENCH_DIR = ROOT / ".data" / "bench-dns"
SECONDS = int(os.environ.get("IDNODE_BENCH_SECONDS", "10"))
COUNT = int(os.environ.get("IDNODE_BENCH_IDENTIFIERS", "10000"))
ZONE = dns.name.from_text("id.example.")
WINDOW = 256
"""Datagrams outstanding at once."""
LOAD_CORE = 0
"""The load generator's core; the node runs on core 1 (benchmarks.system.server)."""


@contextlib.contextmanager
def node(dsn: str, workdir: Path) -> Iterator[tuple[str, int]]:
    """``idnode serve`` with one worker and the DNS front-end: (HTTP base URL, DNS port)."""
    dns_port = free_port()
    settings = {"IDNODE_DNS_PORT": str(dns_port), "IDNODE_DNS_ZONE": ZONE.to_text()}
    with targets.node(dsn, workdir, workdir / "node.log", workers=1, **settings) as base:
        yield base, dns_port


def hot_queries(count: int, rng: random.Random) -> list[bytes]:
    """Query wires for the hot set (as hot.lua picks it), each name in a random case."""
    wires = []
    for i in range(HOT):
        name = to_name(parse(dataset.handle((i * 7919) % count)), ZONE)
        mixed = dns.name.Name(
            [bytes(c ^ 0x20 if rng.random() < 0.5 and chr(c).isalpha() else c for c in label)
             for label in name.labels]
        )  # fmt: skip
        query = dns.message.make_query(mixed, "TXT", use_edns=0, payload=1232)
        wires.append(query.to_wire())
    return wires


def udp_load(port: int, wires: list[bytes], seconds: float) -> tuple[int, int, int]:
    """(good answers, bad answers, datagrams lost) in ``seconds`` with WINDOW outstanding."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.2)
    rng = random.Random(1)
    good = bad = lost = outstanding = 0
    deadline = time.monotonic() + seconds
    n = len(wires)
    try:
        while time.monotonic() < deadline:
            while outstanding < WINDOW:
                wire = wires[rng.randrange(n)]
                sock.send(rng.randbytes(2) + wire[2:])
                outstanding += 1
            for _ in range(64):
                try:
                    reply = sock.recv(4096)
                except TimeoutError:
                    lost, outstanding = lost + outstanding, 0
                    break
                outstanding -= 1
                # NOERROR, not truncated, at least one answer record
                if reply[3] & 0x0F == 0 and not reply[2] & 0x02 and reply[6:8] != b"\0\0":
                    good += 1
                else:
                    bad += 1
                if outstanding <= WINDOW // 2:
                    break
    finally:
        sock.close()
    return good, bad, lost


def warm(port: int, wires: list[bytes]) -> None:
    """Ask every hot name once, slowly enough that each fills the cache."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(2.0)
        for wire in wires:
            sock.send(wire)
            sock.recv(4096)


def main() -> int:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    print(f"bench-dns: commit {git_describe()}, {COUNT:,} identifiers, {SECONDS} s each")
    ensure_packages()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    dsn = dataset.database_url(BENCH_DIR)
    asyncio.run(dataset.prepare(dsn, COUNT))
    wires = hot_queries(COUNT, random.Random(7))
    workdir = BENCH_DIR / "node"
    workdir.mkdir(exist_ok=True)
    with node(dsn, workdir) as (base, dns_port):
        hot_args = (*ID_ARGS, HOT, COUNT)
        wrk.run(base + "/", 3, HOT_LUA, hot_args)  # warm-up
        warm(dns_port, wires)
        http = wrk.run(base + "/", SECONDS, HOT_LUA, hot_args)
        print(
            f"bench-dns: HTTP fast path (wrk -c{wrk.CONNECTIONS}): "
            f"{http.requests_per_second:,.0f} req/s, errors {http.errors}",
            flush=True,
        )
        started = time.monotonic()
        good, bad, lost = udp_load(dns_port, wires, SECONDS)
        rate = good / (time.monotonic() - started)
        print(
            f"bench-dns: DNS TXT over UDP ({WINDOW} outstanding): {rate:,.0f} answers/s, "
            f"bad {bad}, lost {lost}",
            flush=True,
        )
    ratio = rate / http.requests_per_second if http.requests_per_second else 0.0
    print(f"bench-dns: DNS/UDP ÷ HTTP fast path = {ratio:.2f} (goal >= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
