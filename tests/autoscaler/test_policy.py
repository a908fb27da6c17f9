import copy
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tideserve.autoscaler.policy import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Autoscaling,
    Behavior,
    RatePolicy,
    Schedule,
    Target,
    from_spec,
    holding,
    in_force,
)
from tideserve.services.spec import SpecError

EXAMPLE: dict[str, Any] = {
    "minReplicas": 0,
    "maxReplicas": 8,
    "targets": [{"metric": "waitingPerReplica", "value": 4}, {"metric": "ttftP90", "value": 2.5}],
    "behavior": {
        "scaleUp": {},
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
            "selectPolicy": "Min",
        },
    },
    "idleToZeroSeconds": 900,
    "schedules": [
        {
            "start": "0 8 * * 1-5",
            "end": "0 20 * * 1-5",
            "timezone": "Asia/Shanghai",
            "minReplicas": 4,
            "prewarmSeconds": 300,
        }
    ],
}


def test_defaults_are_kubernetes_hpa_v2s() -> None:
    assert Behavior(0, (RatePolicy("Percent", 100, 15), RatePolicy("Pods", 4, 15)), "Max") == DEFAULT_SCALE_UP
    assert Behavior(300, (RatePolicy("Percent", 100, 15),), "Max") == DEFAULT_SCALE_DOWN
    policy = from_spec({"maxReplicas": 3, "targets": [{"metric": "runningPerReplica", "value": 8}]})
    assert policy == Autoscaling(1, 3, (Target("running_per_replica", 8),))
    assert (policy.scale_up, policy.scale_down, policy.tolerance) == (
        DEFAULT_SCALE_UP,
        DEFAULT_SCALE_DOWN,
        0.1,
    )
    assert policy.idle_to_zero_s is None and policy.schedules == ()


def test_full_document() -> None:
    assert from_spec(EXAMPLE) == Autoscaling(
        min_replicas=0,
        max_replicas=8,
        targets=(Target("waiting_per_replica", 4), Target("ttft_p90", 2.5)),
        scale_up=DEFAULT_SCALE_UP,
        scale_down=Behavior(600, (RatePolicy("Percent", 50, 60),), "Min"),
        tolerance=0.1,
        idle_to_zero_s=900,
        schedules=(Schedule("0 8 * * 1-5", "0 20 * * 1-5", "Asia/Shanghai", 4, 300),),
    )


@pytest.mark.parametrize(
    ("metric", "name"),
    [
        ("waitingPerReplica", "waiting_per_replica"),
        ("runningPerReplica", "running_per_replica"),
        ("kvCacheUsage", "kv_cache_usage"),
        ("ttftP90", "ttft_p90"),
        ("gpuUtilization", "gpu_utilization"),
        ("requestsPerSecond", "requests_per_s"),
    ],
)
def test_metric_names(metric: str, name: str) -> None:
    policy = from_spec({"maxReplicas": 2, "targets": [{"metric": metric, "value": 0.5}]})
    assert policy.targets == (Target(name, 0.5),)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rules", "default", "expected"),
    [
        # Each field of a direction defaults on its own, as HPA's defaulting does.
        (
            {"stabilizationWindowSeconds": 60},
            DEFAULT_SCALE_UP,
            Behavior(60, DEFAULT_SCALE_UP.policies, "Max"),
        ),
        (
            {"selectPolicy": "Disabled"},
            DEFAULT_SCALE_DOWN,
            Behavior(300, DEFAULT_SCALE_DOWN.policies, "Disabled"),
        ),
        (
            {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            DEFAULT_SCALE_DOWN,
            Behavior(300, (RatePolicy("Pods", 1, 60),), "Max"),
        ),
        (
            {"stabilizationWindowSeconds": 0},
            DEFAULT_SCALE_DOWN,
            Behavior(0, DEFAULT_SCALE_DOWN.policies, "Max"),
        ),
    ],
)
def test_partial_behavior(rules: dict[str, Any], default: Behavior, expected: Behavior) -> None:
    direction = "scaleUp" if default is DEFAULT_SCALE_UP else "scaleDown"
    spec = {"maxReplicas": 2, "targets": [{"metric": "waitingPerReplica", "value": 4}]}
    policy = from_spec({**spec, "behavior": {direction: rules}})
    assert (policy.scale_up if direction == "scaleUp" else policy.scale_down) == expected


def test_min_zero_defaults_idle_to_keda_cooldown() -> None:
    spec = {"minReplicas": 0, "maxReplicas": 2, "targets": [{"metric": "waitingPerReplica", "value": 4}]}
    assert from_spec(spec).idle_to_zero_s == 300


def patched(**changes: Any) -> dict[str, Any]:
    """EXAMPLE with top-level fields replaced (None removes one)."""
    out = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def schedule(**changes: Any) -> list[dict[str, Any]]:
    return [{**EXAMPLE["schedules"][0], **changes}]


def errors(spec: Any) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        from_spec(spec)
    assert isinstance(info.value, ValueError)
    return [(e["loc"], e["msg"]) for e in info.value.errors]


A = "spec.autoscaling"


@pytest.mark.parametrize(
    ("spec", "loc", "msg"),
    [
        ("fast", A, "must be a mapping of fields, got 'fast'"),
        (patched(maxReplicas=None), f"{A}.maxReplicas", "is required: set the most replicas"),
        (patched(maxReplicas=0), f"{A}.maxReplicas", "must be at least 1, got 0"),
        (patched(maxReplicas=65), f"{A}.maxReplicas", "must be at most 64, got 65"),
        (patched(maxReplicas="4"), f"{A}.maxReplicas", "must be a whole number, got '4'"),
        (patched(minReplicas=-1), f"{A}.minReplicas", "must be at least 0, got -1"),
        (
            patched(minReplicas=9),
            f"{A}.minReplicas",
            "minReplicas=9 is above maxReplicas=8: lower minReplicas or raise maxReplicas",
        ),
        (
            patched(minReplicas=1),
            f"{A}.idleToZeroSeconds",
            "applies only when minReplicas is 0 (minReplicas is 1): remove it, or set minReplicas: 0",
        ),
        (patched(idleToZeroSeconds=0), f"{A}.idleToZeroSeconds", "must be at least 1, got 0"),
        (patched(tolerance=1), f"{A}.tolerance", "must be less than 1"),
        (patched(targets=None), f"{A}.targets", "is required: add at least one target, e.g."),
        (patched(targets=[]), f"{A}.targets", "must list at least one, e.g. targets: [{metric:"),
        (patched(targets={"metric": "ttftP90"}), f"{A}.targets", "must be a list, got a mapping"),
        (
            patched(targets=[{"metric": "waiting_per_replica", "value": 4}]),
            f"{A}.targets.0.metric",
            "unknown metric 'waiting_per_replica': did you mean 'waitingPerReplica'?",
        ),
        (
            patched(targets=[{"metric": "cpu", "value": 4}]),
            f"{A}.targets.0.metric",
            "unknown metric 'cpu': use one of waitingPerReplica, runningPerReplica",
        ),
        (patched(targets=[{"value": 4}]), f"{A}.targets.0.metric", "is required: name the metric"),
        (
            patched(targets=[{"metric": "ttftP90", "value": 2}, {"metric": "ttftP90", "value": 0}]),
            f"{A}.targets.1.value",
            "must be greater than 0",
        ),
        (
            patched(targets=[{"metric": "kvCacheUsage", "value": 80}]),
            f"{A}.targets.0.value",
            "kvCacheUsage is a fraction from 0 to 1, got 80: write 0.8 for 80%",
        ),
        (
            patched(targets=[{"metric": "gpuUtilization", "value": 250}]),
            f"{A}.targets.0.value",
            "gpuUtilization is a fraction from 0 to 1, got 250: write e.g. 0.8",
        ),
        (
            patched(targets=[{"metric": "ttftP90", "value": 2}, {"metric": "ttftP90", "value": 3}]),
            f"{A}.targets.1.metric",
            "ttftP90 is already targeted by targets.0: keep one",
        ),
        (
            patched(targets=[{"metric": "ttftP90", "valeu": 2}]),
            f"{A}.targets.0.valeu",
            "unknown field 'valeu' in spec.autoscaling.targets.0: did you mean 'value'?",
        ),
        (
            patched(idleToZero=600),
            f"{A}.idleToZero",
            "unknown field 'idleToZero' in spec.autoscaling: did you mean 'idleToZeroSeconds'?",
        ),
        (
            patched(behavior={"scaleUp": {"selectPolicy": "max"}}),
            f"{A}.behavior.scaleUp.selectPolicy",
            "must be one of 'Max', 'Min' or 'Disabled', got 'max'",
        ),
        (
            patched(behavior={"scaleDown": {"policies": []}}),
            f"{A}.behavior.scaleDown.policies",
            "must list at least one policy (or be left out for the defaults): to stop scaling in this "
            "direction, set selectPolicy: Disabled",
        ),
        (
            patched(behavior={"scaleDown": {"policies": [{"type": "Pod", "value": 1, "periodSeconds": 15}]}}),
            f"{A}.behavior.scaleDown.policies.0.type",
            "must be one of 'Pods' or 'Percent', got 'Pod'",
        ),
        (
            patched(
                behavior={"scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}
            ),
            f"{A}.behavior.scaleDown.policies.0.value",
            "must be greater than 0, got 0",
        ),
        (
            patched(
                behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 1801}]}}
            ),
            f"{A}.behavior.scaleUp.policies.0.periodSeconds",
            "must be at most 1800, got 1801",
        ),
        (
            patched(behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 1}]}}),
            f"{A}.behavior.scaleUp.policies.0.periodSeconds",
            "is required: set the period the policy's value applies to",
        ),
        (
            patched(behavior={"scaleDown": {"stabilizationWindowSeconds": 3601}}),
            f"{A}.behavior.scaleDown.stabilizationWindowSeconds",
            "must be at most 3600, got 3601",
        ),
        (
            patched(behavior={"scaledown": {}}),
            f"{A}.behavior.scaledown",
            "unknown field 'scaledown' in spec.autoscaling.behavior: did you mean 'scaleDown'?",
        ),
        (
            patched(schedules=schedule(start="0 8 * *")),
            f"{A}.schedules.0.start",
            "'0 8 * *' has 4 field(s): write a 5-field cron expression (minute hour day-of-month month "
            "day-of-week), e.g. '0 8 * * 1-5'",
        ),
        (
            patched(schedules=schedule(end="0 25 * * *")),
            f"{A}.schedules.0.end",
            "'0 25 * * *' is not a cron expression (bad hour): write minute hour",
        ),
        (
            patched(schedules=schedule(end="0 8 * * 1-5")),
            f"{A}.schedules.0.end",
            "is the same as start ('0 8 * * 1-5'): the window would close as it opens",
        ),
        (
            patched(schedules=schedule(timezone="Asia/Shangai")),
            f"{A}.schedules.0.timezone",
            "unknown time zone 'Asia/Shangai': use an IANA time zone name, did you mean 'Asia/Shanghai'?",
        ),
        (
            patched(schedules=schedule(timezone="CST+8")),
            f"{A}.schedules.0.timezone",
            "unknown time zone 'CST+8': use an IANA time zone name",
        ),
        (
            patched(schedules=[{"start": "0 8 * * *", "end": "0 9 * * *", "minReplicas": 2}]),
            f"{A}.schedules.0.timezone",
            "is required: name the IANA time zone the cron expressions are in",
        ),
        (
            patched(schedules=schedule(minReplicas=9)),
            f"{A}.schedules.0.minReplicas",
            "minReplicas=9 is above maxReplicas=8: a schedule keeps at most maxReplicas",
        ),
        (patched(schedules=schedule(minReplicas=0)), f"{A}.schedules.0.minReplicas", "must be at least 1"),
        (
            patched(schedules=schedule(prewarmSeconds=-5)),
            f"{A}.schedules.0.prewarmSeconds",
            "must be at least 0",
        ),
    ],
)
def test_validation_errors(spec: Any, loc: str, msg: str) -> None:
    found = errors(spec)
    assert any(got_loc == loc and got_msg.startswith(msg) for got_loc, got_msg in found), found


def test_every_problem_is_listed() -> None:
    spec = patched(
        minReplicas=9, targets=[{"metric": "ttftP90", "value": 2}] * 2, schedules=schedule(minReplicas=9)
    )
    assert [loc for loc, _ in errors(spec)] == [
        f"{A}.minReplicas",
        f"{A}.idleToZeroSeconds",
        f"{A}.targets.1.metric",
        f"{A}.schedules.0.minReplicas",
    ]


def test_error_location_follows_the_caller() -> None:
    assert errors({"maxReplicas": 0, "targets": [{"metric": "ttftP90", "value": 1}]}) == [
        ("spec.autoscaling.maxReplicas", "must be at least 1, got 0")
    ]
    with pytest.raises(SpecError) as info:
        from_spec({"maxReplicas": 0, "targets": [{"metric": "ttftP90", "value": 1}]}, loc="autoscaling")
    assert info.value.errors[0]["loc"] == "autoscaling.maxReplicas"


# --- schedules -----------------------------------------------------------------------------------


def at(zone: str, text: str) -> float:
    """Unix time of a wall-clock time in a zone ('2026-03-02 09:00')."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def utc(text: str) -> float:
    return at("UTC", text)


WEEKDAYS = Schedule("0 8 * * 1-5", "0 20 * * 1-5", "Asia/Shanghai", 4, prewarm_s=300)
NIGHTS = Schedule("0 22 * * *", "0 6 * * *", "Europe/Berlin", 2)
NY_MORNING = Schedule("0 8 * * *", "0 9 * * *", "America/New_York", 3)
# 02:30 does not exist in Berlin on 2026-03-29 and happens twice on 2026-10-25.
BERLIN_230 = Schedule("30 2 * * *", "0 4 * * *", "Europe/Berlin", 3)
BERLIN_SHORT = Schedule("30 2 * * *", "45 2 * * *", "Europe/Berlin", 2, prewarm_s=1800)
# Starts on weekdays only but ends every day: a Saturday is outside, although an end comes next.
WEEKDAY_STARTS = Schedule("0 8 * * 1-5", "0 20 * * *", "UTC", 2)


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        # 2026-03-02 is a Monday, 2026-03-07 a Saturday.
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-02 09:00"), "window"),
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-02 08:00"), "window"),  # the start second itself
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-02 19:59:59.5"), "window"),
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-02 20:00"), None),  # the end closes it
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-07 09:00"), None),  # Saturday
        # The same instant in UTC (01:00) is 09:00 in Shanghai: the zone is applied.
        (WEEKDAYS, utc("2026-03-02 01:00"), "window"),
        (WEEKDAYS, utc("2026-03-02 09:00"), "window"),  # 17:00 in Shanghai
        (WEEKDAYS, utc("2026-03-02 12:30"), None),  # 20:30 in Shanghai
        # Pre-warm: from prewarm_s before a start.
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-02 07:55"), "prewarm"),
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-02 07:54:59"), None),
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-09 07:57"), "prewarm"),  # Monday after a weekend
        (WEEKDAYS, at("Asia/Shanghai", "2026-03-07 07:57"), None),  # Saturday: no start follows
        # Across midnight.
        (NIGHTS, at("Europe/Berlin", "2026-01-10 21:59"), None),
        (NIGHTS, at("Europe/Berlin", "2026-01-10 22:00"), "window"),
        (NIGHTS, at("Europe/Berlin", "2026-01-10 23:30"), "window"),
        (NIGHTS, at("Europe/Berlin", "2026-01-11 02:00"), "window"),
        (NIGHTS, at("Europe/Berlin", "2026-01-11 05:59:59"), "window"),
        (NIGHTS, at("Europe/Berlin", "2026-01-11 06:00"), None),
        # DST: New York moves to UTC-4 on 2026-03-08. 08:00-09:00 local is 13:00-14:00 UTC before,
        # 12:00-13:00 UTC after.
        (NY_MORNING, utc("2026-03-06 12:30"), None),
        (NY_MORNING, utc("2026-03-06 13:30"), "window"),
        (NY_MORNING, utc("2026-03-09 12:30"), "window"),
        (NY_MORNING, utc("2026-03-09 13:30"), None),
        # Berlin skips 02:00-03:00 on 2026-03-29: a 02:30 start fires at 03:00 CEST (01:00 UTC).
        (BERLIN_230, utc("2026-03-29 00:59"), None),
        (BERLIN_230, utc("2026-03-29 01:00"), "window"),
        (BERLIN_230, utc("2026-03-29 01:59"), "window"),  # 03:59 CEST
        (BERLIN_230, utc("2026-03-29 02:00"), None),  # 04:00 CEST
        # Berlin repeats 02:00-03:00 on 2026-10-25: 02:30 fires once, at its first pass (00:30 UTC), and
        # the window lasts until 04:00 CET (03:00 UTC).
        (BERLIN_230, utc("2026-10-25 00:15"), None),
        (BERLIN_230, utc("2026-10-25 00:30"), "window"),
        (BERLIN_230, utc("2026-10-25 01:15"), "window"),  # 02:15 CET, the second pass
        (BERLIN_230, utc("2026-10-25 02:59"), "window"),
        (BERLIN_230, utc("2026-10-25 03:00"), None),
        # In the repeated hour, a firing of its first pass is past, not upcoming.
        (BERLIN_SHORT, utc("2026-10-25 00:10"), "prewarm"),  # 02:10 CEST
        (BERLIN_SHORT, utc("2026-10-25 00:40"), "window"),
        (BERLIN_SHORT, utc("2026-10-25 01:15"), None),  # 02:15 CET
        (WEEKDAY_STARTS, utc("2026-03-06 19:00"), "window"),  # Friday
        (WEEKDAY_STARTS, utc("2026-03-07 10:00"), None),  # Saturday
    ],
)
def test_in_force(schedule: Schedule, now: float, expected: str | None) -> None:
    hold = in_force(schedule, now)
    assert (None if hold is None else "prewarm" if hold.prewarm else "window") == expected


def test_holding_picks_the_highest_floor() -> None:
    low = Schedule("0 0 * * *", "0 23 * * *", "UTC", 2)
    high = Schedule("0 6 * * *", "0 12 * * *", "UTC", 5)
    assert holding((low, high), utc("2026-03-02 07:00")).schedule == high  # type: ignore[union-attr]
    assert holding((low, high), utc("2026-03-02 13:00")).schedule == low  # type: ignore[union-attr]
    assert holding((low, high), utc("2026-03-02 23:30")) is None
    assert holding((), utc("2026-03-02 07:00")) is None
