"""Table tests of the autoscaling decision. Every expected count is worked out by hand from the HPA v2
algorithm in the row's comment (ratio = observed / target; proposal = ceil(ratio × instances counted))."""

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tideserve.autoscaler.decide import (
    Decision,
    History,
    InstanceSample,
    MetricStatus,
    Observation,
    Recommendation,
    ScaleEvent,
    decide,
)
from tideserve.autoscaler.policy import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Autoscaling,
    Behavior,
    RatePolicy,
    Schedule,
    Target,
)

T = 1_800_000_000.0  # now, unless a row says otherwise

W = Target("waiting_per_replica", 4)
RUN = Target("running_per_replica", 8)
KV = Target("kv_cache_usage", 0.8)
GPU = Target("gpu_utilization", 0.6)
TTFT = Target("ttft_p90", 2)
RPS = Target("requests_per_s", 5)

# No stabilization, HPA's default rates: a single decision shows the metric rules alone.
UP0 = Behavior(0, DEFAULT_SCALE_UP.policies)
DOWN0 = Behavior(0, DEFAULT_SCALE_DOWN.policies)


def at(zone: str, text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


WEEKDAYS = Schedule("0 8 * * 1-5", "0 20 * * 1-5", "Asia/Shanghai", 4, prewarm_s=300)
MONDAY_9 = at("Asia/Shanghai", "2026-03-02 09:00")
SATURDAY_9 = at("Asia/Shanghai", "2026-03-07 09:00")
MONDAY_7_56 = at("Asia/Shanghai", "2026-03-02 07:56")

_SHORT = {"running": "running_per_replica", "kv": "kv_cache_usage", "gpu": "gpu_utilization"}


def policy(
    *targets: Target,
    lo: int = 1,
    hi: int = 20,
    up: Behavior = UP0,
    down: Behavior = DOWN0,
    **more: Any,
) -> Autoscaling:
    return Autoscaling(lo, hi, targets or (W,), up, down, **more)


def inst(
    waiting: float | None = None, *, ready: bool = True, age: float = 600, now: float = T, **values: float
) -> InstanceSample:
    """An instance started `age` seconds before `now`."""
    named: dict[Any, float] = {_SHORT[k]: v for k, v in values.items()}
    if waiting is not None:
        named["waiting_per_replica"] = waiting
    return InstanceSample(ready, now - age, named)


def obs(
    current: int,
    *instances: InstanceSample,
    now: float = T,
    queued: int = 0,
    last: float | None = T,
    ttft: float | None = None,
    rps: float | None = None,
) -> Observation:
    service: dict[Any, float] = {}
    if ttft is not None:
        service["ttft_p90"] = ttft
    if rps is not None:
        service["requests_per_s"] = rps
    return Observation(now, current, instances, service, queued, last)


def many(n: int, *args: Any, **kwargs: Any) -> list[InstanceSample]:
    return [inst(*args, **kwargs) for _ in range(n)]


def row(p: Autoscaling, o: Observation, replicas: int, reason: str, id: str) -> Any:
    return pytest.param(p, o, replicas, reason, id=id)


def check(p: Autoscaling, o: Observation, replicas: int, reason: str, history: History | None = None) -> None:
    decision, _ = decide(o, p, history or History())
    assert (decision.replicas, decision.reason) == (replicas, reason)


# --- the metric rules ----------------------------------------------------------------------------

METRIC_ROWS = [
    # tolerance: |ratio - 1| ≤ 0.1 keeps the count, both ends included
    row(
        policy(),
        obs(2, inst(4.2), inst(4.2)),
        2,
        "no change: within tolerance (waiting/replica ratio 1.05)",
        "tol",
    ),
    row(
        policy(),
        obs(2, inst(4.4), inst(4.4)),
        2,
        "no change: within tolerance (waiting/replica ratio 1.1)",
        "tol-hi",
    ),
    row(
        policy(),
        obs(2, inst(3.6), inst(3.6)),
        2,
        "no change: within tolerance (waiting/replica ratio 0.9)",
        "tol-lo",
    ),
    # 4.5/4 = 1.125 → ceil(1.125 × 2) = 3
    row(policy(), obs(2, inst(4.5), inst(4.5)), 3, "2→3: waiting/replica 4.5 > target 4", "tol-out"),
    # 4.2/4 = 1.05 → ceil(2.1) = 3 once the band is 0
    row(policy(tolerance=0), obs(2, inst(4.2), inst(4.2)), 3, "2→3: waiting/replica 4.2 > target 4", "tol-0"),
    # (9 + 10)/2 = 9.5; 9.5/4 = 2.375 → ceil(4.75) = 5
    row(policy(), obs(2, inst(9), inst(10)), 5, "2→5: waiting/replica 9.5 > target 4", "waiting-up"),
    # 1/4 → ceil(0.25 × 4) = 1
    row(policy(), obs(4, *many(4, 1)), 1, "4→1: waiting/replica 1 < target 4", "waiting-down"),
    # 12/8 = 1.5 → ceil(4.5) = 5
    row(policy(RUN), obs(3, *many(3, running=12)), 5, "3→5: running/replica 12 > target 8", "running"),
    # (0.95 + 0.97)/2 = 0.96; 0.96/0.8 = 1.2 → ceil(2.4) = 3
    row(policy(KV), obs(2, inst(kv=0.95), inst(kv=0.97)), 3, "2→3: KV cache use 96% > target 80%", "kv"),
    # 0.3/0.6 = 0.5 → ceil(2.5) = 3
    row(policy(GPU), obs(5, *many(5, gpu=0.3)), 3, "5→3: GPU utilization 30% < target 60%", "gpu"),
    # 0.4/0.6 × 3 = 2 exactly (2.0000000000000004 in floats, which must not start a third)
    row(policy(GPU), obs(3, *many(3, gpu=0.4)), 2, "3→2: GPU utilization 40% < target 60%", "gpu-exact"),
    # TTFT, HPA's Object/Value rule: 3.1/2 = 1.55 → ceil(1.55 × 3 ready) = 5
    row(policy(TTFT), obs(3, *many(3), ttft=3.1), 5, "3→5: TTFT p90 3.1 s > target 2 s", "ttft-up"),
    # 1/2 → ceil(0.5 × 4) = 2
    row(policy(TTFT), obs(4, *many(4), ttft=1), 2, "4→2: TTFT p90 1 s < target 2 s", "ttft-down"),
    # ready instances only: 4/2 = 2 → ceil(2 × 3) = 6, not 2 × 4 = 8
    row(
        policy(TTFT),
        obs(4, *many(3), inst(ready=False), ttft=4),
        6,
        "4→6: TTFT p90 4 s > target 2 s",
        "ttft-ready",
    ),
    # 3/2 = 1.5 × 2 ready = 3 < 4: a breached SLO must not scale down
    row(
        policy(TTFT),
        obs(4, *many(2), *many(2, ready=False), ttft=3),
        4,
        "no change: direction unclear (TTFT p90 ratio 1.5 × 2 ready proposes 3)",
        "ttft-starting",
    ),
    row(
        policy(TTFT),
        obs(2, *many(2, ready=False), ttft=5),
        2,
        "no change: no metrics (TTFT p90: no ready instance)",
        "ttft-none-ready",
    ),
    # No requests (gateway 0/s): no TTFT to act on, 0 → ceil(0) = 0 → minReplicas
    row(
        policy(TTFT),
        obs(3, *many(3), rps=0),
        1,
        "3→1: TTFT p90 0 s < target 2 s proposes 0; minReplicas is 1",
        "ttft-no-traffic",
    ),
    row(policy(TTFT), obs(3, *many(3)), 3, "no change: no metrics (TTFT p90: no data)", "ttft-no-data"),
    # requests/s, HPA's Object/AverageValue rule: 23/2 = 11.5 per replica; ceil(23/5) = 5
    row(policy(RPS), obs(2, rps=23), 5, "2→5: requests/s/replica 11.5 > target 5", "rps-up"),
    row(
        policy(RPS),
        obs(2, rps=10.5),
        2,
        "no change: within tolerance (requests/s/replica ratio 1.05)",
        "rps-tol",
    ),
    # 9/6 = 1.5 per replica; ceil(9/5) = 2
    row(policy(RPS), obs(6, rps=9), 2, "6→2: requests/s/replica 1.5 < target 5", "rps-down"),
    row(
        policy(RPS),
        obs(2),
        2,
        "no change: no metrics (requests/s/replica: no data from the gateway)",
        "rps-none",
    ),
    # the largest proposal wins: waiting 10/4 → 5, KV 1/0.8 → ceil(2.5) = 3
    row(policy(W, KV), obs(2, *many(2, 10, kv=1.0)), 5, "2→5: waiting/replica 10 > target 4", "max-waiting"),
    # a tie goes to the first target: both 1.25 → ceil(2.5) = 3
    row(policy(W, KV), obs(2, *many(2, 5, kv=1.0)), 3, "2→3: waiting/replica 5 > target 4", "max-tie"),
    # waiting 4.6/4 = 1.15 → 3, KV 1/0.5 = 2 → 4
    row(
        policy(W, Target("kv_cache_usage", 0.5)),
        obs(2, *many(2, 4.6, kv=1.0)),
        4,
        "2→4: KV cache use 100% > target 50%",
        "max-kv",
    ),
    # waiting says 1, KV is on target: scale down only when every metric agrees
    row(
        policy(W, KV),
        obs(4, *many(4, 1, kv=0.8)),
        4,
        "no change: within tolerance (KV cache use ratio 1)",
        "max-no-down",
    ),
]


@pytest.mark.parametrize(("p", "o", "replicas", "reason"), METRIC_ROWS)
def test_metric_rules(p: Autoscaling, o: Observation, replicas: int, reason: str) -> None:
    check(p, o, replicas, reason)


MISSING_UNREADY_ROWS = [
    # down: the one without data counts at target: (1 + 1 + 4)/3 = 2 → 0.5 → ceil(1.5) = 2 (not 1)
    row(policy(), obs(3, inst(1), inst(1), inst()), 2, "3→2: waiting/replica 1 < target 4", "missing-down"),
    # down: 3.4/4 = 0.85, with the missing at target (3.4 + 4)/2 = 3.7 → 0.925: within tolerance
    row(
        policy(),
        obs(2, inst(3.4), inst()),
        2,
        "no change: within tolerance (waiting/replica ratio 0.85, 0.93 counting 1 without data at target)",
        "missing-down-tol",
    ),
    # up: the one without data counts at 0: 4.8/4 = 1.2, then 2.4/4 = 0.6 reverses the direction
    row(
        policy(),
        obs(2, inst(4.8), inst()),
        2,
        "no change: direction unclear (waiting/replica ratio 1.2, 0.6 counting 1 without data at 0)",
        "missing-up-reverses",
    ),
    # up: (8 + 8 + 0)/3 = 5.33 → 1.33 → ceil(1.33 × 3) = 4
    row(policy(), obs(3, inst(8), inst(8), inst()), 4, "3→4: waiting/replica 8 > target 4", "missing-up"),
    # up: starting ones count at 0: (5 + 5 + 0 + 0)/4 = 2.5 → 0.625 reverses (without: ceil(1.25 × 2) = 3 < 4)
    row(
        policy(),
        obs(4, inst(5), inst(5), *many(2, ready=False)),
        4,
        "no change: direction unclear (waiting/replica ratio 1.25, 0.62 counting 2 starting at 0)",
        "unready-up-reverses",
    ),
    # up: (10 + 10 + 0)/3 = 6.67 → 1.67 → ceil(5) = 5
    row(
        policy(),
        obs(3, inst(10), inst(10), inst(ready=False)),
        5,
        "3→5: waiting/replica 10 > target 4",
        "unready-up",
    ),
    # up: 12/4 = 3, counting the starting one (12 + 0)/2 = 6 → 1.5 → ceil(3) = 3 < 5: keep
    row(
        policy(),
        obs(5, inst(12), inst(ready=False)),
        5,
        "no change: direction unclear (waiting/replica ratio 3, 1.5 counting 1 starting at 0 proposes 3)",
        "unready-up-fewer",
    ),
    # down: starting ones are left out: ceil(0.25 × 2) = 1
    row(
        policy(),
        obs(4, inst(1), inst(1), *many(2, ready=False)),
        1,
        "4→1: waiting/replica 1 < target 4",
        "unready-down",
    ),
    # down: 3.8/4 = 0.95 is within tolerance; the starting one must not drag it out (to 0.63)
    row(
        policy(),
        obs(3, inst(3.8), inst(3.8), inst(ready=False)),
        3,
        "no change: within tolerance (waiting/replica ratio 0.95)",
        "unready-down-tol",
    ),
    # ready but started 10 s ago: within the start-up grace, so starting: (8 + 0)/2 = 4 → 1
    row(
        policy(),
        obs(2, inst(8), inst(8, age=10)),
        2,
        "no change: within tolerance (waiting/replica ratio 2, 1 counting 1 starting at 0)",
        "grace",
    ),
    row(
        policy(),
        obs(2, *many(2, ready=False)),
        2,
        "no change: no metrics (waiting/replica: no ready instance reports it)",
        "none-ready",
    ),
    row(
        policy(),
        obs(2),
        2,
        "no change: no metrics (waiting/replica: no ready instance reports it)",
        "no-instances",
    ),
    # a metric without data blocks scaling down (HPA), not scaling up
    row(
        policy(W, TTFT),
        obs(3, *many(3, 1)),
        3,
        "no change: not scaling down without TTFT p90: no data",
        "unavailable-down",
    ),
    # 12/4 = 3 → 9; the default rates allow max(3 × 2, 3 + 4) = 7
    row(
        policy(W, TTFT),
        obs(3, *many(3, 12)),
        7,
        "3→7: waiting/replica 12 > target 4 proposes 9; limited to 7 by behavior.scaleUp policies",
        "unavailable-up",
    ),
]


@pytest.mark.parametrize(("p", "o", "replicas", "reason"), MISSING_UNREADY_ROWS)
def test_missing_and_unready(p: Autoscaling, o: Observation, replicas: int, reason: str) -> None:
    check(p, o, replicas, reason)


def test_startup_grace_is_a_parameter() -> None:
    decision, _ = decide(obs(2, inst(8), inst(8, age=10)), policy(), History(), startup_grace_s=0)
    assert (decision.replicas, decision.reason) == (4, "2→4: waiting/replica 8 > target 4")


def test_metric_statuses() -> None:
    decision, _ = decide(obs(2, *many(2, 10, kv=1.0)), policy(W, KV), History())
    assert decision.metrics == {
        "waiting_per_replica": MetricStatus(10, 4, 5),
        "kv_cache_usage": MetricStatus(1.0, 0.8, 3),
    }
    assert decision.recommendation == 5


# --- bounds and rates ----------------------------------------------------------------------------


def pods(n: int, period: float = 15) -> RatePolicy:
    return RatePolicy("Pods", n, period)


def percent(n: int, period: float = 15) -> RatePolicy:
    return RatePolicy("Percent", n, period)


def down(*policies: RatePolicy, select: Any = "Max") -> Behavior:
    return Behavior(0, policies, select)


def up(*policies: RatePolicy, select: Any = "Max") -> Behavior:
    return Behavior(0, policies, select)


BOUND_ROWS = [
    row(policy(hi=8), obs(12, *many(12, 100)), 8, "12→8: above maxReplicas 8", "above-max"),
    row(policy(lo=3), obs(1, inst(0)), 3, "1→3: minReplicas is 3", "below-min"),
    # 20/4 → 30; the rates allow max(12, 10) = 12, the bound 8
    row(
        policy(hi=8),
        obs(6, *many(6, 20)),
        8,
        "6→8: waiting/replica 20 > target 4 proposes 30; capped at maxReplicas 8",
        "capped",
    ),
    row(
        policy(lo=3),
        obs(5, *many(5, 0)),
        3,
        "5→3: waiting/replica 0 < target 4 proposes 0; minReplicas is 3",
        "floored",
    ),
    # minReplicas 0: a metric reading 0 leaves the last replica to the idle rule
    row(
        policy(lo=0, idle_to_zero_s=600),
        obs(2, *many(2, 0), last=T - 100),
        1,
        "2→1: waiting/replica 0 < target 4 proposes 0; the last replica stays until idle for 600 s",
        "last-replica",
    ),
    row(
        policy(lo=0),
        obs(2, *many(2, 0), last=T - 100),
        1,
        "2→1: waiting/replica 0 < target 4 proposes 0; the last replica stays (no idleToZeroSeconds)",
        "last-replica-no-idle",
    ),
]


@pytest.mark.parametrize(("p", "o", "replicas", "reason"), BOUND_ROWS)
def test_bounds(p: Autoscaling, o: Observation, replicas: int, reason: str) -> None:
    check(p, o, replicas, reason)


def wanting(current: int, proposal: int) -> Observation:
    """`current` replicas whose waiting numbers propose exactly `proposal` (target 4)."""
    return obs(current, *many(current, 4 * proposal / current))


@pytest.mark.parametrize(
    ("scale_up", "scale_down", "current", "proposal", "events", "expected"),
    [
        # HPA's defaults up: max(ceil(current × 2), current + 4)
        (UP0, DOWN0, 1, 20, (), 5),
        (UP0, DOWN0, 10, 40, (), 20),
        (up(*UP0.policies, select="Min"), DOWN0, 10, 40, (), 14),
        # measured from the count at the period's start: 10 - 5 added 10 s ago = 5 → max(10, 9) = 10
        (UP0, DOWN0, 10, 40, (ScaleEvent(T - 10, 5, 10),), 10),
        # an event exactly one period old is out of it
        (UP0, DOWN0, 10, 40, (ScaleEvent(T - 15, 5, 10),), 20),
        # both directions count: 6 - 4 + 2 = 4 → max(8, 8) = 8
        (UP0, DOWN0, 6, 40, (ScaleEvent(T - 5, 4, 8), ScaleEvent(T - 3, 8, 6)), 8),
        # Percent rounds up, so any percent adds at least one: ceil(3 × 1.1) = 4
        (up(percent(10, 60)), DOWN0, 3, 10, (), 4),
        # exactly: 10 × 110% = 11 (HPA's float arithmetic makes it 11.000000000000002 → 12)
        (up(percent(10, 60)), DOWN0, 10, 40, (), 11),
        (up(pods(1, 60)), DOWN0, 3, 10, (ScaleEvent(T - 30, 2, 3),), 3),
        (up(pods(1, 60)), DOWN0, 3, 10, (ScaleEvent(T - 61, 2, 3),), 4),
        # down: Percent 50 per 60 s: 10 × 50% = 5
        (UP0, down(percent(50, 60)), 10, 1, (), 5),
        # 10 removed... from 10 to 5 30 s ago: the period started at 10, so 5 is the limit already
        (UP0, down(percent(50, 60)), 5, 1, (ScaleEvent(T - 30, 10, 5),), 5),
        (UP0, down(percent(50, 60)), 5, 1, (ScaleEvent(T - 61, 10, 5),), 2),  # floor(2.5)
        (UP0, down(percent(50, 60)), 3, 1, (), 1),  # floor(1.5): HPA truncates
        # Max picks the biggest change: min(10 - 2, 5) = 5; Min the smallest: max(8, 5) = 8
        (UP0, down(pods(2, 60), percent(50, 60)), 10, 1, (), 5),
        (UP0, down(pods(2, 60), percent(50, 60), select="Min"), 10, 1, (), 8),
        (UP0, down(pods(2, 60)), 10, 1, (ScaleEvent(T - 59, 11, 10),), 9),  # 11 - 2
        (up(pods(4), select="Disabled"), DOWN0, 2, 10, (), 2),
        (UP0, down(percent(100), select="Disabled"), 5, 1, (), 5),
    ],
)
def test_rate_policies(
    scale_up: Behavior,
    scale_down: Behavior,
    current: int,
    proposal: int,
    events: tuple[ScaleEvent, ...],
    expected: int,
) -> None:
    p = policy(hi=100, up=scale_up, down=scale_down)
    decision, _ = decide(wanting(current, proposal), p, History(events=events))
    assert decision.recommendation == proposal
    assert decision.replicas == expected


@pytest.mark.parametrize(
    ("p", "o", "events", "reason"),
    [
        (
            policy(hi=100),
            wanting(10, 40),
            (ScaleEvent(T - 10, 5, 10),),
            "no change: waiting/replica 16 > target 4 proposes 40; "
            "limited to 10 by behavior.scaleUp policies",
        ),
        (
            policy(down=down(percent(50, 60))),
            wanting(10, 1),
            (),
            "10→5: waiting/replica 0.4 < target 4 proposes 1; limited to 5 by behavior.scaleDown policies",
        ),
        (
            policy(down=down(percent(100), select="Disabled")),
            wanting(5, 1),
            (),
            "no change: waiting/replica 0.8 < target 4 proposes 1; "
            "scale-down disabled (behavior.scaleDown.selectPolicy: Disabled)",
        ),
        (
            policy(up=up(pods(4), select="Disabled")),
            wanting(2, 10),
            (),
            "no change: waiting/replica 20 > target 4 proposes 10; "
            "scale-up disabled (behavior.scaleUp.selectPolicy: Disabled)",
        ),
    ],
)
def test_rate_reasons(p: Autoscaling, o: Observation, events: tuple[ScaleEvent, ...], reason: str) -> None:
    decision, _ = decide(o, p, History(events=events))
    assert decision.reason == reason


# --- stabilization -------------------------------------------------------------------------------


def run(
    p: Autoscaling, current: int, ticks: list[tuple[float, float]], history: History | None = None
) -> list[Decision]:
    """Decide at each (time, waiting per replica), applying each decision to the next tick."""
    history = history or History()
    decisions = []
    for now, waiting in ticks:
        o = Observation(
            now, current, [InstanceSample(True, T - 3600, {"waiting_per_replica": waiting})] * current
        )
        decision, history = decide(o, p, history)
        decisions.append(decision)
        current = decision.replicas
    return decisions


def test_scale_down_waits_for_the_window_from_a_fresh_start() -> None:
    # A fresh history counts the current 4 as recommended now, so nothing goes down for 300 s even
    # though every tick proposes 1; at T+300 that first record is out of the window (strictly newer).
    ticks = [(T + s, 1) for s in (0, 60, 120, 180, 240, 300)]
    decisions = run(policy(down=DEFAULT_SCALE_DOWN), 4, ticks)
    assert [d.replicas for d in decisions] == [4, 4, 4, 4, 4, 1]
    assert decisions[0].reason == (
        "no change: stabilized, highest recommendation in the last 300 s is 4 "
        "(waiting/replica 1 < target 4 proposes 1)"
    )
    assert decisions[-1].reason == "4→1: waiting/replica 1 < target 4"


def test_scale_down_follows_the_highest_recommendation_in_the_window() -> None:
    earlier = History((Recommendation(T - 250, 4), Recommendation(T - 120, 3), Recommendation(T - 60, 2)))
    ticks = [(T, 1), (T + 50, 1), (T + 180, 1), (T + 240, 1)]
    decisions = run(policy(down=DEFAULT_SCALE_DOWN), 4, ticks, earlier)
    assert [d.replicas for d in decisions] == [4, 3, 2, 1]
    assert decisions[1].reason == (
        "4→3: stabilized, highest recommendation in the last 300 s is 3 "
        "(waiting/replica 1 < target 4 proposes 1)"
    )


def test_scale_up_follows_the_lowest_recommendation_in_the_window() -> None:
    ticks = [(T + s, 12) for s in (0, 30, 60, 90, 120)]  # 12/4 = 3 → 6 from 2
    decisions = run(policy(up=Behavior(120, DEFAULT_SCALE_UP.policies)), 2, ticks)
    assert [d.replicas for d in decisions] == [2, 2, 2, 2, 6]
    assert decisions[0].reason == (
        "no change: stabilized, lowest recommendation in the last 120 s is 2 "
        "(waiting/replica 12 > target 4 proposes 6)"
    )


def test_a_spike_inside_the_window_holds_the_count() -> None:
    spike = History((Recommendation(T - 250, 7), Recommendation(T - 100, 3)))
    p = policy(down=DEFAULT_SCALE_DOWN)
    # 3.2/4 = 0.8 → 4 < 5, but 7 was recommended 250 s ago: keep 5 (the current count, below 7)
    decision, _ = decide(wanting(5, 4), p, spike)
    assert decision.replicas == 5
    # scaling up is not held by the scale-down window
    decision, _ = decide(wanting(5, 8), p, spike)
    assert decision.replicas == 8


# --- schedules -----------------------------------------------------------------------------------

SCHEDULED = policy(schedules=(WEEKDAYS,))

SCHEDULE_ROWS = [
    row(
        SCHEDULED,
        obs(3, *many(3, 4, now=MONDAY_9), now=MONDAY_9),
        4,
        "3→4: schedule 0 8 * * 1-5 (Asia/Shanghai) keeps at least 4",
        "in",
    ),
    row(
        SCHEDULED,
        obs(1, inst(4, now=MONDAY_7_56), now=MONDAY_7_56),
        4,
        "1→4: schedule 0 8 * * 1-5 (Asia/Shanghai) keeps at least 4, "
        "pre-warming up to 300 s before it starts",
        "prewarm",
    ),
    row(
        SCHEDULED,
        obs(1, inst(4, now=SATURDAY_9), now=SATURDAY_9),
        1,
        "no change: within tolerance (waiting/replica ratio 1)",
        "out",
    ),
    # 1/4 → ceil(1.5) = 2, held at the schedule's 4
    row(
        SCHEDULED,
        obs(6, *many(6, 1, now=MONDAY_9), now=MONDAY_9),
        4,
        "6→4: waiting/replica 1 < target 4 proposes 2; schedule 0 8 * * 1-5 (Asia/Shanghai) keeps at least 4",
        "floor",
    ),
    row(
        policy(lo=0, idle_to_zero_s=600, schedules=(WEEKDAYS,)),
        obs(0, now=MONDAY_9, last=None),
        4,
        "0→4: schedule 0 8 * * 1-5 (Asia/Shanghai) keeps at least 4",
        "from-zero",
    ),
    # a schedule below minReplicas changes nothing
    row(policy(lo=5, schedules=(WEEKDAYS,)), obs(3, now=MONDAY_9), 5, "3→5: minReplicas is 5", "below-min"),
    # an idle service keeps the schedule's floor
    row(
        policy(lo=0, idle_to_zero_s=600, schedules=(WEEKDAYS,)),
        obs(4, *many(4, 0, age=7200, now=MONDAY_9), now=MONDAY_9, last=MONDAY_9 - 3600),
        4,
        "no change: waiting/replica 0 < target 4 proposes 0; "
        "schedule 0 8 * * 1-5 (Asia/Shanghai) keeps at least 4",
        "not-idle",
    ),
]


@pytest.mark.parametrize(("p", "o", "replicas", "reason"), SCHEDULE_ROWS)
def test_schedules(p: Autoscaling, o: Observation, replicas: int, reason: str) -> None:
    check(p, o, replicas, reason)


# --- scale to zero and from zero -----------------------------------------------------------------

IDLE = policy(lo=0, idle_to_zero_s=600)

ZERO_ROWS = [
    row(IDLE, obs(1, inst(0, age=3600), last=T - 600), 0, "1→0: idle 600 s", "idle"),
    row(IDLE, obs(3, *many(3, 0, age=3600), last=T - 700), 0, "3→0: idle 700 s", "idle-from-3"),
    # never a request: idle since the first instance started
    row(IDLE, obs(1, inst(0, age=700), last=None), 0, "1→0: idle 700 s", "idle-never-used"),
    # a request that arrived long ago and still runs is not idleness
    row(
        IDLE,
        obs(1, inst(0, running=1, age=3600), last=T - 3600),
        1,
        "no change: waiting/replica 0 < target 4 proposes 0; the last replica stays until idle for 600 s",
        "in-flight",
    ),
    row(
        IDLE,
        obs(1, inst(0, age=3600), last=T - 599),
        1,
        "no change: waiting/replica 0 < target 4 proposes 0; the last replica stays until idle for 600 s",
        "not-yet",
    ),
    row(
        IDLE,
        obs(1, last=None),
        1,
        "no change: no metrics (waiting/replica: no ready instance reports it)",
        "unknown",
    ),
    row(
        policy(lo=1, idle_to_zero_s=600),
        obs(1, inst(0, age=3600), last=T - 3600),
        1,
        "no change: waiting/replica 0 < target 4 proposes 0; minReplicas is 1",
        "min-1",
    ),
    row(IDLE, obs(0, queued=3), 1, "0→1: 3 requests waiting at the gateway", "wake"),
    row(IDLE, obs(0, queued=1), 1, "0→1: 1 request waiting at the gateway", "wake-1"),
    # a replica holds 4 waiting at target: ceil(10/4) = 3
    row(
        IDLE,
        obs(0, queued=10),
        3,
        "0→3: 10 requests waiting at the gateway (4 per replica at target)",
        "wake-3",
    ),
    # waiting 4 + running 8 = 12 per replica: one takes 10
    row(
        policy(W, RUN, lo=0), obs(0, queued=10), 1, "0→1: 10 requests waiting at the gateway", "wake-capacity"
    ),
    row(
        policy(lo=0, hi=5),
        obs(0, queued=100),
        5,
        "0→5: 100 requests waiting at the gateway (4 per replica at target); capped at maxReplicas 5",
        "wake-capped",
    ),
    # no request-count target: start one, the metrics take it from there
    row(policy(KV, lo=0), obs(0, queued=50), 1, "0→1: 50 requests waiting at the gateway", "wake-kv"),
    row(IDLE, obs(0), 0, "no change: scaled to zero, no requests waiting", "asleep"),
    row(policy(lo=2), obs(0), 2, "0→2: minReplicas is 2", "zero-below-min"),
]


@pytest.mark.parametrize(("p", "o", "replicas", "reason"), ZERO_ROWS)
def test_zero(p: Autoscaling, o: Observation, replicas: int, reason: str) -> None:
    check(p, o, replicas, reason)


def test_from_zero_skips_stabilization_and_rates() -> None:
    # HPA's rates would allow 4 from 0 and the window would hold the recent 0: the queue is real demand.
    history = History((Recommendation(T - 10, 0),), (ScaleEvent(T - 5, 1, 0),))
    p = policy(lo=0, hi=30, up=DEFAULT_SCALE_UP, down=DEFAULT_SCALE_DOWN, idle_to_zero_s=600)
    decision, _ = decide(obs(0, queued=40), p, history)
    assert decision.replicas == 10


# --- history -------------------------------------------------------------------------------------


def test_history_records_recommendations_and_events() -> None:
    p = policy(up=DEFAULT_SCALE_UP, down=DEFAULT_SCALE_DOWN)
    old = History(
        (Recommendation(T - 400, 9), Recommendation(T - 100, 2)),
        (ScaleEvent(T - 20, 1, 2), ScaleEvent(T - 5, 1, 2)),
    )
    decision, history = decide(obs(2, *many(2, 9, age=3600)), p, old)
    assert decision.replicas == 5  # ceil(9/4 × 2) = 5, rates allow max(ceil((2-1) × 2), 1 + 4) = 5
    # what no window or period reads any more is dropped
    assert history == History(
        (Recommendation(T - 100, 2), Recommendation(T, 5)),
        (ScaleEvent(T - 5, 1, 2), ScaleEvent(T, 2, 5)),
    )


def test_no_event_without_a_change() -> None:
    _, history = decide(obs(2, *many(2, 4)), policy(down=DEFAULT_SCALE_DOWN), History())
    assert history.events == ()
    assert history.recommendations == (Recommendation(T, 2), Recommendation(T, 2))  # seeded + this one
    # with no window, no recommendation outlives its call
    _, history = decide(obs(2, *many(2, 4)), policy(), History())
    assert history.recommendations == (Recommendation(T, 2),)


def test_a_missing_metric_records_nothing() -> None:
    old = History((Recommendation(T - 10, 3),))
    _, history = decide(obs(3, *many(3, 1)), policy(W, TTFT), old)
    assert history is old


def test_bound_paths_record_the_event_only() -> None:
    _, history = decide(obs(12, *many(12, 100)), policy(hi=8), History())
    assert history == History((), (ScaleEvent(T, 12, 8),))
