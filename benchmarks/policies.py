"""Cache eviction policies in pure Python, for the hit-ratio benchmark.

Each online policy is a mapping with ``get(key)`` (the value, or None on a miss)
and ``cache[key] = value`` (insert after a miss, evicting as the policy says),
the same surface as ``lru.LRU`` so one get-or-set loop drives them all.

- ``Sieve``: SIEVE (Zhang et al., "SIEVE is Simpler than LRU", NSDI '24). One
  FIFO queue, a visited bit per object and a hand that walks from the oldest
  object towards the newest, clearing visited bits, and evicts the first
  unvisited object it meets. New objects enter at the head; a hit only sets the
  bit.
- ``S3Fifo``: S3-FIFO (Yang et al., "FIFO queues are all you need for cache
  eviction", SOSP '23). A small FIFO (10 % of the entries), a main FIFO (the
  rest) and a ghost FIFO of keys (90 % of the entries). A 2-bit frequency per
  object (capped at 3). Misses enter the small queue, or the main queue when the
  key is a ghost. Leaving the small queue, an object read at least twice since
  it entered moves to main (frequency reset), others become ghosts. Leaving
  main, an object with frequency > 0 is reinserted with frequency - 1. As in the
  authors' libCacheSim, main is evicted from when it is over its share or the
  small queue is empty, otherwise the small queue is.
- ``belady_hits``: Belady's offline optimum (OPT): on a miss with a full cache,
  evict the object whose next use is farthest in the future; an object that is
  never used again is not admitted. Next uses are precomputed; a max-heap with
  lazy deletion finds the victim.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from typing import Any

_NIL = -1


class Sieve:
    """SIEVE over a doubly linked list kept in parallel arrays of slots."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._slot: dict[Hashable, int] = {}
        self._keys: list[Hashable] = [None] * capacity
        self._values: list[Any] = [None] * capacity
        self._visited = [False] * capacity
        self._newer = [_NIL] * capacity  # towards the head (newest)
        self._older = [_NIL] * capacity  # towards the tail (oldest)
        self._head = _NIL
        self._tail = _NIL
        self._hand = _NIL

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slot

    def get(self, key: Hashable) -> Any:
        slot = self._slot.get(key)
        if slot is None:
            return None
        self._visited[slot] = True
        return self._values[slot]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        slot = self._slot.get(key)
        if slot is not None:
            self._values[slot] = value
            return
        slot = self._evict() if len(self._slot) >= self.capacity else len(self._slot)
        self._keys[slot] = key
        self._values[slot] = value
        self._visited[slot] = False
        self._push_head(slot)
        self._slot[key] = slot

    def _evict(self) -> int:
        """Remove the object SIEVE chooses; answer its free slot."""
        visited, newer = self._visited, self._newer
        slot = self._hand if self._hand != _NIL else self._tail
        while visited[slot]:
            visited[slot] = False
            slot = newer[slot] if newer[slot] != _NIL else self._tail
        self._hand = newer[slot]
        self._unlink(slot)
        del self._slot[self._keys[slot]]
        self._values[slot] = None
        return slot

    def _push_head(self, slot: int) -> None:
        self._older[slot] = self._head
        self._newer[slot] = _NIL
        if self._head != _NIL:
            self._newer[self._head] = slot
        self._head = slot
        if self._tail == _NIL:
            self._tail = slot

    def _unlink(self, slot: int) -> None:
        older, newer = self._older[slot], self._newer[slot]
        if older != _NIL:
            self._newer[older] = newer
        else:
            self._tail = newer
        if newer != _NIL:
            self._older[newer] = older
        else:
            self._head = older


class S3Fifo:
    """S3-FIFO with deques for the small and main queues and an OrderedDict ghost."""

    SMALL_RATIO = 0.10
    GHOST_RATIO = 0.90
    MOVE_TO_MAIN = 2
    MAX_FREQ = 3

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self.main_capacity = capacity - max(1, int(capacity * self.SMALL_RATIO))
        self.ghost_capacity = max(1, int(capacity * self.GHOST_RATIO))
        self._values: dict[Hashable, Any] = {}
        self._freq: dict[Hashable, int] = {}
        self._small: deque[Hashable] = deque()
        self._main: deque[Hashable] = deque()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def get(self, key: Hashable) -> Any:
        value = self._values.get(key)
        if value is not None:
            freq = self._freq[key]
            if freq < self.MAX_FREQ:
                self._freq[key] = freq + 1
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        if key in self._values:
            self._values[key] = value
            return
        while len(self._values) >= self.capacity:
            self._evict()
        if key in self._ghost:
            del self._ghost[key]
            self._main.append(key)
        else:
            self._small.append(key)
        self._values[key] = value
        self._freq[key] = 0

    def _evict(self) -> None:
        if len(self._main) > self.main_capacity or not self._small:
            self._evict_main()
        else:
            self._evict_small()

    def _evict_small(self) -> None:
        small, freq = self._small, self._freq
        while small:
            key = small.popleft()
            if freq[key] >= self.MOVE_TO_MAIN:
                freq[key] = 0
                self._main.append(key)
                continue
            del self._values[key], freq[key]
            ghost = self._ghost
            ghost[key] = None
            if len(ghost) > self.ghost_capacity:
                ghost.popitem(last=False)
            return

    def _evict_main(self) -> None:
        main, freq = self._main, self._freq
        while main:
            key = main.popleft()
            f = freq[key]
            if f > 0:
                freq[key] = f - 1
                main.append(key)
                continue
            del self._values[key], freq[key]
            return


def next_uses(stream: Sequence[int]) -> list[int]:
    """For each position, the position of the next request for the same key (len = never)."""
    never = len(stream)
    out = [never] * never
    last: dict[int, int] = {}
    for i in range(never - 1, -1, -1):
        key = stream[i]
        out[i] = last.get(key, never)
        last[key] = i
    return out


def belady_hits(stream: Sequence[int], capacity: int, nexts: Sequence[int]) -> int:
    """Hits of Belady's OPT on ``stream`` (keys must be ints below 2**32)."""
    never = len(stream)
    shift = 32
    mask = (1 << shift) - 1
    cached: dict[int, int] = {}  # key -> position of its next use
    heap: list[int] = []  # -(next_use << 32 | key); stale entries are skipped
    hits = 0
    push, pop = heapq.heappush, heapq.heappop
    for i, key in enumerate(stream):
        nxt = nexts[i]
        if key in cached:
            hits += 1
            cached[key] = nxt
            push(heap, -((nxt << shift) | key))
        elif nxt != never:
            if len(cached) >= capacity:
                while cached.get(-heap[0] & mask) != -heap[0] >> shift:
                    pop(heap)  # stale: that key was evicted or used since
                farthest = -heap[0]
                if farthest >> shift < nxt:
                    continue  # the newcomer is needed last of all: not admitted
                pop(heap)
                del cached[farthest & mask]
            cached[key] = nxt
            push(heap, -((nxt << shift) | key))
        if len(heap) > 4 * capacity + 1024:
            heap = [-((n << shift) | k) for k, n in cached.items()]
            heapq.heapify(heap)
    return hits
