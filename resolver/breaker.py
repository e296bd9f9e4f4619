"""A circuit breaker per upstream node, and the back-off between retries.

The breaker is closed while the upstream answers; after ``threshold``
consecutive failures it opens and every request fails at once (no timeout
paid) for ``reset_after`` seconds; then it is half-open: one trial request
goes through, and its outcome closes or re-opens it. The clock is injected so
tests step through the timeline without sleeping.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

Clock = Callable[[], float]


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Closed, open or half-open, from the outcomes of the requests it allowed."""

    def __init__(
        self, *, threshold: int = 5, reset_after: float = 30.0, clock: Clock = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.clock = clock
        self.failures = 0
        self.opened_at = 0.0
        self._state = State.CLOSED
        self._trial = False

    @property
    def state(self) -> State:
        """The state now (an open breaker whose wait is over reads as half-open)."""
        if self._state is State.OPEN and self.clock() - self.opened_at >= self.reset_after:
            return State.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a request may be sent now; half-open allows one trial at a time."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN or self._trial:
            return False
        self._state, self._trial = State.HALF_OPEN, True
        return True

    def success(self) -> None:
        self._state, self._trial, self.failures = State.CLOSED, False, 0

    def failure(self) -> None:
        self.failures += 1
        if self._state is State.HALF_OPEN or self.failures >= self.threshold:
            self._state, self._trial, self.opened_at = State.OPEN, False, self.clock()


def backoff(
    attempt: int, *, base: float = 0.05, cap: float = 1.0, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential with full jitter."""
    return float(rand() * min(cap, base * 2.0**attempt))
