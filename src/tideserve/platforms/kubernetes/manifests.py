"""A service as the Kubernetes objects that run it: pure, plain dicts, deterministic order.

    render(inp)    Rendered(objects, warnings). Objects: workloads (current revision, then the canary's
                   stable one), the client Service (and a headless one for PD prefill pods),
                   PodDisruptionBudget, PodMonitor, the autoscaler objects, the Istio canary objects.
                   Warnings: what the spec asks that these objects cannot do on this cluster.
    to_yaml(objs)  one multi-document YAML, keys in the order people read them

Workloads, by deployment mode:
- single: Deployment `<service>`; a spec change rolls it natively (maxSurge 1, maxUnavailable 0, so
  serving capacity never drops while the new pods load the model).
- multiNode: LeaderWorkerSet `<service>-lws` of nodesPerInstance pods per instance, each with that
  share of the resources; rank 0 (the leader) serves HTTP. Not named `<service>`: the LWS controller
  creates a headless Service named after the LWS for its pods' DNS, which would collide with ours.
- pdDisaggregated: Deployments `<service>-prefill` and `<service>-decode`, replicas × prefillReplicas
  and × decodeReplicas, the engine's KV-transfer flags coming from its adapter for each role.
A canary keeps its stable revision as `<service>-r<N>` (+ the same suffixes) with stableReplicas.
With spec.autoscaling the current revision's workloads leave `replicas` out, so server-side apply
does not fight the autoscaler over it.

Clients reach pods of role both (or decode, for PD) through Service `<service>`, ClusterIP or
LoadBalancer as access.exposure says. The headless Service `<service>-prefill` gives the prefill
pods' addresses and readiness (EndpointSlices) to what steers a PD request, prefill first and then
decode with the KV-transfer handle; the engines move KV caches pod to pod, by IP. That steering is
the engines' PD router's job: the tideserve gateway does not do it yet (it never sends to prefill
instances), so a PD service needs the engine's router in front of `<service>` for now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tideserve.backends.base import Role, Topology
from tideserve.platforms.kubernetes import autoscaling, istio
from tideserve.platforms.kubernetes.autoscaling import ScaleTarget
from tideserve.platforms.kubernetes.naming import (
    LABEL_WORKLOAD,
    LWS_NAME_MAX,
    common_labels,
    meta_label,
    metadata,
    object_name,
    prometheus_label,
)
from tideserve.platforms.kubernetes.pods import HTTP_PORT_NAME, Pod, pod_template
from tideserve.platforms.kubernetes.settings import (
    LABEL_COMPONENT,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SERVICE,
    RenderInput,
)

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
COMPONENT_ENGINE = "engine"
# Workers of a multiNode instance: not behind the Service, not scraped (they serve no HTTP).
COMPONENT_WORKER = "engine-worker"
# A Deployment is marked as not progressing after this; the startup probe allows 30 min of loading.
PROGRESS_DEADLINE_S = 2400
SCRAPE_INTERVAL = "15s"


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workload:
    name: str
    revision: int
    spec: Mapping[str, Any]  # the revision's document `spec` body
    role: Role
    replicas: int | None  # None: the autoscaler owns the count
    per_replica: int  # instances of this workload in one service replica

    @property
    def multi_node(self) -> bool:
        return self.spec["deployment"]["mode"] == "multiNode"


def render(inp: RenderInput) -> Rendered:
    service = inp.document["metadata"]["name"]
    spec = inp.document["spec"]
    ns = inp.settings.namespace
    current, stable = workloads(inp)
    objects = [_workload(w, inp) for w in (*current, *stable)]
    objects += _services(service, spec, ns)
    objects += [_pod_disruption_budget(service, ns), _pod_monitor(service, ns)]
    objects += autoscaling.scalers(inp, [_scale_target(w) for w in current])
    canary = spec["routing"].get("canary")
    warnings = autoscaling.warnings(inp)
    if canary and not stable:
        warnings.append(
            f"the canary's stable revision {canary['stableRevision']} was not found: rendered the current "
            "revision alone, which takes all traffic"
        )
    elif canary and inp.settings.istio:
        port = int(spec["access"]["servicePort"])
        objects += istio.canary_objects(
            service, ns, port, inp.revision, int(canary["stableRevision"]), int(canary["weight"])
        )
    return Rendered(objects, tuple(warnings))


# --- workloads -----------------------------------------------------------------------------------


def workloads(inp: RenderInput) -> tuple[list[Workload], list[Workload]]:
    """(the current revision's workloads, the canary's stable revision's)."""
    service = inp.document["metadata"]["name"]
    spec = inp.document["spec"]
    replicas = None if spec.get("autoscaling") else int(spec["replicas"])
    current = _revision_workloads(service, inp.revision, spec, replicas)
    canary = spec["routing"].get("canary")
    if not canary or inp.stable is None:
        return current, []
    revision, document = inp.stable
    _check_stable(revision, document, int(canary["stableRevision"]), spec["model"])
    base = object_name(service, f"r{revision}")
    return current, _revision_workloads(base, revision, document["spec"], int(canary["stableReplicas"]))


def _check_stable(revision: int, document: Mapping[str, Any], wanted: int, model: str) -> None:
    if revision != wanted:
        raise ValueError(f"the canary's stable revision is {wanted}, but the render input carries {revision}")
    # RenderInput has one ModelSource, the current revision's: a stable revision of another model would
    # be rendered serving the new one under the stable label, so refuse instead.
    if document["spec"]["model"] != model:
        raise ValueError(
            f"stable revision {revision} serves model {document['spec']['model']!r} and the current one "
            f"{model!r}: rendering a canary across models needs the stable revision's model source, "
            "which the render input does not carry"
        )


def _revision_workloads(
    base: str, revision: int, spec: Mapping[str, Any], replicas: int | None
) -> list[Workload]:
    deployment = spec["deployment"]
    if deployment["mode"] == "pdDisaggregated":
        return [
            Workload(
                object_name(base, role),
                revision,
                spec,
                role,
                None if replicas is None else replicas * int(deployment[f"{role}Replicas"]),
                int(deployment[f"{role}Replicas"]),
            )
            for role in ("prefill", "decode")
        ]
    if deployment["mode"] == "multiNode":
        return [Workload(object_name(base, "lws", limit=LWS_NAME_MAX), revision, spec, "both", replicas, 1)]
    return [Workload(object_name(base), revision, spec, "both", replicas, 1)]


def _pod_labels(service: str, w: Workload, component: str = COMPONENT_ENGINE) -> dict[str, str]:
    return {
        **common_labels(service),
        LABEL_WORKLOAD: w.name,
        LABEL_REVISION: str(w.revision),
        # A worker is part of its leader's instance, not one of its own: the platform that reads pods
        # back neither counts nor routes to it.
        LABEL_ROLE: "worker" if component == COMPONENT_WORKER else w.role,
        LABEL_COMPONENT: component,
    }


def _workload(w: Workload, inp: RenderInput) -> dict[str, Any]:
    return _leader_worker_set(w, inp) if w.multi_node else _deployment(w, inp)


def _template(w: Workload, inp: RenderInput, pod: Pod) -> dict[str, Any]:
    service = inp.document["metadata"]["name"]
    return pod_template(pod, service, w.spec, inp.model, inp.settings, inp.placement)


def _deployment(w: Workload, inp: RenderInput) -> dict[str, Any]:
    service = inp.document["metadata"]["name"]
    spec: dict[str, Any] = {}
    if w.replicas is not None:
        spec["replicas"] = w.replicas
    spec |= {
        "selector": {"matchLabels": {LABEL_SERVICE: service, LABEL_WORKLOAD: w.name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": PROGRESS_DEADLINE_S,
        "template": _template(w, inp, Pod(_pod_labels(service, w), w.role)),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(w.name, service, inp.settings.namespace),
        "spec": spec,
    }


def _leader_worker_set(w: Workload, inp: RenderInput) -> dict[str, Any]:
    service = inp.document["metadata"]["name"]
    nodes = int(w.spec["deployment"]["nodesPerInstance"])
    # LWS injects these into every pod of a group; the kubelet expands $(VAR) in args from the env.
    leader_address = "$(LWS_LEADER_ADDRESS)"
    leader = Pod(_pod_labels(service, w), "both", Topology(nodes, 0, leader_address))
    worker = Pod(
        _pod_labels(service, w, COMPONENT_WORKER),
        "both",
        Topology(nodes, "$(LWS_WORKER_INDEX)", leader_address),
        serves_http=False,
    )
    spec: dict[str, Any] = {}
    if w.replicas is not None:
        spec["replicas"] = w.replicas
    spec |= {
        "leaderWorkerTemplate": {
            "size": nodes,
            # One lost pod breaks the instance's collective: restart the group together.
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": _template(w, inp, leader),
            "workerTemplate": _template(w, inp, worker),
        },
        "rolloutStrategy": {
            "type": "RollingUpdate",
            "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0},
        },
        # Workers start with the leader, not after it is ready: the leader's engine waits for them.
        "startupPolicy": "LeaderCreated",
    }
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": metadata(w.name, service, inp.settings.namespace),
        "spec": spec,
    }


def _scale_target(w: Workload) -> ScaleTarget:
    if w.multi_node:
        # LWS's scale subresource counts groups and selects their leaders, which export the metrics.
        return ScaleTarget(w.name, LWS_API_VERSION, "LeaderWorkerSet", w.per_replica)
    return ScaleTarget(w.name, "apps/v1", "Deployment", w.per_replica)


# --- service, budget, monitoring -----------------------------------------------------------------


def _services(service: str, spec: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
    access = spec["access"]
    pd = spec["deployment"]["mode"] == "pdDisaggregated"
    port = {
        "name": HTTP_PORT_NAME,
        "port": int(access["servicePort"]),
        "targetPort": HTTP_PORT_NAME,
        "protocol": "TCP",
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(service, service, namespace),
        "spec": {
            "type": "LoadBalancer" if access["exposure"] == "external" else "ClusterIP",
            "selector": _serving(service, "decode" if pd else "both"),
            "ports": [port],
        },
    }
    if not pd:
        return [client]
    prefill = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(object_name(service, "prefill"), service, namespace),
        "spec": {"clusterIP": "None", "selector": _serving(service, "prefill"), "ports": [port]},
    }
    return [client, prefill]


def _serving(service: str, role: Role) -> dict[str, str]:
    return {LABEL_SERVICE: service, LABEL_COMPONENT: COMPONENT_ENGINE, LABEL_ROLE: role}


def _pod_disruption_budget(service: str, namespace: str) -> dict[str, Any]:
    # Every pod of the service, one at a time: a node drain never takes two instances (or two pods of
    # one multiNode group, which would fail it twice) at once.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(service, service, namespace),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {LABEL_SERVICE: service}}},
    }


def _pod_monitor(service: str, namespace: str) -> dict[str, Any]:
    relabel = [
        {"sourceLabels": [meta_label(label)], "targetLabel": prometheus_label(label)}
        for label in (LABEL_SERVICE, LABEL_WORKLOAD, LABEL_REVISION, LABEL_ROLE)
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(service, service, namespace),
        "spec": {
            "selector": {"matchLabels": {LABEL_SERVICE: service, LABEL_COMPONENT: COMPONENT_ENGINE}},
            "podMetricsEndpoints": [
                {
                    "port": HTTP_PORT_NAME,
                    "path": "/metrics",
                    "interval": SCRAPE_INTERVAL,
                    "relabelings": relabel,
                }
            ],
        },
    }


# --- YAML ----------------------------------------------------------------------------------------

_TOP = ("apiVersion", "kind", "metadata", "spec")
_METADATA = ("name", "namespace", "labels", "annotations")


def _ordered(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: obj[k] for k in _TOP if k in obj} | {k: v for k, v in obj.items() if k not in _TOP}
    meta = out.get("metadata")
    if isinstance(meta, Mapping):
        out["metadata"] = {k: meta[k] for k in _METADATA if k in meta} | {
            k: v for k, v in meta.items() if k not in _METADATA
        }
    return out


class _Dumper(yaml.SafeDumper):
    # Lists indented under their key, as kubectl and most manifests print them.
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML: apiVersion, kind, metadata, spec first; the rest as built (not sorted)."""
    return yaml.dump_all(
        [_ordered(o) for o in objects],
        Dumper=_Dumper,
        sort_keys=False,
        explicit_start=True,
        width=1000,  # PromQL queries stay on one line
    )
