"""A service's autoscaling policy: what users write under `spec.autoscaling` (camelCase, the field names
of a Kubernetes HorizontalPodAutoscaler v2 where HPA has one), its validation, and the plain frozen
dataclasses the decision functions read.

    autoscaling:
      minReplicas: 0                  # 0 allows scale to zero; default 1
      maxReplicas: 8                  # required
      targets:                        # one or more; the largest proposal wins
        - {metric: waitingPerReplica, value: 4}
        - {metric: ttftP90, value: 2}           # seconds, a service-level SLO
      tolerance: 0.1                  # no scaling while every metric is within ±10% of its target
      behavior:                       # HPA v2's behavior; each field defaults on its own
        scaleUp: {stabilizationWindowSeconds: 0, selectPolicy: Max,
                  policies: [{type: Percent, value: 100, periodSeconds: 15},
                             {type: Pods, value: 4, periodSeconds: 15}]}
        scaleDown: {stabilizationWindowSeconds: 300, selectPolicy: Max,
                    policies: [{type: Percent, value: 100, periodSeconds: 15}]}
      idleToZeroSeconds: 600          # only with minReplicas 0 (which defaults it to 300)
      schedules:                      # KEDA cron style: known peaks
        - {start: "0 8 * * 1-5", end: "0 20 * * 1-5", timezone: Asia/Shanghai,
           minReplicas: 4, prewarmSeconds: 300}

Metrics: waitingPerReplica and runningPerReplica (requests per instance), kvCacheUsage and
gpuUtilization (fractions 0..1 per instance, as vLLM reports KV-cache use), requestsPerSecond (per
replica, from the gateway's service total) and ttftP90 (seconds, the service's 90th percentile).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

# cronsim rather than croniter: small, typed, without dependencies, maintained by healthchecks.io
# (which runs its users' cron schedules on it), and on DST days it does what Debian cron does: a time
# in the skipped hour fires right after the jump, one in the repeated hour fires once.
from cronsim import CronSim, CronSimError
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

# spec.py's conventions, shared so this model mounts under spec.autoscaling of a ServiceSpec and its
# errors read (and nest) like every other field's there.
from tideserve.services.specbase import FieldError, SpecError, _Model, _Violations, model_at

Metric = Literal[
    "waiting_per_replica",
    "running_per_replica",
    "kv_cache_usage",
    "ttft_p90",
    "gpu_utilization",
    "requests_per_s",
]
# The spelling users write; Metric is the spelling code uses.
METRIC_NAMES: dict[str, Metric] = {
    "waitingPerReplica": "waiting_per_replica",
    "runningPerReplica": "running_per_replica",
    "kvCacheUsage": "kv_cache_usage",
    "ttftP90": "ttft_p90",
    "gpuUtilization": "gpu_utilization",
    "requestsPerSecond": "requests_per_s",
}

# KEDA's cooldownPeriod: how long a service with minReplicas 0 stays up with no requests, unless
# idleToZeroSeconds says otherwise.
DEFAULT_IDLE_TO_ZERO_S = 300


# --- the policy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Keep `metric` near `value`: a per-replica average, except ttft_p90 (service-level seconds)."""

    metric: Metric
    value: float


@dataclass(frozen=True)
class RatePolicy:
    """At most `value` replicas (Pods) or `value`% of the replicas (Percent) added or removed within
    any `period_s`, counted from the replica count at the start of that period."""

    kind: Literal["Pods", "Percent"]
    value: int
    period_s: float


@dataclass(frozen=True)
class Behavior:
    stabilization_window_s: float
    policies: tuple[RatePolicy, ...]
    # Max: the policy allowing the biggest change applies; Min: the smallest; Disabled: no change.
    select: Literal["Max", "Min", "Disabled"] = "Max"


# Kubernetes HPA v2 defaults (pkg/apis/autoscaling/v2/defaults.go).
DEFAULT_SCALE_UP = Behavior(0, (RatePolicy("Percent", 100, 15), RatePolicy("Pods", 4, 15)), "Max")
DEFAULT_SCALE_DOWN = Behavior(300, (RatePolicy("Percent", 100, 15),), "Max")


@dataclass(frozen=True)
class Schedule:
    """From each `start` firing until the next `end` firing (cron, in `timezone`), and from `prewarm_s`
    before each start, keep at least `min_replicas`."""

    start: str
    end: str
    timezone: str
    min_replicas: int
    prewarm_s: float = 0


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    targets: tuple[Target, ...]
    scale_up: Behavior = DEFAULT_SCALE_UP
    scale_down: Behavior = DEFAULT_SCALE_DOWN
    tolerance: float = 0.1
    # Scale to zero after this long without requests; None: never. Only with min_replicas == 0.
    idle_to_zero_s: float | None = None
    schedules: tuple[Schedule, ...] = ()


# --- schedules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """A schedule in force: inside its window, or pre-warming (its next start is within prewarm_s)."""

    schedule: Schedule
    prewarm: bool


def in_force(schedule: Schedule, now: float) -> Hold | None:
    """Whether `schedule` holds at `now` (Unix seconds)."""
    zone = ZoneInfo(schedule.timezone)  # ZoneInfo caches by name
    last_start = _last_firing(schedule.start, zone, now)
    if last_start is not None:
        end = _next_firing(schedule.end, zone, last_start)
        if end is None or now < end:
            return Hold(schedule, prewarm=False)
    if schedule.prewarm_s > 0:
        upcoming = _next_firing(schedule.start, zone, now)
        if upcoming is not None and upcoming - now <= schedule.prewarm_s:
            return Hold(schedule, prewarm=True)
    return None


# cronsim walks a time zone's wall clock, so in the hour a DST change repeats it can step to a firing
# before `t`, or (backward) past the last one: both helpers check the instants and walk on forward,
# the direction that is right in either pass.


def _next_firing(expr: str, zone: ZoneInfo, t: float) -> float | None:
    """The first firing strictly after `t`."""
    for fire in CronSim(expr, datetime.fromtimestamp(math.floor(t), zone)):
        if fire.timestamp() > t:
            return fire.timestamp()
    return None


def _last_firing(expr: str, zone: ZoneInfo, t: float) -> float | None:
    """The last firing at or before `t` (within the second: cron fires on whole seconds)."""
    # Reverse iteration yields firings strictly before its start: a second later includes `t`'s own.
    back = CronSim(expr, datetime.fromtimestamp(math.floor(t), zone) + timedelta(seconds=1), reverse=True)
    last = next((fire.timestamp() for fire in back if fire.timestamp() <= t), None)
    if last is None:
        return None
    while (later := _next_firing(expr, zone, last)) is not None and later <= t:
        last = later
    return last


def holding(schedules: tuple[Schedule, ...], now: float) -> Hold | None:
    """The schedule in force at `now` with the highest floor (the first of equals), if any."""
    best: Hold | None = None
    for schedule in schedules:
        hold = in_force(schedule, now)
        if hold is not None and (best is None or schedule.min_replicas > best.schedule.min_replicas):
            best = hold
    return best


# --- the document --------------------------------------------------------------------------------


def _metric_name(value: Any) -> Any:
    if isinstance(value, str) and value not in METRIC_NAMES:
        close = difflib.get_close_matches(value, METRIC_NAMES, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown metric {value!r}: {hint}use one of {', '.join(METRIC_NAMES)}")
    return value


class TargetSpec(_Model):
    metric: Literal[
        "waitingPerReplica",
        "runningPerReplica",
        "kvCacheUsage",
        "ttftP90",
        "gpuUtilization",
        "requestsPerSecond",
    ]
    value: float = Field(gt=0)

    @field_validator("metric", mode="before")
    @classmethod
    def _known_metric(cls, value: Any) -> Any:
        return _metric_name(value)

    @model_validator(mode="after")
    def _fraction(self) -> TargetSpec:
        if self.metric in ("kvCacheUsage", "gpuUtilization") and self.value > 1:
            raise _Violations(
                [
                    (
                        "value",
                        f"{self.metric} is a fraction from 0 to 1, got {self.value:g}: "
                        f"write {self.value / 100:g} for {self.value:g}%"
                        if self.value <= 100
                        else f"{self.metric} is a fraction from 0 to 1, got {self.value:g}: write e.g. 0.8",
                    )
                ]
            )
        return self


class ScalingPolicySpec(_Model):
    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    period_seconds: int = Field(gt=0, le=1800)  # HPA's bounds


class ScalingRulesSpec(_Model):
    """HPA v2's HPAScalingRules; an unset field takes the direction's default."""

    stabilization_window_seconds: int | None = Field(None, ge=0, le=3600)  # HPA's bounds
    select_policy: Literal["Max", "Min", "Disabled"] | None = None
    policies: list[ScalingPolicySpec] | None = None

    @field_validator("policies")
    @classmethod
    def _some(cls, policies: list[ScalingPolicySpec] | None) -> list[ScalingPolicySpec] | None:
        if policies == []:
            raise ValueError(
                "must list at least one policy (or be left out for the defaults): "
                "to stop scaling in this direction, set selectPolicy: Disabled"
            )
        return policies

    def to_behavior(self, default: Behavior) -> Behavior:
        policies = default.policies
        if self.policies is not None:
            policies = tuple(RatePolicy(p.type, p.value, p.period_seconds) for p in self.policies)
        window = self.stabilization_window_seconds
        return Behavior(
            default.stabilization_window_s if window is None else window,
            policies,
            self.select_policy or default.select,
        )


class BehaviorSpec(_Model):
    scale_up: ScalingRulesSpec = Field(default_factory=ScalingRulesSpec)
    scale_down: ScalingRulesSpec = Field(default_factory=ScalingRulesSpec)


class ScheduleSpec(_Model):
    start: str
    end: str
    timezone: str
    min_replicas: int = Field(ge=1, le=64)
    prewarm_seconds: int = Field(0, ge=0, le=86400)

    @field_validator("start", "end")
    @classmethod
    def _cron(cls, expr: str) -> str:
        fields = expr.split()
        if len(fields) != 5:
            raise ValueError(
                f"{expr!r} has {len(fields)} field(s): write a 5-field cron expression "
                "(minute hour day-of-month month day-of-week), e.g. '0 8 * * 1-5'"
            )
        try:
            CronSim(expr, datetime(2000, 1, 1))
        except CronSimError as e:
            raise ValueError(
                f"{expr!r} is not a cron expression ({str(e).lower()}): write minute hour "
                "day-of-month month day-of-week, e.g. '0 8 * * 1-5'"
            ) from e
        return expr

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "e.g. 'Asia/Shanghai' or 'UTC'"
            raise ValueError(f"unknown time zone {name!r}: use an IANA time zone name, {hint}") from None
        return name

    @model_validator(mode="after")
    def _distinct(self) -> ScheduleSpec:
        if " ".join(self.start.split()) == " ".join(self.end.split()):
            raise _Violations(
                [("end", f"is the same as start ({self.start!r}): the window would close as it opens")]
            )
        return self


class AutoscalingSpec(_Model):
    """The `spec.autoscaling` block; absent, a service runs a fixed `replicas`."""

    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int = Field(ge=1, le=64)
    targets: list[TargetSpec] = Field(min_length=1)
    tolerance: float = Field(0.1, ge=0, lt=1)
    behavior: BehaviorSpec = Field(default_factory=BehaviorSpec)
    idle_to_zero_seconds: int | None = Field(None, ge=1, le=7 * 86400)
    schedules: list[ScheduleSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingSpec:
        problems = []
        if self.min_replicas > self.max_replicas:
            problems.append(
                (
                    "minReplicas",
                    f"minReplicas={self.min_replicas} is above maxReplicas={self.max_replicas}: "
                    "lower minReplicas or raise maxReplicas",
                )
            )
        if self.idle_to_zero_seconds is not None and self.min_replicas > 0:
            problems.append(
                (
                    "idleToZeroSeconds",
                    f"applies only when minReplicas is 0 (minReplicas is {self.min_replicas}): "
                    "remove it, or set minReplicas: 0 to allow scale to zero",
                )
            )
        seen: dict[str, int] = {}
        for i, target in enumerate(self.targets):
            if target.metric in seen:
                problems.append(
                    (
                        f"targets.{i}.metric",
                        f"{target.metric} is already targeted by targets.{seen[target.metric]}: keep one",
                    )
                )
            seen.setdefault(target.metric, i)
        for i, schedule in enumerate(self.schedules):
            if schedule.min_replicas > self.max_replicas:
                problems.append(
                    (
                        f"schedules.{i}.minReplicas",
                        f"minReplicas={schedule.min_replicas} is above maxReplicas={self.max_replicas}: "
                        "a schedule keeps at most maxReplicas; lower it or raise maxReplicas",
                    )
                )
        if problems:
            raise _Violations(problems)
        if self.min_replicas == 0 and self.idle_to_zero_seconds is None:
            # Filled in rather than left unset so the printed spec shows what runs.
            self.idle_to_zero_seconds = DEFAULT_IDLE_TO_ZERO_S
        return self

    def to_policy(self) -> Autoscaling:
        return Autoscaling(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            targets=tuple(Target(METRIC_NAMES[t.metric], t.value) for t in self.targets),
            scale_up=self.behavior.scale_up.to_behavior(DEFAULT_SCALE_UP),
            scale_down=self.behavior.scale_down.to_behavior(DEFAULT_SCALE_DOWN),
            tolerance=self.tolerance,
            idle_to_zero_s=self.idle_to_zero_seconds,
            schedules=tuple(
                Schedule(s.start, s.end, s.timezone, s.min_replicas, s.prewarm_seconds)
                for s in self.schedules
            ),
        )


# Keyed by field name: the same hint serves every list item.
_REQUIRED_HINTS = {
    "maxReplicas": "set the most replicas autoscaling may run, e.g. maxReplicas: 4",
    "targets": "add at least one target, e.g. targets: [{metric: waitingPerReplica, value: 4}]",
    "metric": f"name the metric to track: one of {', '.join(METRIC_NAMES)}",
    "value": "set the target value of the metric",
    "type": "set Pods or Percent",
    "periodSeconds": "set the period the policy's value applies to, e.g. 15",
    "start": "set the cron expression that opens the window, e.g. '0 8 * * 1-5'",
    "end": "set the cron expression that closes the window, e.g. '0 20 * * 1-5'",
    "timezone": "name the IANA time zone the cron expressions are in, e.g. 'Asia/Shanghai'",
    "minReplicas": "set the replicas to keep at least while the schedule is in force",
}


def from_spec(data: Any, loc: str = "spec.autoscaling") -> Autoscaling:
    """The policy from its camelCase document form. Raises SpecError listing every problem, located
    under `loc` (dotted, as in a service document)."""
    try:
        return AutoscalingSpec.model_validate(data).to_policy()
    except ValidationError as e:
        raise SpecError(_field_errors(e, loc)) from e


def _field_errors(error: ValidationError, prefix: str) -> list[FieldError]:
    # services.spec imports this module to mount the policy, so its message helpers come at call time.
    from tideserve.services.spec import _message

    out: list[FieldError] = []
    for item in error.errors():
        parts = [str(part) for part in item["loc"]]
        loc = ".".join([prefix, *parts]) if prefix else ".".join(parts)
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, _Violations):
            out += [{"loc": f"{loc}.{sub}" if loc else sub, "msg": msg} for sub, msg in cause.items]
        elif item["type"] == "missing":
            hint = required_hint(parts[-1])
            out.append({"loc": loc, "msg": f"is required: {hint}" if hint else "is required"})
        elif item["type"] == "extra_forbidden":
            out.append({"loc": loc, "msg": _unknown_field(item["loc"], prefix)})
        elif item["type"] in ("list_type", "too_short") and parts and parts[-1] in ("targets", "policies"):
            out.append({"loc": loc, "msg": _list_message(item, parts[-1])})
        else:
            out.append({"loc": loc, "msg": _message(item, loc)})
    return out


def _list_message(item: Mapping[str, Any], name: str) -> str:
    from tideserve.services.spec import _show  # see _field_errors

    example = (
        "[{metric: waitingPerReplica, value: 4}]"
        if name == "targets"
        else "[{type: Percent, value: 100, periodSeconds: 15}]"
    )
    if item["type"] == "too_short":
        return f"must list at least one, e.g. {name}: {example}"
    return f"must be a list, got {_show(item.get('input'))}: e.g. {name}: {example}"


def _unknown_field(loc: tuple[Any, ...], prefix: str) -> str:
    name = str(loc[-1])
    model = _model_at(loc[:-1])
    known = [f.alias or n for n, f in model.model_fields.items()] if model else []
    where = ".".join([prefix, *(str(p) for p in loc[:-1])]) if prefix else ".".join(map(str, loc[:-1]))
    msg = f"unknown field {name!r} in {where or 'autoscaling'}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{msg}: did you mean {close[0]!r}?"
    return f"{msg}: remove it (known fields: {', '.join(known)})"


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    return model_at(AutoscalingSpec, path)


def required_hint(field: str) -> str | None:
    """What to write for a missing field of the policy, by its name (a service document's errors use
    it too)."""
    return _REQUIRED_HINTS.get(field)
