"""Request limits: token buckets per client and back-off on authentication failures.

Everything here is synchronous, does O(1) work per call and keeps bounded memory;
time comes from an injected clock (``time.monotonic`` by default), so tests run on a
fake clock. Buckets refill lazily (``tokens = min(burst, tokens + elapsed * rate)``
when a key is touched); there are no timers.

Per-worker approximation: the node runs ``workers`` processes and each holds its
own buckets; the kernel spreads connections across them. ``Limits`` therefore
gives each process ``rate / workers`` and ``burst / workers`` (burst never below
1). A client whose connections are spread evenly gets about the configured rate
in total; one keeping a single connection (hence one worker) gets only its
share, and one spreading unevenly may get somewhat more than the configured
rate, up to ``workers`` times the burst when ``burst / workers`` is below 1. The
authentication back-off is per process too: a client whose attempts land on
different workers gets up to ``workers`` attempts per back-off period.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice

Clock = Callable[[], float]

_EPSILON = 1e-9
"""Tolerance for float noise in refills: a bucket this close to ``cost`` allows it."""

_EVICTION_SCAN = 64
"""How many least recently used buckets an eviction inspects for idle ones."""


class _Bucket:
    __slots__ = ("tokens", "last")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class RateLimiter:
    """Token buckets keyed by a string, at most ``max_keys`` of them.

    ``rate`` tokens per second refill a bucket holding at most ``burst``; a new
    key starts full. ``rate <= 0`` (or not finite) means unlimited: no state is
    kept. When full, a new key evicts the idle buckets (refilled to ``burst``,
    hence no different from an absent one) among the ``_EVICTION_SCAN`` least
    recently used, or else the least recently used bucket.
    """

    __slots__ = ("_rate", "_burst", "_max_keys", "_clock", "_unlimited", "_buckets")

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self._unlimited = not 0.0 < rate < math.inf
        if not self._unlimited and not 0.0 < burst < math.inf:
            raise ValueError(f"burst must be positive and finite, not {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys!r}")
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def rate(self) -> float:
        """Tokens added per second (``<= 0``: unlimited)."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens a bucket holds."""
        return self._burst

    @property
    def unlimited(self) -> bool:
        """True when every ``take`` is allowed."""
        return self._unlimited

    def __len__(self) -> int:
        """The number of buckets held."""
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        """Whether a bucket is held for ``key``."""
        return key in self._buckets

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 when allowed, else the wait.

        When refused nothing is consumed and the answer is the number of seconds
        (> 0) until ``cost`` tokens will be available. ``cost`` must be between 0
        and ``burst`` (more could never be allowed): ``ValueError`` otherwise.
        """
        if self._unlimited:
            return 0.0
        if not 0.0 <= cost <= self._burst:
            raise ValueError(f"cost must be from 0 to burst ({self._burst}), not {cost!r}")
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self._max_keys:
                self._evict(now)
            buckets[key] = _Bucket(self._burst - cost, now)
            return 0.0
        buckets.move_to_end(key)
        tokens = bucket.tokens
        elapsed = now - bucket.last
        if elapsed > 0.0:
            tokens = min(self._burst, tokens + elapsed * self._rate)
            bucket.last = now
        if tokens + _EPSILON >= cost:
            bucket.tokens = tokens - cost
            return 0.0
        bucket.tokens = tokens
        return (cost - tokens) / self._rate

    def peek(self, key: str, cost: float = 1.0) -> float:
        """What ``take(key, cost)`` would answer now, consuming and recording nothing."""
        if self._unlimited:
            return 0.0
        if not 0.0 <= cost <= self._burst:
            raise ValueError(f"cost must be from 0 to burst ({self._burst}), not {cost!r}")
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = bucket.tokens
        elapsed = self._clock() - bucket.last
        if elapsed > 0.0:
            tokens = min(self._burst, tokens + elapsed * self._rate)
        if tokens + _EPSILON >= cost:
            return 0.0
        return (cost - tokens) / self._rate

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        full = self._burst - _EPSILON
        rate = self._rate
        idle = [
            key
            for key, bucket in islice(buckets.items(), _EVICTION_SCAN)
            if bucket.tokens + (now - bucket.last) * rate >= full
        ]
        if idle:
            for key in idle:
                del buckets[key]
        else:
            buckets.popitem(last=False)


class FailureBackoff:
    """Growing back-off on repeated authentication failures, keyed by identity.

    The first failure is free (no wait); the second waits ``base``; each further
    one multiplies the wait by ``factor``, up to ``ceiling``. A failure more than
    ``forget_after`` seconds after the previous one starts afresh (so
    ``forget_after`` should exceed ``ceiling``). At most ``max_keys`` identities
    are remembered: when full, those whose failures are forgotten go first, else
    the one whose last failure is oldest.
    """

    __slots__ = ("_base", "_factor", "_ceiling", "_forget_after", "_max_keys", "_clock", "_state")

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 2.0,
        ceiling: float = 300.0,
        forget_after: float = 900.0,
        *,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if base < 0.0 or factor < 1.0 or ceiling < 0.0 or forget_after <= 0.0:
            raise ValueError("need base >= 0, factor >= 1, ceiling >= 0 and forget_after > 0")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys!r}")
        self._base = min(base, ceiling)
        self._factor = factor
        self._ceiling = ceiling
        self._forget_after = forget_after
        self._max_keys = max_keys
        self._clock = clock
        # key -> [wait after the last failure, time of the last failure], oldest failure first.
        self._state: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        """The number of identities remembered."""
        return len(self._state)

    def __contains__(self, key: object) -> bool:
        """Whether failures of ``key`` are remembered."""
        return key in self._state

    def blocked_for(self, key: str) -> float:
        """Seconds ``key`` must still wait before its next attempt (0.0 if free)."""
        entry = self._state.get(key)
        if entry is None:
            return 0.0
        elapsed = self._clock() - entry[1]
        if elapsed >= self._forget_after:
            del self._state[key]
            return 0.0
        return max(0.0, entry[0] - elapsed)

    def failed(self, key: str) -> float:
        """Record a failure of ``key``; answers the wait it now imposes."""
        now = self._clock()
        state = self._state
        entry = state.get(key)
        if entry is not None and now - entry[1] < self._forget_after:
            wait = self._base if entry[0] == 0.0 else min(self._ceiling, entry[0] * self._factor)
            entry[0] = wait
            entry[1] = now
            state.move_to_end(key)
            return wait
        if entry is not None:
            del state[key]
        elif len(state) >= self._max_keys:
            self._evict(now)
        state[key] = [0.0, now]
        return 0.0

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures."""
        self._state.pop(key, None)

    def _evict(self, now: float) -> None:
        # Ordered by last failure, so the forgotten ones are a prefix.
        state = self._state
        popped = False
        while state:
            key, entry = next(iter(state.items()))
            if now - entry[1] < self._forget_after:
                break
            del state[key]
            popped = True
        if not popped:
            state.popitem(last=False)


def _share(burst: float, workers: int) -> float:
    return max(1.0, burst / workers)


class Limits:
    """The limits the HTTP layer applies, for one worker process of ``workers``.

    Reads are limited per client address; writes per client address and, when
    known, per identity. Each process takes ``rate / workers`` and
    ``burst / workers`` (burst at least 1) of the configured numbers.
    """

    __slots__ = ("read", "write_by_address", "write_by_identity", "auth_failures")

    def __init__(
        self,
        read_rate: float,
        read_burst: float,
        write_rate: float,
        write_burst: float,
        *,
        workers: int = 1,
        backoff_ceiling: float = 300.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers!r}")
        self.read = RateLimiter(read_rate / workers, _share(read_burst, workers), clock=clock)
        write_burst = _share(write_burst, workers)
        self.write_by_address = RateLimiter(write_rate / workers, write_burst, clock=clock)
        self.write_by_identity = RateLimiter(write_rate / workers, write_burst, clock=clock)
        self.auth_failures = FailureBackoff(ceiling=backoff_ceiling, clock=clock)

    def adopt(self, other: Limits) -> None:
        """Take over ``other``'s limits in place (a reload): buckets start full again."""
        self.read = other.read
        self.write_by_address = other.write_by_address
        self.write_by_identity = other.write_by_identity
        self.auth_failures = other.auth_failures

    def check_read(self, address: str) -> float:
        """Count a read from ``address``: 0.0 when allowed, else seconds to wait."""
        return self.read.take(address)

    def check_write(self, address: str, identity: str | None) -> float:
        """Count a write: 0.0 when both ``address`` and ``identity`` allow it, else the wait.

        The wait is the larger of the two; when refused nothing is consumed from either.
        """
        if identity is None:
            return self.write_by_address.take(address)
        wait = max(self.write_by_address.peek(address), self.write_by_identity.peek(identity))
        if wait > 0.0:
            return wait
        self.write_by_address.take(address)
        self.write_by_identity.take(identity)
        return 0.0


def retry_after(wait: float) -> str:
    """The ``Retry-After`` header value for ``wait`` seconds: whole seconds, rounded up, >= 1."""
    return str(max(1, math.ceil(wait)))
