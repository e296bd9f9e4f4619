"""Token buckets, failure back-off and the per-worker split, on a fake clock."""

from __future__ import annotations

import pytest

from resolver.limits import FailureBackoff, Limits, RateLimiter, retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# RateLimiter


def test_burst_then_refusal_with_the_wait(clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, 3.0, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    # Refusing consumed nothing: the wait is the same when asked again.
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.2
    assert limiter.take("a") == pytest.approx(0.3)
    clock.now += 0.2  # the refill seen by the refused take is kept, not lost
    assert limiter.take("a") == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.take("a") == 0.0


def test_refill_over_time_is_capped_at_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, 3.0, clock=clock)
    for _ in range(3):
        limiter.take("a")
    clock.now += 0.5  # one token
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 1.0  # two tokens
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0.0
    clock.now += 3600.0  # an hour refills to burst, not beyond
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)


def test_cost_above_one(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 5.0, clock=clock)
    assert limiter.take("a", 4.0) == 0.0
    assert limiter.take("a", 3.0) == pytest.approx(2.0)  # one token left, two missing
    assert limiter.take("a", 1.0) == 0.0  # the refused take consumed nothing
    clock.now += 3.0
    assert limiter.take("a", 3.0) == 0.0
    with pytest.raises(ValueError):
        limiter.take("a", 6.0)  # more than burst could never be allowed


def test_peek_consumes_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1.0, clock=clock)
    assert limiter.peek("a") == 0.0
    assert "a" not in limiter
    assert limiter.take("a") == 0.0
    assert limiter.peek("a") == pytest.approx(1.0)
    clock.now += 0.25
    assert limiter.peek("a") == pytest.approx(0.75)
    clock.now += 0.75
    assert limiter.peek("a") == 0.0
    assert limiter.take("a") == 0.0


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_unlimited_keeps_no_state(clock: FakeClock, rate: float) -> None:
    limiter = RateLimiter(rate, 1.0, clock=clock)
    assert limiter.unlimited
    assert all(limiter.take(f"k{i % 3}", 50.0) == 0.0 for i in range(1000))
    assert len(limiter) == 0


def test_keys_are_isolated(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 2.0, clock=clock)
    assert limiter.take("a", 2.0) == 0.0
    assert limiter.take("a") > 0.0
    assert limiter.take("b") == 0.0
    assert limiter.take("b") == 0.0
    assert limiter.take("b") > 0.0


def test_memory_is_bounded(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1.0, max_keys=5, clock=clock)
    for i in range(100):
        assert limiter.take(f"k{i}") == 0.0
        assert len(limiter) <= 5
    assert len(limiter) == 5
    assert "k99" in limiter


def test_eviction_prefers_idle_buckets_to_the_least_recently_used(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 2.0, max_keys=2, clock=clock)
    limiter.take("drained", 2.0)  # least recently used
    limiter.take("idle", 1.0)
    clock.now += 1.0  # "idle" is full again, "drained" holds one token
    limiter.take("new")
    assert "idle" not in limiter
    assert "drained" in limiter
    assert limiter.take("drained", 2.0) == pytest.approx(1.0)  # its state was kept


def test_eviction_falls_back_to_least_recently_used(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 2.0, max_keys=2, clock=clock)
    limiter.take("a", 2.0)
    limiter.take("b", 2.0)
    assert limiter.take("a") > 0.0  # a refused take still counts as use: "b" is now LRU
    limiter.take("c", 2.0)
    assert "b" not in limiter
    assert "a" in limiter and "c" in limiter
    assert limiter.take("a") > 0.0  # still drained: not evicted


def test_eviction_drops_every_idle_bucket_it_sees(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1.0, max_keys=4, clock=clock)
    for key in "abcd":
        limiter.take(key)
    clock.now += 10.0
    limiter.take("e")
    assert len(limiter) == 1
    assert "e" in limiter


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0.0)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 1.0, max_keys=0)


# FailureBackoff


def test_backoff_sequence_is_free_then_grows_to_the_ceiling(clock: FakeClock) -> None:
    backoff = FailureBackoff(base=1.0, factor=3.0, ceiling=20.0, forget_after=100.0, clock=clock)
    assert backoff.blocked_for("u") == 0.0
    assert [backoff.failed("u") for _ in range(6)] == [0.0, 1.0, 3.0, 9.0, 20.0, 20.0]
    assert backoff.blocked_for("u") == 20.0
    assert backoff.blocked_for("other") == 0.0


def test_blocked_for_counts_down(clock: FakeClock) -> None:
    backoff = FailureBackoff(base=2.0, factor=2.0, ceiling=60.0, forget_after=100.0, clock=clock)
    assert backoff.failed("u") == 0.0
    assert backoff.blocked_for("u") == 0.0  # one mistake is free
    assert backoff.failed("u") == 2.0
    assert backoff.failed("u") == 4.0
    clock.now += 1.5
    assert backoff.blocked_for("u") == pytest.approx(2.5)
    clock.now += 2.5
    assert backoff.blocked_for("u") == 0.0
    assert backoff.failed("u") == 8.0  # still remembered once the wait is over


def test_forget_after_resets(clock: FakeClock) -> None:
    backoff = FailureBackoff(base=1.0, factor=2.0, ceiling=300.0, forget_after=50.0, clock=clock)
    for _ in range(4):
        backoff.failed("u")
    clock.now += 49.0
    assert backoff.failed("u") == 8.0  # within forget_after of the last failure
    clock.now += 50.0
    assert backoff.blocked_for("u") == 0.0
    assert "u" not in backoff
    assert backoff.failed("u") == 0.0
    assert backoff.failed("u") == 1.0


def test_forget_after_resets_without_blocked_for(clock: FakeClock) -> None:
    backoff = FailureBackoff(base=1.0, factor=2.0, ceiling=300.0, forget_after=50.0, clock=clock)
    for _ in range(4):
        backoff.failed("u")
    clock.now += 50.0
    assert backoff.failed("u") == 0.0
    assert backoff.failed("u") == 1.0


def test_succeeded_resets(clock: FakeClock) -> None:
    backoff = FailureBackoff(base=1.0, factor=2.0, clock=clock)
    for _ in range(3):
        backoff.failed("u")
    assert backoff.blocked_for("u") == 2.0
    backoff.succeeded("u")
    assert backoff.blocked_for("u") == 0.0
    assert backoff.failed("u") == 0.0
    assert backoff.failed("u") == 1.0
    backoff.succeeded("never-failed")  # no error


def test_backoff_memory_is_bounded_and_forgotten_keys_go_first(clock: FakeClock) -> None:
    backoff = FailureBackoff(forget_after=10.0, max_keys=3, clock=clock)
    backoff.failed("old1")
    backoff.failed("old2")
    clock.now += 5.0
    backoff.failed("recent")
    backoff.failed("recent")
    clock.now += 6.0  # old1 and old2 are forgotten, recent is not
    backoff.failed("new")
    assert len(backoff) == 2
    assert "old1" not in backoff and "old2" not in backoff
    assert "recent" in backoff and "new" in backoff
    for i in range(50):
        backoff.failed(f"k{i}")
        assert len(backoff) <= 3
    assert "k49" in backoff and "recent" not in backoff


def test_backoff_evicts_the_oldest_failure_when_none_is_forgotten(clock: FakeClock) -> None:
    backoff = FailureBackoff(forget_after=1000.0, max_keys=2, clock=clock)
    backoff.failed("a")
    clock.now += 1.0
    backoff.failed("b")
    clock.now += 1.0
    backoff.failed("a")  # "a" failed again: "b" is now the oldest failure
    backoff.failed("c")
    assert "b" not in backoff
    assert "a" in backoff and "c" in backoff
    assert backoff.blocked_for("a") > 0.0


# Limits


def test_limits_split_rate_and_burst_across_workers(clock: FakeClock) -> None:
    limits = Limits(10.0, 20.0, 4.0, 2.0, workers=4, clock=clock)
    assert limits.read.rate == 2.5 and limits.read.burst == 5.0
    assert [limits.check_read("1.2.3.4") for _ in range(5)] == [0.0] * 5
    assert limits.check_read("1.2.3.4") == pytest.approx(0.4)  # one token at 2.5/s
    # write burst 2 / 4 workers is floored at 1
    assert limits.write_by_address.burst == 1.0
    assert limits.check_write("1.2.3.4", None) == 0.0
    assert limits.check_write("1.2.3.4", None) == pytest.approx(1.0)


def test_limits_unlimited_stays_unlimited_when_split(clock: FakeClock) -> None:
    limits = Limits(0.0, 0.0, 0.0, 0.0, workers=8, clock=clock)
    assert all(limits.check_read("a") == 0.0 for _ in range(100))
    assert all(limits.check_write("a", "u") == 0.0 for _ in range(100))
    with pytest.raises(ValueError):
        Limits(1.0, 1.0, 1.0, 1.0, workers=0)


def test_reads_and_writes_use_separate_buckets(clock: FakeClock) -> None:
    limits = Limits(1.0, 1.0, 1.0, 1.0, clock=clock)
    assert limits.check_read("a") == 0.0
    assert limits.check_read("a") > 0.0
    assert limits.check_write("a", None) == 0.0


def test_write_refused_by_identity_consumes_nothing_from_address(clock: FakeClock) -> None:
    limits = Limits(100.0, 100.0, 1.0, 2.0, clock=clock)
    assert limits.check_write("10.0.0.1", "alice") == 0.0
    assert limits.check_write("10.0.0.2", "alice") == 0.0
    # "alice" is empty although 10.0.0.3 is full
    assert limits.check_write("10.0.0.3", "alice") == pytest.approx(1.0)
    assert limits.check_write("10.0.0.3", "alice") == pytest.approx(1.0)
    # 10.0.0.3 still holds its whole burst of two
    assert limits.check_write("10.0.0.3", None) == 0.0
    assert limits.check_write("10.0.0.3", None) == 0.0
    assert limits.check_write("10.0.0.3", None) > 0.0


def test_write_refused_by_address_consumes_nothing_from_identity(clock: FakeClock) -> None:
    limits = Limits(100.0, 100.0, 1.0, 2.0, clock=clock)
    assert limits.check_write("10.0.0.1", None) == 0.0
    assert limits.check_write("10.0.0.1", None) == 0.0
    assert limits.check_write("10.0.0.1", "bob") == pytest.approx(1.0)
    assert limits.check_write("10.0.0.2", "bob") == 0.0
    assert limits.check_write("10.0.0.3", "bob") == 0.0
    assert limits.check_write("10.0.0.4", "bob") > 0.0


def test_write_wait_is_the_larger_of_the_two(clock: FakeClock) -> None:
    limits = Limits(100.0, 100.0, 1.0, 4.0, clock=clock)
    for n in range(4):
        limits.check_write(f"other{n}", "u")  # u: 0 tokens
    for _ in range(4):
        limits.check_write("B", None)  # B: 0 tokens
    clock.now += 0.5  # u and B: 0.5 tokens each
    for _ in range(4):
        limits.check_write("A", None)  # A: 0 tokens
    for n in range(4):
        limits.check_write(f"more{n}", "v")  # v: 0 tokens
    assert limits.check_write("A", "u") == pytest.approx(1.0)  # the address's wait
    assert limits.check_write("B", "v") == pytest.approx(1.0)  # the identity's wait
    assert limits.check_write("B", "u") == pytest.approx(0.5)


def test_limits_auth_failures_use_the_clock(clock: FakeClock) -> None:
    limits = Limits(1.0, 1.0, 1.0, 1.0, clock=clock)
    assert limits.auth_failures.failed("u") == 0.0
    assert limits.auth_failures.failed("u") == 1.0
    clock.now += 0.25
    assert limits.auth_failures.blocked_for("u") == pytest.approx(0.75)


# retry_after


@pytest.mark.parametrize(
    ("wait", "header"),
    [(0.0, "1"), (1e-9, "1"), (0.4, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3"), (299.2, "300")],
)
def test_retry_after_rounds_up_to_at_least_one(wait: float, header: str) -> None:
    assert retry_after(wait) == header
