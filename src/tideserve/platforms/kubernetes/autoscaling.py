"""spec.autoscaling as a KEDA ScaledObject or an HPA v2 (KubeSettings.autoscaler), one per scaled
workload (a pdDisaggregated service has two: prefill and decode, each scaled in its own units).

What the queries match on. The PodMonitor copies the pods' tideserve.io/* labels onto every engine
series (tideserve.io/workload -> tideserve_workload, and so on, see naming.prometheus_label), and
Prometheus Operator adds `namespace` and `pod`. Queries select `namespace` + `tideserve_workload`:
exactly the pods of the scaled object, which is what an AverageValue target divides by (a pod-name
regex would also catch service `chat-small`'s pods when scaling `chat`, and the canary's stable pods).
Engine metric names come from the adapter (SGLang's differ), most recent release's name.

- gpuUtilization reads NVIDIA's DCGM exporter (DCGM_FI_DEV_GPU_UTIL, percent, labelled with
  namespace and pod), joined to kube-state-metrics' kube_pod_labels for the workload label: run
  kube-state-metrics with --metric-labels-allowlist=pods=[tideserve.io/workload].
- waitingPerReplica also counts the requests the gateway holds for the service
  (tideserve_gateway_queued{service=...}), as the local autoscaler does; with minReplicas 0 a
  separate trigger on that gauge alone wakes a scaled-to-zero service, the only signal that exists
  while no engine runs. The gateway's own scrape must keep its `service` label (honorLabels: true,
  or a PodMonitor, which adds no `service` target label to clash with it).

HPA reads the same series through prometheus-adapter (custom.metrics.k8s.io for Pods metrics,
external.metrics.k8s.io for the service-level TTFT). The rules it needs, for vLLM and the built-in
engine (for SGLang, the same with its names: sglang:num_running_reqs, ...):

    rules:
    - seriesQuery: '{__name__=~"^vllm:(num_requests_(waiting|running)|kv_cache_usage_perc)$",pod!=""}'
      resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
      name: {matches: "^vllm:(.*)$", as: "vllm_${1}"}
      metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
    - seriesQuery: '{__name__="vllm:e2e_request_latency_seconds_count",pod!=""}'
      resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
      name: {matches: "^vllm:(.*)_count$", as: "vllm_${1}_per_second"}
      metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)'
    - seriesQuery: '{__name__="DCGM_FI_DEV_GPU_UTIL",pod!=""}'
      resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
      metricsQuery: 'avg(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
    externalRules:
    - seriesQuery: '{__name__="vllm:time_to_first_token_seconds_bucket"}'
      resources: {overrides: {namespace: {resource: namespace}}}
      name: {matches: "^vllm:(.*)_bucket$", as: "vllm_${1}_p90"}
      metricsQuery: 'histogram_quantile(0.9, sum by (le) (rate(<<.Series>>{<<.LabelMatchers>>}[1m])))'

What neither can express becomes a warning (see `warnings`): HPA cannot scale to zero nor follow
schedules, and neither has a per-object tolerance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tideserve.autoscaler.policy import (
    DEFAULT_IDLE_TO_ZERO_S,
    Autoscaling,
    Behavior,
    Metric,
    Schedule,
    from_spec,
)
from tideserve.backends import adapter_for
from tideserve.platforms.kubernetes.naming import LABEL_WORKLOAD, metadata, prometheus_label
from tideserve.platforms.kubernetes.settings import RenderInput

GATEWAY_QUEUED = "tideserve_gateway_queued"
DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
# kube-state-metrics' name for the pod label tideserve.io/workload in kube_pod_labels.
KSM_WORKLOAD = "label_" + re.sub(r"[^a-zA-Z0-9_]", "_", LABEL_WORKLOAD)
HPA_TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default
POLLING_S = 15  # as often as the PodMonitor scrapes: polling faster only re-reads the same samples
RATE_WINDOW = "1m"  # four scrapes: rate() needs two, and a short window follows load quickly

TRIGGER_NAMES: dict[Metric, str] = {
    "waiting_per_replica": "waiting-per-replica",
    "running_per_replica": "running-per-replica",
    "kv_cache_usage": "kv-cache-usage",
    "ttft_p90": "ttft-p90",
    "gpu_utilization": "gpu-utilization",
    "requests_per_s": "requests-per-second",
}


@dataclass(frozen=True)
class ScaleTarget:
    """A workload the autoscaler resizes. `per_replica`: its instances in one service replica
    (prefillReplicas or decodeReplicas; 1 otherwise), so the policy's bounds scale by it."""

    name: str
    api_version: str
    kind: str
    per_replica: int = 1


@dataclass(frozen=True)
class Query:
    promql: str
    metric_type: Literal["AverageValue", "Value"]  # per pod of the target, or for the target as a whole
    threshold: float


def policy_of(inp: RenderInput) -> Autoscaling | None:
    data = inp.document["spec"].get("autoscaling")
    return None if data is None else from_spec(data)


def scalers(inp: RenderInput, targets: list[ScaleTarget]) -> list[dict[str, Any]]:
    """One ScaledObject or HPA per target, named as it."""
    policy = policy_of(inp)
    if policy is None:
        return []
    render = _scaled_object if inp.settings.autoscaler == "keda" else _hpa
    return [render(inp, policy, target) for target in targets]


# --- queries -------------------------------------------------------------------------------------


def matchers(namespace: str, workload: str) -> str:
    return f'namespace="{namespace}",{prometheus_label(LABEL_WORKLOAD)}="{workload}"'


def metric_query(
    metric: Metric,
    value: float,
    names: Mapping[str, tuple[str, ...]],
    namespace: str,
    workload: str,
    service: str,
) -> Query:
    """The PromQL a KEDA trigger runs for one target. Every query falls back to 0 when no series
    exists (no pod up yet, or scaled to zero), so an absent engine reads as idle, not as an error."""
    sel = "{" + matchers(namespace, workload) + "}"

    def engine(key: str) -> str:
        return engine_metric(names, key)

    if metric == "waiting_per_replica":
        queued = f'{GATEWAY_QUEUED}{{service="{service}"}}'
        return Query(
            f"(sum({engine('waiting')}{sel}) or vector(0)) + (sum({queued}) or vector(0))",
            "AverageValue",
            value,
        )
    if metric == "running_per_replica":
        return Query(f"sum({engine('running')}{sel}) or vector(0)", "AverageValue", value)
    if metric == "kv_cache_usage":
        return Query(f"sum({engine('kv_usage')}{sel}) or vector(0)", "AverageValue", value)
    if metric == "requests_per_s":
        return Query(
            f"sum(rate({engine('e2e')}_count{sel}[{RATE_WINDOW}])) or vector(0)", "AverageValue", value
        )
    if metric == "ttft_p90":
        # With no requests in the window the quantile is NaN; `> 0` drops it so it reads as 0.
        quantile = f"histogram_quantile(0.9, sum by (le) (rate({engine('ttft')}_bucket{sel}[{RATE_WINDOW}])))"
        return Query(f"{quantile} > 0 or vector(0)", "Value", value)
    # gpu_utilization: the mean over the workload's GPUs; Value, as HPA then scales by mean / target.
    labels = f'kube_pod_labels{{namespace="{namespace}",{KSM_WORKLOAD}="{workload}"}}'
    pods = f"max by (namespace, pod) ({labels})"
    return Query(
        f"avg({DCGM_GPU_UTIL} * on (namespace, pod) group_left () {pods}) / 100 or vector(0)", "Value", value
    )


def engine_metric(names: Mapping[str, tuple[str, ...]], key: str) -> str:
    """The engine's name for a canonical metric: its most recent release's, which the adapter follows."""
    if not names.get(key):
        raise ValueError(
            f"the engine publishes no {key!r} metric (its adapter names none), so no autoscaling target "
            "can be read from it: pick another target metric"
        )
    return names[key][0]


def gateway_queue_query(service: str) -> str:
    return f'sum({GATEWAY_QUEUED}{{service="{service}"}}) or vector(0)'


# --- KEDA ----------------------------------------------------------------------------------------


def _scaled_object(inp: RenderInput, policy: Autoscaling, target: ScaleTarget) -> dict[str, Any]:
    service = inp.document["metadata"]["name"]
    k = target.per_replica
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": target.api_version, "kind": target.kind, "name": target.name},
        "pollingInterval": POLLING_S,
        "minReplicaCount": policy.min_replicas * k,
        "maxReplicaCount": policy.max_replicas * k,
    }
    if policy.min_replicas == 0:
        # KEDA's cooldownPeriod is only the wait before scaling to zero: idleToZeroSeconds exactly.
        spec["cooldownPeriod"] = int(policy.idle_to_zero_s or DEFAULT_IDLE_TO_ZERO_S)
    spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior(policy, k)}}
    spec["triggers"] = _triggers(inp, policy, target)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(target.name, service, inp.settings.namespace),
        "spec": spec,
    }


def _triggers(inp: RenderInput, policy: Autoscaling, target: ScaleTarget) -> list[dict[str, Any]]:
    spec = inp.document["spec"]
    service = inp.document["metadata"]["name"]
    names = adapter_for(spec["engine"]["name"]).metric_names
    server = inp.settings.prometheus_url
    triggers = []
    for t in policy.targets:
        q = metric_query(t.metric, t.value, names, inp.settings.namespace, target.name, service)
        triggers.append(_prometheus(TRIGGER_NAMES[t.metric], q, server))
    if policy.min_replicas == 0:
        # At zero replicas no engine reports anything: held requests are what wakes the service, one
        # replica per `capacity` of them, as the local autoscaler starts it.
        capacity = sum(
            t.value for t in policy.targets if t.metric in ("waiting_per_replica", "running_per_replica")
        )
        threshold = capacity or float(spec["parameters"]["maxBatchSize"])
        triggers.append(
            _prometheus(
                "gateway-queue", Query(gateway_queue_query(service), "AverageValue", threshold), server
            )
        )
    for i, schedule in enumerate(policy.schedules):
        triggers.append(cron_trigger(f"schedule-{i}", schedule, target.per_replica))
    return triggers


def _prometheus(name: str, query: Query, server: str) -> dict[str, Any]:
    return {
        "type": "prometheus",
        "name": name,
        "metricType": query.metric_type,
        "metadata": {"serverAddress": server, "query": query.promql, "threshold": _number(query.threshold)},
    }


def cron_trigger(name: str, schedule: Schedule, per_replica: int = 1) -> dict[str, Any]:
    """A KEDA cron trigger holding the schedule's floor; pre-warm moves its start earlier when the
    start is a fixed time of day (see shift_cron), and is dropped with a warning otherwise."""
    start = shift_cron(schedule.start, schedule.prewarm_s) if schedule.prewarm_s else schedule.start
    return {
        "type": "cron",
        "name": name,
        "metadata": {
            "timezone": schedule.timezone,
            "start": start or schedule.start,
            "end": schedule.end,
            "desiredReplicas": str(schedule.min_replicas * per_replica),
        },
    }


def shift_cron(expr: str, seconds: float) -> str | None:
    """`expr` fired `seconds` earlier (rounded up to whole minutes, so pre-warm is never short), or
    None when that is not a plain rewrite: minute and hour must be single numbers, and a shift past
    midnight only works when the day fields are all `*` (else the day would have to move too)."""
    minute, hour, *days = expr.split()
    if not (minute.isdigit() and hour.isdigit()):
        return None
    at = int(hour) * 60 + int(minute) - math.ceil(seconds / 60)
    if at < 0:
        if any(d != "*" for d in days) or at < -24 * 60:
            return None
        at += 24 * 60
    return " ".join([str(at % 60), str(at // 60), *days])


# --- HPA -----------------------------------------------------------------------------------------


def _hpa(inp: RenderInput, policy: Autoscaling, target: ScaleTarget) -> dict[str, Any]:
    service = inp.document["metadata"]["name"]
    names = adapter_for(inp.document["spec"]["engine"]["name"]).metric_names
    k = target.per_replica
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(target.name, service, inp.settings.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": target.api_version, "kind": target.kind, "name": target.name},
            "minReplicas": max(1, policy.min_replicas) * k,  # HPA cannot do 0: see warnings()
            "maxReplicas": policy.max_replicas * k,
            "metrics": [hpa_metric(t.metric, t.value, names, target.name) for t in policy.targets],
            "behavior": behavior(policy, k),
        },
    }


def adapter_name(series: str) -> str:
    """prometheus-adapter's name for an engine series (the rules in the module docstring)."""
    return series.replace(":", "_")


# Pods metrics of HPA: the engine metric (canonical key) and the suffix the adapter's rule adds.
_HPA_PODS_METRICS: dict[Metric, tuple[str, str]] = {
    "waiting_per_replica": ("waiting", ""),
    "running_per_replica": ("running", ""),
    "kv_cache_usage": ("kv_usage", ""),
    "requests_per_s": ("e2e", "_per_second"),
}


def hpa_metric(
    metric: Metric, value: float, names: Mapping[str, tuple[str, ...]], workload: str
) -> dict[str, Any]:
    if metric == "ttft_p90":
        return {
            "type": "External",
            "external": {
                "metric": {
                    "name": adapter_name(engine_metric(names, "ttft")) + "_p90",
                    "selector": {"matchLabels": {prometheus_label(LABEL_WORKLOAD): workload}},
                },
                "target": {"type": "Value", "value": quantity(value)},
            },
        }
    if metric == "gpu_utilization":
        name, average = DCGM_GPU_UTIL, value * 100  # DCGM reports percent
    else:
        key, suffix = _HPA_PODS_METRICS[metric]
        name, average = adapter_name(engine_metric(names, key)) + suffix, value
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": quantity(average)},
        },
    }


# --- shared --------------------------------------------------------------------------------------


def behavior(policy: Autoscaling, per_replica: int = 1) -> dict[str, Any]:
    """The policy's (defaulted) behavior in HPA v2's field names; a Pods rate limit counts service
    replicas, so it scales with the workload's instances per replica."""
    return {
        "scaleUp": _rules(policy.scale_up, per_replica),
        "scaleDown": _rules(policy.scale_down, per_replica),
    }


def _rules(b: Behavior, per_replica: int) -> dict[str, Any]:
    return {
        "stabilizationWindowSeconds": int(b.stabilization_window_s),
        "selectPolicy": b.select,
        "policies": [
            {
                "type": p.kind,
                "value": p.value * per_replica if p.kind == "Pods" else p.value,
                "periodSeconds": int(p.period_s),
            }
            for p in b.policies
        ],
    }


def quantity(x: float) -> str:
    """A Kubernetes quantity in its canonical spelling (0.8 -> 800m), so re-applies show no diff."""
    if float(x).is_integer():
        return str(int(x))
    milli = round(x * 1000, 6)
    return f"{int(milli)}m" if milli.is_integer() else repr(float(x))


def _number(x: float) -> str:
    return f"{x:g}"


def warnings(inp: RenderInput) -> list[str]:
    """What spec.autoscaling asks that the rendered objects cannot do on this cluster."""
    policy = policy_of(inp)
    if policy is None:
        return []
    out = []
    hpa = inp.settings.autoscaler == "hpa"
    if hpa and policy.min_replicas == 0:
        out.append(
            "spec.autoscaling.minReplicas is 0, but this cluster autoscales with an HPA, which cannot "
            "scale to zero: rendered minReplicas 1 (set the cluster's autoscaler to keda to scale to zero)"
        )
    if hpa and policy.schedules:
        out.append(
            "spec.autoscaling.schedules cannot be expressed in an HPA and are ignored on this cluster "
            "(set the cluster's autoscaler to keda for cron schedules)"
        )
    if policy.tolerance != HPA_TOLERANCE:
        out.append(
            f"spec.autoscaling.tolerance {policy.tolerance:g} cannot be set per object on Kubernetes: "
            "the cluster-wide HPA tolerance applies (--horizontal-pod-autoscaler-tolerance, "
            f"default {HPA_TOLERANCE:g})"
        )
    if not hpa:
        for i, s in enumerate(policy.schedules):
            if s.prewarm_s and shift_cron(s.start, s.prewarm_s) is None:
                out.append(
                    f"spec.autoscaling.schedules.{i}.prewarmSeconds: start {s.start!r} is not a fixed "
                    "time of day (or moving it would change its day), so the cron trigger starts at start, "
                    "without pre-warm"
                )
    return out
