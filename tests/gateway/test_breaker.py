import random

import pytest

from tideserve.gateway.breaker import BreakerConfig, BreakerState, CircuitBreaker, backoff_delay

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def drive(breaker: CircuitBreaker, steps: str) -> None:
    """Steps like "f@1 s@2 a@3": f=failure, s=success, a=allow (asserted true), d=allow (asserted false)."""
    for step in steps.split():
        op, at = step.split("@")
        now = float(at)
        if op == "f":
            breaker.on_failure(now)
        elif op == "s":
            breaker.on_success(now)
        elif op == "a":
            assert breaker.allow(now), step
        elif op == "d":
            assert not breaker.allow(now), step


@pytest.mark.parametrize(
    ("steps", "now", "expected"),
    [
        ("", 0, CLOSED),
        # Below the threshold it stays closed; a success resets the consecutive count.
        ("f@0 f@0 f@0 f@0", 1, CLOSED),
        ("f@0 f@0 f@0 f@0 s@0 f@0 f@0 f@0 f@0", 1, CLOSED),
        # Fifth consecutive failure opens it, for the 10 s cooldown.
        ("f@0 f@0 f@0 f@0 f@0", 0, OPEN),
        ("f@0 f@0 f@0 f@0 f@0", 9.99, OPEN),
        ("f@0 f@0 f@0 f@0 f@0", 10, HALF),
        # While open, late results of earlier requests change nothing.
        ("f@0 f@0 f@0 f@0 f@0 s@5", 5, OPEN),
        ("f@0 f@0 f@0 f@0 f@0 f@5", 9.99, OPEN),
        # Half-open: a probe success closes it, a probe failure re-opens with a doubled cooldown.
        ("f@0 f@0 f@0 f@0 f@0 a@10 s@11", 11, CLOSED),
        ("f@0 f@0 f@0 f@0 f@0 a@10 f@11", 11, OPEN),
        ("f@0 f@0 f@0 f@0 f@0 a@10 f@11", 30.99, OPEN),
        ("f@0 f@0 f@0 f@0 f@0 a@10 f@11", 31, HALF),
        # After closing, one failure does not re-open it.
        ("f@0 f@0 f@0 f@0 f@0 a@10 s@11 f@12", 12, CLOSED),
    ],
)
def test_transitions(steps: str, now: float, expected: BreakerState) -> None:
    breaker = CircuitBreaker()
    drive(breaker, steps)
    assert breaker.state(now) is expected


def test_allow_by_state() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1))
    assert breaker.allow(0)
    breaker.on_failure(0)
    assert not breaker.allow(5)
    assert breaker.retry_after(5) == pytest.approx(5)
    # Half-open admits exactly one probe by default; the rest wait for its outcome.
    drive(breaker, "a@10 d@10 d@11")
    assert breaker.retry_after(11) == 0


def test_half_open_probe_limit() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, half_open_probes=3))
    drive(breaker, "f@0 a@10 a@10 a@10 d@10")
    # One probe failing re-opens it even while the others are out; their later success is ignored.
    drive(breaker, "f@11 s@12 d@12")
    assert breaker.state(12) is OPEN


def test_cooldown_doubles_up_to_cap_and_resets_on_close() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, cooldown_s=10, max_cooldown_s=60))
    breaker.on_failure(0)
    now, cooldowns = 0.0, []
    for _ in range(5):
        opened = now
        while breaker.state(now) is OPEN:
            now += 1
        cooldowns.append(now - opened)
        assert breaker.allow(now)
        breaker.on_failure(now)
    assert cooldowns == [10, 20, 40, 60, 60]
    # Recovery forgets the backoff: the next outage starts from the base cooldown again.
    now += 60
    drive(breaker, f"a@{now} s@{now} f@{now}")
    assert breaker.state(now + 9.99) is OPEN
    assert breaker.state(now + 10) is HALF


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        # 10 of 20 failed, never 5 in a row: the rate trips it.
        ("sf" * 10, OPEN),
        # Same rate but below the minimum count: not enough evidence.
        ("sf" * 9, CLOSED),
        # 4 of 20 failed: under the 50% threshold.
        ("fssss" * 4, CLOSED),
    ],
)
def test_error_rate(outcomes: str, expected: BreakerState) -> None:
    breaker = CircuitBreaker(BreakerConfig(error_rate_threshold=0.5, error_rate_min_requests=20))
    for i, outcome in enumerate(outcomes):
        (breaker.on_failure if outcome == "f" else breaker.on_success)(i * 0.1)
    assert breaker.state(len(outcomes) * 0.1) is expected


def test_error_rate_window_forgets_old_outcomes() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(error_rate_threshold=0.5, error_rate_window_s=10, error_rate_min_requests=4)
    )
    drive(breaker, "f@0 f@0 s@0")
    # The early failures fall out of the window, so 1 failure of 4 recent outcomes does not trip it.
    drive(breaker, "s@20 s@20 s@20 f@20")
    assert breaker.state(20) is CLOSED


def test_backoff_delay_full_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (4, 1.6), (5, 2.0), (1000, 2.0)]:
        delays = [backoff_delay(attempt, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole interval, not just near its top.
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9
    assert backoff_delay(3, base=1, cap=100, rng=random.Random(1)) <= 8
    with pytest.raises(ValueError):
        backoff_delay(-1)
