"""The autoscaling decision: how many replicas a service should run now, as a pure function of what
was observed, the policy and a short history the caller keeps between calls.

It is the Kubernetes HPA v2 algorithm (pkg/controller/podautoscaler: replica_calculator.go and
horizontal.go), which users already know, plus what HPA leaves to KEDA: schedules, scale to zero and
scale from zero. In order:

1. current == 0: start replicas for requests held at the gateway, or for a floor (minReplicas, a
   schedule); nothing else starts a scaled-to-zero service.
2. Scale to zero after idleToZeroSeconds without requests, when nothing keeps a floor above 0.
3. Outside [floor, maxReplicas]: move to the bound at once (HPA's "below Spec.MinReplicas" path).
4. Otherwise each target proposes a count (HPA's per-metric rules: tolerance, missing and unready
   instances); the largest wins; the stabilization window smooths it; the rate policies and the
   bounds limit the step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from tideserve.autoscaler.policy import Autoscaling, Behavior, Metric, Target, holding

# HPA's --horizontal-pod-autoscaler-initial-readiness-delay: a just-started instance's numbers do not
# show its share of the load yet (the balancer has only begun to send it requests).
STARTUP_GRACE_S = 30.0

# The live loop (loop.py) decides this often and leaves out collector figures older than this (missing,
# in HPA's terms); the simulator mirrors both.
INTERVAL_S = 2.0
METRIC_FRESH_S = 20.0

# Ratios are floats: 4.4 / 4 * 5 is 5.500000000000001, and 3 * 1.1 rounds the other way; rounding
# before ceil and comparing with a margin gives the answer the decimal numbers mean. HPA avoids the
# same trap with milli-unit integers.
_EPS = 1e-9


# --- inputs and outputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceSample:
    """One instance of the service, starting ones included. `values` holds its own numbers:
    waiting_per_replica and running_per_replica are its request counts, kv_cache_usage and
    gpu_utilization fractions 0..1; a metric it did not report is absent."""

    ready: bool
    started_at: float
    values: Mapping[Metric, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    now: float
    current: int  # the replicas the service has now: its desired count
    instances: Sequence[InstanceSample] = ()
    # Service-level: ttft_p90 (seconds) and requests_per_s (the total arriving at the gateway).
    service: Mapping[Metric, float] = field(default_factory=dict)
    queued: int = 0  # requests held at the gateway with no instance to take them
    last_request_at: float | None = None


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    from_replicas: int
    to_replicas: int


@dataclass(frozen=True)
class History:
    """What decide needs from earlier calls: its metric recommendations (for stabilization) and the
    scale events (for the rate policies). With no recommendation (a first call, or none recent), the
    current count counts as one made now, as a starting HPA does: a restart of the control plane does
    not scale down at once."""

    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()


class MetricStatus(NamedTuple):
    observed: float
    target: float
    proposal: int


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # "2→4: waiting/replica 9.5 > target 4"
    recommendation: int  # what the metrics asked for, before stabilization, rate and bounds
    metrics: dict[Metric, MetricStatus] = field(default_factory=dict)


def decide(
    obs: Observation,
    policy: Autoscaling,
    history: History,
    *,
    startup_grace_s: float = STARTUP_GRACE_S,
) -> tuple[Decision, History]:
    """The replicas to run now and the history to pass to the next call. The history assumes the
    decision is applied; when applying it fails, pass the previous history instead."""
    current = obs.current
    floor, why_floor = _floor(policy, obs.now)
    if current == 0:
        replicas, reason = _from_zero(obs, policy, floor, why_floor)
        return _record(obs, policy, history, Decision(replicas, reason, replicas), recommended=False)
    idle, idle_limit = _idle_for(obs), policy.idle_to_zero_s
    if floor == 0 and idle_limit is not None and idle is not None and idle >= idle_limit:
        reason = f"{current}→0: idle {idle:.0f} s"
        return _record(obs, policy, history, Decision(0, reason, 0), recommended=False)
    # HPA moves to a bound it is outside of at once, without the metrics, stabilization or rates.
    if current > policy.max_replicas:
        n = policy.max_replicas
        reason = f"{current}→{n}: above maxReplicas {n}"
        return _record(obs, policy, history, Decision(n, reason, n), recommended=False)
    if current < floor:
        decision = Decision(floor, f"{current}→{floor}: {why_floor}", floor)
        return _record(obs, policy, history, decision, recommended=False)
    return _by_metrics(obs, policy, history, floor, why_floor, startup_grace_s)


# --- floors, zero --------------------------------------------------------------------------------


def _floor(policy: Autoscaling, now: float) -> tuple[int, str]:
    hold = holding(policy.schedules, now)
    if hold is not None and hold.schedule.min_replicas > policy.min_replicas:
        s = hold.schedule
        why = f"schedule {s.start} ({s.timezone}) keeps at least {s.min_replicas}"
        if hold.prewarm:
            why += f", pre-warming up to {s.prewarm_s:g} s before it starts"
        return s.min_replicas, why
    return policy.min_replicas, f"minReplicas is {policy.min_replicas}"


def _from_zero(obs: Observation, policy: Autoscaling, floor: int, why_floor: str) -> tuple[int, str]:
    # No stabilization or rate policy applies: every held request waits for the first instance.
    need = _queue_replicas(obs.queued, policy.targets) if obs.queued > 0 else 0
    want = max(need, floor)
    n = min(want, policy.max_replicas)
    if n == 0:
        return 0, "no change: scaled to zero, no requests waiting"
    if need >= floor:
        why = f"{obs.queued} request{'s' if obs.queued != 1 else ''} waiting at the gateway"
        if need > 1:
            why += f" ({_per_replica(policy.targets)} per replica at target)"
    else:
        why = why_floor
    if n < want:
        why += f"; capped at maxReplicas {policy.max_replicas}"
    return n, f"0→{n}: {why}"


def _capacity(targets: tuple[Target, ...]) -> float:
    """Requests one replica holds at its targets: a request at an instance is waiting or running."""
    return sum(t.value for t in targets if t.metric in ("waiting_per_replica", "running_per_replica"))


def _per_replica(targets: tuple[Target, ...]) -> str:
    return _num(_capacity(targets))


def _queue_replicas(queued: int, targets: tuple[Target, ...]) -> int:
    # With no request-count target nothing says how many one replica takes: start one, and let the
    # metrics scale on once it serves.
    capacity = _capacity(targets)
    return max(1, _ceil(queued / capacity)) if capacity > 0 else 1


def _idle_for(obs: Observation) -> float | None:
    """Seconds without requests, or None when requests are in flight or nothing is known."""
    if obs.queued > 0:
        return None
    # A request that arrived long ago may still be streaming: in-flight work is not idleness.
    if any(
        i.values.get("running_per_replica", 0) > 0 or i.values.get("waiting_per_replica", 0) > 0
        for i in obs.instances
    ):
        return None
    since = obs.last_request_at
    if since is None:
        # No request seen yet: idle since the service's first instance started.
        since = min((i.started_at for i in obs.instances), default=None)
    return None if since is None else obs.now - since


# --- per-metric proposals ------------------------------------------------------------------------

_LABELS: dict[Metric, str] = {
    "waiting_per_replica": "waiting/replica",
    "running_per_replica": "running/replica",
    "kv_cache_usage": "KV cache use",
    "ttft_p90": "TTFT p90",
    "gpu_utilization": "GPU utilization",
    "requests_per_s": "requests/s/replica",
}


@dataclass(frozen=True)
class _Proposal:
    target: Target
    observed: float
    ratio: float
    replicas: int
    why_current: str = ""  # set when the proposal is the current count, saying why


def _propose(target: Target, obs: Observation, tolerance: float, grace: float) -> _Proposal | str:
    """A metric's proposal, or why it has none."""
    if target.metric == "ttft_p90":
        return _value_proposal(target, obs, tolerance)
    if target.metric == "requests_per_s":
        return _average_value_proposal(target, obs, tolerance)
    return _pods_proposal(target, obs, tolerance, grace)


def _pods_proposal(target: Target, obs: Observation, tolerance: float, grace: float) -> _Proposal | str:
    """HPA's Pods metric with an AverageValue target (calcPlainMetricReplicas)."""
    metric, goal, current = target.metric, target.value, obs.current
    values: list[float] = []
    unready = missing = 0
    for instance in obs.instances:
        if not instance.ready or obs.now - instance.started_at < grace:
            unready += 1
        elif metric not in instance.values:
            missing += 1
        else:
            values.append(instance.values[metric])
    if not values:
        return f"{_LABELS[metric]}: no ready instance reports it"
    usage = sum(values) / len(values)
    ratio = usage / goal

    def stay(why: str) -> _Proposal:
        return _Proposal(target, usage, ratio, current, why)

    scale_up_with_unready = unready > 0 and ratio > 1
    if not scale_up_with_unready and missing == 0:
        if _within(ratio, tolerance):
            return stay(f"within tolerance ({_LABELS[metric]} ratio {_num(ratio)})")
        return _Proposal(target, usage, ratio, _ceil(ratio * len(values)))
    # Assume the worst case for the direction: instances without the metric at the target on the way
    # down (they may be busy), at 0 on the way up (they may be idle); starting instances at 0, and only
    # on the way up (on the way down they would only make the service look less busy).
    filled = values + [goal if ratio < 1 else 0.0] * missing
    assumed = [f"{missing} without data at {'target' if ratio < 1 else '0'}"] if missing else []
    if scale_up_with_unready:
        filled += [0.0] * unready
        assumed.append(f"{unready} starting at 0")
    new_ratio = sum(filled) / len(filled) / goal
    counting = f"{_LABELS[metric]} ratio {_num(ratio)}, {_num(new_ratio)} counting {' and '.join(assumed)}"
    if _within(new_ratio, tolerance):
        return stay(f"within tolerance ({counting})")
    if (ratio > 1 and new_ratio < 1) or (ratio < 1 and new_ratio > 1):
        return stay(f"direction unclear ({counting})")
    replicas = _ceil(new_ratio * len(filled))
    if (new_ratio < 1 and replicas > current) or (new_ratio > 1 and replicas < current):
        return stay(f"direction unclear ({counting} proposes {replicas})")
    return _Proposal(target, usage, ratio, replicas)


def _value_proposal(target: Target, obs: Observation, tolerance: float) -> _Proposal | str:
    """HPA's Object metric with a Value target (GetObjectMetricReplicas): ratio × ready instances."""
    observed = obs.service.get("ttft_p90")
    if observed is None:
        if obs.service.get("requests_per_s") == 0:
            # No requests, so no first tokens: no latency to act on, rather than missing data that
            # would block scaling down (HPA keeps the count while a metric is missing).
            observed = 0.0
        else:
            return f"{_LABELS['ttft_p90']}: no data"
    ready = sum(1 for i in obs.instances if i.ready)
    if ready == 0:
        # HPA would propose 0 here (ratio × 0 ready) and so scale down while instances start.
        return f"{_LABELS['ttft_p90']}: no ready instance"
    ratio = observed / target.value
    if _within(ratio, tolerance):
        why = f"within tolerance ({_LABELS['ttft_p90']} ratio {_num(ratio)})"
        return _Proposal(target, observed, ratio, obs.current, why)
    replicas = _ceil(ratio * ready)
    # Counting only ready instances can point the other way while some start (an SLO breach with 2 of
    # 4 ready proposes 3); HPA's Pods rule keeps the count then, and so do we.
    if (ratio > 1 and replicas < obs.current) or (ratio < 1 and replicas > obs.current):
        label = _LABELS["ttft_p90"]
        why = f"direction unclear ({label} ratio {_num(ratio)} × {ready} ready proposes {replicas})"
        return _Proposal(target, observed, ratio, obs.current, why)
    return _Proposal(target, observed, ratio, replicas)


def _average_value_proposal(target: Target, obs: Observation, tolerance: float) -> _Proposal | str:
    """HPA's Object metric with an AverageValue target (GetObjectPerPodMetricReplicas): the gateway's
    total over the target per replica."""
    total = obs.service.get("requests_per_s")
    if total is None:
        return f"{_LABELS['requests_per_s']}: no data from the gateway"
    per_replica = total / obs.current
    ratio = per_replica / target.value
    if _within(ratio, tolerance):
        why = f"within tolerance ({_LABELS['requests_per_s']} ratio {_num(ratio)})"
        return _Proposal(target, per_replica, ratio, obs.current, why)
    return _Proposal(target, per_replica, ratio, _ceil(total / target.value))


def _within(ratio: float, tolerance: float) -> bool:
    return 1 - tolerance - _EPS <= ratio <= 1 + tolerance + _EPS


def _ceil(x: float) -> int:
    return math.ceil(round(x, 9))


# --- the metric path -----------------------------------------------------------------------------


def _by_metrics(
    obs: Observation, policy: Autoscaling, history: History, floor: int, why_floor: str, grace: float
) -> tuple[Decision, History]:
    now, current = obs.now, obs.current
    proposals: list[_Proposal] = []
    unavailable: list[str] = []
    for target in policy.targets:
        result = _propose(target, obs, policy.tolerance, grace)
        if isinstance(result, str):
            unavailable.append(result)
        else:
            proposals.append(result)
    statuses = {p.target.metric: MetricStatus(p.observed, p.target.value, p.replicas) for p in proposals}
    # HPA's rule: with no metric, or with one missing and the others pointing down, keep the count and
    # record nothing; a scrape gap must not scale a busy service down.
    if not proposals:
        return _keep(obs, history, f"no change: no metrics ({'; '.join(unavailable)})", statuses)
    best = proposals[0]
    for p in proposals[1:]:
        if p.replicas > best.replicas:
            best = p
    desired = best.replicas
    if unavailable and desired < current:
        return _keep(obs, history, f"no change: not scaling down without {'; '.join(unavailable)}", statuses)

    if not history.recommendations:
        history = History((Recommendation(now, current),), history.events)
    recommendations = history.recommendations
    up, down = policy.scale_up, policy.scale_down
    lowest = min([desired, *(r.replicas for r in recommendations if r.at > now - up.stabilization_window_s)])
    highest = max(
        [desired, *(r.replicas for r in recommendations if r.at > now - down.stabilization_window_s)]
    )
    stabilized = min(max(current, lowest), highest)

    # The last replica goes only by the idle rule, never because a metric read 0.
    lowest_allowed = max(floor, 1)
    why_lowest = why_floor if floor >= 1 else _why_last_replica(policy)
    replicas, limited = _limit(stabilized, current, history.events, policy, lowest_allowed, why_lowest, now)

    if stabilized == desired:
        held = ""
    elif desired < current:
        held = f"highest recommendation in the last {down.stabilization_window_s:g} s is {highest}"
    else:
        held = f"lowest recommendation in the last {up.stabilization_window_s:g} s is {lowest}"
    reason = _reason(current, best, stabilized, replicas, held, limited)
    decision = Decision(replicas, reason, desired, statuses)
    return _record(obs, policy, history, decision, recommended=True)


def _reason(current: int, best: _Proposal, stabilized: int, replicas: int, held: str, limited: str) -> str:
    """Why `replicas`: the deciding metric, then what changed its proposal (`held` by stabilization,
    `limited` by a rate or a bound), in the order they applied."""
    head = "no change" if replicas == current else f"{current}→{replicas}"
    desired, cause = best.replicas, _cause(best)
    if desired == current:
        return f"{head}: {best.why_current or cause}"
    if held:
        reason = f"{head}: stabilized, {held} ({cause} proposes {desired})"
        return f"{reason}; {limited}" if replicas != stabilized else reason
    if replicas != desired:
        return f"{head}: {cause} proposes {desired}; {limited}"
    return f"{head}: {cause}"


def _cause(p: _Proposal) -> str:
    metric = p.target.metric
    sign = ">" if p.ratio > 1 else "<" if p.ratio < 1 else "="
    return f"{_LABELS[metric]} {_show(metric, p.observed)} {sign} target {_show(metric, p.target.value)}"


def _why_last_replica(policy: Autoscaling) -> str:
    if policy.idle_to_zero_s is None:
        return "the last replica stays (no idleToZeroSeconds)"
    return f"the last replica stays until idle for {policy.idle_to_zero_s:g} s"


def _limit(
    desired: int,
    current: int,
    events: tuple[ScaleEvent, ...],
    policy: Autoscaling,
    lowest: int,
    why_lowest: str,
    now: float,
) -> tuple[int, str]:
    """HPA's convertDesiredReplicasWithBehaviorRate: the rate policies, then the bounds."""
    highest = policy.max_replicas
    if desired > current:
        rules = policy.scale_up
        if rules.select == "Disabled":
            return current, "scale-up disabled (behavior.scaleUp.selectPolicy: Disabled)"
        limit = max(_rate_limit(current, events, rules, now, up=True), current)
        if limit < highest and desired > limit:
            return limit, f"limited to {limit} by behavior.scaleUp policies"
    elif desired < current:
        rules = policy.scale_down
        if rules.select == "Disabled":
            return current, "scale-down disabled (behavior.scaleDown.selectPolicy: Disabled)"
        limit = min(_rate_limit(current, events, rules, now, up=False), current)
        if limit > lowest and desired < limit:
            return limit, f"limited to {limit} by behavior.scaleDown policies"
    if desired > highest:
        return highest, f"capped at maxReplicas {highest}"
    if desired < lowest:
        return lowest, why_lowest
    return desired, ""


def _rate_limit(
    current: int, events: tuple[ScaleEvent, ...], rules: Behavior, now: float, *, up: bool
) -> int:
    """The furthest count the policies allow from `current`, each measured from the count at the start
    of its period (current, less what the events within the period added, plus what they removed)."""
    proposals = []
    for policy in rules.policies:
        recent = [e for e in events if e.at > now - policy.period_s]
        added = sum(e.to_replicas - e.from_replicas for e in recent if e.to_replicas > e.from_replicas)
        removed = sum(e.from_replicas - e.to_replicas for e in recent if e.to_replicas < e.from_replicas)
        start = current - added + removed
        # Integer arithmetic where HPA uses floats (10 × 1.1 = 11.000000000000002 would allow 12).
        if policy.kind == "Pods":
            proposals.append(start + policy.value if up else start - policy.value)
        elif up:
            proposals.append(-(-start * (100 + policy.value) // 100))  # ceil: any percent adds ≥ 1
        else:
            proposals.append(start * (100 - policy.value) // 100)  # floor, as HPA truncates
    if not proposals:
        return current
    # Max selects the biggest change: the highest count going up, the lowest going down.
    biggest_change = (rules.select == "Max") == up
    return max(proposals) if biggest_change else min(proposals)


# --- history -------------------------------------------------------------------------------------


def _keep(
    obs: Observation, history: History, reason: str, statuses: dict[Metric, MetricStatus]
) -> tuple[Decision, History]:
    return Decision(obs.current, reason, obs.current, statuses), history


def _record(
    obs: Observation, policy: Autoscaling, history: History, decision: Decision, recommended: bool
) -> tuple[Decision, History]:
    """The history after `decision`: its recommendation when it came from the metrics (HPA records
    nothing on its bound and zero paths), its scale event when it changes the count, and nothing older
    than the longest window or period still reads."""
    now = obs.now
    windows = (policy.scale_up.stabilization_window_s, policy.scale_down.stabilization_window_s)
    periods = [p.period_s for b in (policy.scale_up, policy.scale_down) for p in b.policies]
    recommendations = [r for r in history.recommendations if r.at > now - max(windows)]
    events = [e for e in history.events if e.at > now - max(periods, default=0)]
    if recommended:
        recommendations.append(Recommendation(now, decision.recommendation))
    if decision.replicas != obs.current:
        events.append(ScaleEvent(now, obs.current, decision.replicas))
    return decision, History(tuple(recommendations), tuple(events))


# --- formatting ----------------------------------------------------------------------------------


def _show(metric: Metric, value: float) -> str:
    if metric in ("kv_cache_usage", "gpu_utilization"):
        return f"{_num(value * 100)}%"
    if metric == "ttft_p90":
        return f"{_num(value)} s"
    return _num(value)


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def with_gateway_queue(samples: list[InstanceSample], queued: int) -> list[InstanceSample]:
    """Requests the gateway holds for a service (its in-flight cap per instance reached) wait as surely
    as those queued inside an engine: spread them over the ready instances' waiting counts."""
    ready = [i for i, x in enumerate(samples) if x.ready and "waiting_per_replica" in x.values]
    if not queued or not ready:
        return samples
    out = list(samples)
    for i in ready:
        values = dict(out[i].values)
        values["waiting_per_replica"] += queued / len(ready)
        out[i] = replace(out[i], values=values)
    return out
