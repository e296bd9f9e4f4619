"""Hit ratio and speed of cache policies on a Zipf(0.9) request stream.

A stream of 5,000,000 requests over 10,000,000 identifiers (rank ``r`` drawn with
probability proportional to ``r ** -0.9``, by inverse CDF: numpy when it is
installed, else ``bisect`` over a cumulative array) is replayed through caches
of 100,000 entries (1 % of the identifiers): LRU (``lru.LRU`` from lru-dict, C),
SIEVE and S3-FIFO (pure Python, ``benchmarks/policies.py``) and Belady's offline
optimum. Each online policy runs the same get-or-set loop; its operations per
second are that loop's rate on this machine.

Standalone: ``.venv/bin/python -m benchmarks.hit_ratio [--requests N] [--universe N]
[--capacity N] [--append FILE]``.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lru import LRU

from benchmarks.policies import S3Fifo, Sieve, belady_hits, next_uses

UNIVERSE = 10_000_000
REQUESTS = 5_000_000
CAPACITY = 100_000
EXPONENT = 0.9
SEED = 20240416


@dataclass(frozen=True, slots=True)
class Outcome:
    policy: str
    hit_ratio: float
    ops_per_second: float
    note: str = ""


def zipf_stream(requests: int, universe: int, exponent: float, seed: int) -> list[int]:
    """``requests`` ranks in 0..universe-1, rank r with probability ∝ (r + 1) ** -exponent."""
    try:
        import numpy as np
    except ImportError:
        return _zipf_stream_python(requests, universe, exponent, seed)
    cdf = np.cumsum(np.arange(1, universe + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    draws = np.random.default_rng(seed).random(requests)
    ranks = np.minimum(np.searchsorted(cdf, draws, side="right"), universe - 1)
    return [int(r) for r in ranks]


def _zipf_stream_python(requests: int, universe: int, exponent: float, seed: int) -> list[int]:
    weights = map(pow, range(1, universe + 1), itertools.repeat(-exponent))
    cdf = array("d", itertools.accumulate(weights))
    total = cdf[-1]
    rng = random.Random(seed)
    last = universe - 1
    find = bisect.bisect_right
    return [min(find(cdf, rng.random() * total), last) for _ in range(requests)]


def get_or_set(cache: Any, stream: Sequence[int]) -> tuple[int, float]:
    """Replay ``stream`` as get-or-set; answer (hits, seconds)."""
    get, put = cache.get, cache.__setitem__
    hits = 0
    started = time.perf_counter()
    for key in stream:
        if get(key) is None:
            put(key, key)
        else:
            hits += 1
    return hits, time.perf_counter() - started


def online(name: str, make: Callable[[int], Any], stream: Sequence[int], capacity: int) -> Outcome:
    hits, seconds = get_or_set(make(capacity), stream)
    return Outcome(name, hits / len(stream), len(stream) / seconds)


def optimum(stream: Sequence[int], capacity: int) -> Outcome:
    nexts = next_uses(stream)
    started = time.perf_counter()
    hits = belady_hits(stream, capacity, nexts)
    seconds = time.perf_counter() - started
    return Outcome("OPT (Belady)", hits / len(stream), len(stream) / seconds, "offline")


POLICIES: tuple[tuple[str, Callable[[int], Any]], ...] = (
    ("LRU (lru-dict)", LRU),
    ("SIEVE", Sieve),
    ("S3-FIFO", S3Fifo),
)


def measure(requests: int, universe: int, capacity: int) -> tuple[list[Outcome], float]:
    """Every policy's outcome, and the seconds spent generating the stream."""
    started = time.perf_counter()
    stream = zipf_stream(requests, universe, EXPONENT, SEED)
    generated = time.perf_counter() - started
    outcomes = [online(name, make, stream, capacity) for name, make in POLICIES]
    outcomes.append(optimum(stream, capacity))
    return outcomes, generated


def markdown(outcomes: Sequence[Outcome], requests: int, universe: int, capacity: int) -> str:
    lines = [
        f"### Cache policies: Zipf({EXPONENT}), {requests:,} requests over {universe:,} "
        f"identifiers, {capacity:,} entries",
        "",
        "| policy | hit ratio | get-or-set ops/s |",
        "|---|---:|---:|",
    ]
    for o in outcomes:
        rate = f"{o.ops_per_second:,.0f}" + (f" ({o.note})" if o.note else "")
        lines.append(f"| {o.policy} | {o.hit_ratio:.2%} | {rate} |")
    return "\n".join(lines) + "\n"


def text_table(outcomes: Sequence[Outcome]) -> str:
    rows = [f"{'policy':<16} {'hit ratio':>10} {'ops/s':>14}"]
    for o in outcomes:
        note = f"  ({o.note})" if o.note else ""
        rows.append(f"{o.policy:<16} {o.hit_ratio:>10.2%} {o.ops_per_second:>14,.0f}{note}")
    return "\n".join(rows)


def run(requests: int, universe: int, capacity: int, append: Path | None) -> str:
    """Measure, print the table, append its Markdown to ``append``; answer the Markdown."""
    print(
        f"hit ratio: Zipf({EXPONENT}) {requests:,} requests over {universe:,} ids, "
        f"cache {capacity:,}",
        flush=True,
    )
    outcomes, generated = measure(requests, universe, capacity)
    print(text_table(outcomes))
    print(f"(stream generated in {generated:.1f} s)", flush=True)
    table = markdown(outcomes, requests, universe, capacity)
    if append is not None:
        with append.open("a", encoding="utf-8") as out:
            out.write("\n" + table)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=REQUESTS)
    p.add_argument("--universe", type=int, default=UNIVERSE)
    p.add_argument("--capacity", type=int, default=CAPACITY)
    p.add_argument("--append", type=Path, help="Markdown file to append the table to")
    args = p.parse_args(argv)
    run(args.requests, args.universe, args.capacity, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
