"""Per-endpoint circuit breaker and retry backoff.

Both are pure: every decision takes the current time as an argument, so the gateway passes its own
monotonic clock and tests drive transitions with plain numbers.

    closed ──N consecutive failures (or error rate over a window)──▶ open
    open ──cooldown elapsed──▶ half-open
    half-open ──probe succeeds──▶ closed (cooldown back to its base)
    half-open ──probe fails──▶ open (cooldown doubled, up to a cap)
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    cooldown_s: float = 10.0
    max_cooldown_s: float = 120.0
    half_open_probes: int = 1
    # Error-rate tripping is off unless a threshold is set: consecutive failures alone catch a dead
    # endpoint, the rate catches a flaky one whose failures interleave with successes.
    error_rate_threshold: float | None = None
    error_rate_window_s: float = 30.0
    # Below this many outcomes in the window a rate is noise (1 failure of 2 is not "50% errors").
    error_rate_min_requests: int = 20


@dataclass
class CircuitBreaker:
    """One endpoint's breaker. Every request that `allow` admits must be reported exactly once
    through `on_success` or `on_failure`; otherwise a half-open probe slot stays taken."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    _state: BreakerState = BreakerState.CLOSED
    _consecutive_failures: int = 0
    _opened_at: float = 0.0
    _cooldown_s: float = field(init=False)
    _probes_in_flight: int = 0
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._cooldown_s = self.config.cooldown_s

    def state(self, now: float) -> BreakerState:
        # Open turns half-open lazily, on the first look after the cooldown: no timers needed.
        if self._state is BreakerState.OPEN and now >= self._opened_at + self._cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._probes_in_flight = 0
        return self._state

    def retry_after(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state(now) is not BreakerState.OPEN:
            return 0.0
        return self._opened_at + self._cooldown_s - now

    def allow(self, now: float) -> bool:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_in_flight < self.config.half_open_probes:
            self._probes_in_flight += 1
            return True
        return False

    def on_success(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._close()
        elif state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._record(now, ok=True)
        # Open: a late answer to a request admitted before the trip says nothing about recovery.

    def on_failure(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._open(now, cooldown_s=min(self._cooldown_s * 2, self.config.max_cooldown_s))
        elif state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._record(now, ok=False)
            if self._consecutive_failures >= self.config.failure_threshold or self._error_rate_exceeded():
                self._open(now, cooldown_s=self.config.cooldown_s)

    def _open(self, now: float, cooldown_s: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._cooldown_s = cooldown_s
        self._probes_in_flight = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._cooldown_s = self.config.cooldown_s
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        # Outcomes from before the outage would re-trip the rate check on the first new failure.
        self._outcomes.clear()

    def _record(self, now: float, ok: bool) -> None:
        if self.config.error_rate_threshold is None:
            return
        self._outcomes.append((now, ok))
        horizon = now - self.config.error_rate_window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _error_rate_exceeded(self) -> bool:
        threshold = self.config.error_rate_threshold
        if threshold is None or len(self._outcomes) < self.config.error_rate_min_requests:
            return False
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return failures / len(self._outcomes) >= threshold


def backoff_delay(
    attempt: int, base: float = 0.1, cap: float = 2.0, rng: random.Random | None = None
) -> float:
    """Delay before retry number `attempt` (0 for the first retry), with "full jitter":

        delay = uniform(0, min(cap, base * 2**attempt))

    Spreading retries over the whole interval, rather than around its end, keeps replicas that
    failed together from retrying together (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # min() before the power would overflow floats for large attempts; clamp the exponent instead.
    ceiling = min(cap, base * 2 ** min(attempt, 64))
    return (rng or random).uniform(0.0, ceiling)
