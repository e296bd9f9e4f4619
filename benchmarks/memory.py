"""Bytes per cached entry, against the size of the encoded answer it holds.

Fills the node's own cache (``resolver.cache.Cache``, through the pipeline's
``encode``) with records of about 500 bytes of encoded public values and
measures the memory that filling took with ``tracemalloc`` (entry, record,
key, ETag and the LRU's own slot). Run: ``python -m benchmarks.memory``.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from registry import values as hv
from registry.handle import fold
from registry.store import Record
from resolver.cache import Cache, Entry
from resolver.pipeline import encode

ENTRIES = 50_000
TIMESTAMP = "2025-06-01T08:00:00Z"


def record(n: int) -> Record:
    """A product record whose encoded public values are about 500 bytes."""
    suffix = f"P{n:07d}"
    values = [
        hv.Value(
            1, "URL", "string", f"https://products.example.com/p/{suffix}", timestamp=TIMESTAMP
        ),
        hv.Value(2, "EMAIL", "string", "quality@example.com", timestamp=TIMESTAMP),
        hv.Value(3, "MODEL", "string", "JXDY-2106", timestamp=TIMESTAMP),
        hv.Value(4, "BATCH", "string", f"B{n // 1000:05d}/2025-05-01", timestamp=TIMESTAMP),
    ]
    return Record.of(f"88.118.8/{suffix}", values)


async def measure(count: int = ENTRIES) -> tuple[float, float]:
    """(bytes per entry, mean encoded size) for ``count`` cached records.

    Records are built inside the measured window, as a miss builds them, so what
    is left allocated at the end is exactly what the cache keeps.
    """
    cache = Cache(max_entries=count)
    loop = asyncio.get_running_loop()
    encoded = 0
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(count):
        rec = record(n)
        entry = encode(rec)
        encoded += len(entry.public)
        key = fold(rec.handle)
        flight: asyncio.Future[Entry] = loop.create_future()
        cache.begin(key, flight)
        cache.fill(key, flight, entry)
    del rec, entry, flight
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(cache) == count
    return kept / count, encoded / count


def summary() -> str:
    per_entry, encoded = asyncio.run(measure())
    return (
        f"cache memory: {per_entry:,.0f} bytes per entry for {encoded:,.0f}-byte encoded answers"
        f" ({per_entry / encoded:.2f}× the encoded size; goal < 2×)"
    )


def main() -> None:
    print(summary())


if __name__ == "__main__":
    main()
