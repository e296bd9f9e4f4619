"""The hot-path cache: resolutions kept per process, correct when records change.

Modelled on CoreDNS's cache plugin and Unbound's serve-expired:

- positive and negative entries, each with an absolute expiry (records of
  prefixes homed here are kept until invalidated, up to a ceiling; an entry
  fetched from an upstream node carries its own TTL and stale bound);
- bounded by entry count with LRU eviction (``lru-dict``, a C implementation),
  evictions counted;
- a resolution is encoded once when it is filled; a hit does no JSON work;
- invalidated by key when this process writes (synchronously, before the write
  is answered) and when another process's write is announced by ``NOTIFY``;
- ``distrust()`` (the ``LISTEN`` connection was lost) makes every entry suspect:
  it is no longer served as fresh, only as stale when the database is down,
  for at most ``stale_for`` seconds after it stopped being fresh.

Fills race with invalidations: a fetch that was in flight when its key was
invalidated (or the cache distrusted) does not fill, so a process never serves
an entry older than its own last write of that handle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lru import LRU

from registry.store import Record

Clock = Callable[[], float]


@dataclass(slots=True)
class Entry:
    """One resolution, encoded once."""

    record: Record | None
    """None: the handle does not exist (a negative entry)."""
    public: bytes = b"[]"
    """The JSON array of the record's publicly readable values."""
    etag: str = ""
    max_age: int = 0
    """The smallest TTL of the public values: how long clients may keep the answer."""
    expires_at: float = 0.0
    epoch: int = 0
    ttl: float | None = None
    """Seconds to keep this entry, when it sets its own (an upstream record's TTL)."""
    stale_for: float | None = None
    """Seconds it may be served stale, when it sets its own bound."""

    @property
    def positive(self) -> bool:
        return self.record is not None


@dataclass(slots=True)
class CacheStats:
    hits_positive: int = 0
    hits_negative: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    stale_served: int = 0
    distrusts: int = 0


class Cache:
    """A bounded map from handle keys to entries, with invalidation and stale serving."""

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_age: float = 3600.0,
        negative_ttl: float = 60.0,
        stale_for: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.negative_ttl = negative_ttl
        self.stale_for = stale_for
        self.clock = clock
        self.stats = CacheStats()
        self._entries: LRU[str, Entry] = LRU(max_entries, callback=self._evicted)
        self.epoch = 0
        self._distrusted_at: dict[int, float] = {}
        self._flights: dict[str, asyncio.Future[Entry]] = {}
        self.trusted = True

    def _evicted(self, key: str, entry: Entry) -> None:
        self.stats.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def _fresh_until(self, entry: Entry) -> float:
        if entry.epoch == self.epoch:
            return entry.expires_at
        return min(entry.expires_at, self._distrusted_at.get(entry.epoch, 0.0))

    def fresh(self, key: str) -> Entry | None:
        """The entry for ``key`` if it may be served as fresh now."""
        entry: Entry | None = self._entries.get(key)
        if entry is None or not self.trusted or self._fresh_until(entry) <= self.clock():
            self.stats.misses += 1
            return None
        if entry.positive:
            self.stats.hits_positive += 1
        else:
            self.stats.hits_negative += 1
        return entry

    def stale(self, key: str) -> Entry | None:
        """The entry for ``key`` if it stopped being fresh less than ``stale_for`` ago."""
        entry: Entry | None = self._entries.get(key)
        if entry is None:
            return None
        stale_for = self.stale_for if entry.stale_for is None else entry.stale_for
        if self.clock() - self._fresh_until(entry) > stale_for:
            return None
        self.stats.stale_served += 1
        return entry

    def flight(self, key: str) -> asyncio.Future[Entry] | None:
        """The fetch in progress for ``key`` that a new request may join."""
        return self._flights.get(key)

    def begin(self, key: str, flight: asyncio.Future[Entry]) -> None:
        """Record the fetch for ``key``; its answer goes to ``fill``."""
        self._flights[key] = flight

    def end(self, key: str, flight: asyncio.Future[Entry]) -> None:
        """Forget a failed fetch."""
        if self._flights.get(key) is flight:
            del self._flights[key]

    def fill(self, key: str, flight: asyncio.Future[Entry], entry: Entry) -> bool:
        """Store a fetched entry unless ``key`` was invalidated since ``begin``."""
        if self._flights.get(key) is not flight:
            return False
        del self._flights[key]
        if not self.trusted:
            return False
        ttl = entry.ttl
        if ttl is None:
            ttl = self.max_age if entry.positive else self.negative_ttl
        entry.expires_at = self.clock() + ttl
        entry.epoch = self.epoch
        self._entries[key] = entry
        return True

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop entries (and cancel pending fills) for changed handles."""
        for key in keys:
            self.stats.invalidations += 1
            self._flights.pop(key, None)
            self._entries.pop(key, None)

    def distrust(self) -> None:
        """Invalidation can no longer be relied on: nothing is fresh until ``trust()``."""
        self.stats.distrusts += 1
        self._distrusted_at[self.epoch] = self.clock()
        self.epoch += 1
        self._flights.clear()
        self.trusted = False

    def trust(self) -> None:
        """Invalidation works again; entries from before stay suspect (stale-only)."""
        self._flights.clear()
        self.trusted = True

    def flush(self) -> None:
        self._entries.clear()
        self._flights.clear()
