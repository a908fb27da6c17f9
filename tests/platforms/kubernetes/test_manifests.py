"""The renderer: a matrix of service specs, each compared with a reviewed golden YAML file
(TIDESERVE_UPDATE_GOLDEN=1 rewrites them) and validated against the Kubernetes OpenAPI schemas of
1.25 to 1.32 in strict mode (unknown fields fail); then table tests of the small pure pieces."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tideserve.autoscaler.policy import Schedule
from tideserve.backends import ADAPTERS
from tideserve.backends.builtin import METRIC_NAMES as BUILTIN_NAMES
from tideserve.platforms.kubernetes.autoscaling import (
    cron_trigger,
    gateway_queue_query,
    hpa_metric,
    metric_query,
    quantity,
    shift_cron,
)
from tideserve.platforms.kubernetes.manifests import render, to_yaml
from tideserve.platforms.kubernetes.naming import LABEL_WORKLOAD, object_name
from tideserve.platforms.kubernetes.pods import s3_cache_key
from tideserve.platforms.kubernetes.settings import (
    LABEL_COMPONENT,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SERVICE,
    KubeSettings,
    ModelSource,
    Placement,
    RenderInput,
)
from tideserve.services import spec as specs

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TIDESERVE_UPDATE_GOLDEN") == "1"
VERSIONS = [f"1.{minor}.0" for minor in range(25, 33)]
BUILTIN_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
NS = "inference"
# What KEDA requires in each trigger's metadata.
TRIGGER_KEYS = {
    "prometheus": {"serverAddress", "query", "threshold"},
    "cron": {"timezone", "start", "end", "desiredReplicas"},
}


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def document(name: str, **spec: Any) -> dict[str, Any]:
    """A real service document: parsed, validated, defaults applied, dumped as the store keeps it."""
    body = merge({"model": "qwen2.5-7b-instruct"}, spec)
    parsed = specs.parse_service_document({"metadata": {"name": name}, "spec": body})
    return specs.to_document(specs.apply_defaults(parsed, 32768))


GPU = {"engine": {"name": "vllm"}, "resources": {"cpu": 8, "memory": "64Gi", "gpus": 1}}
PVC = ModelSource("pvc", "qwen2.5-7b-instruct")
PVC_405B = ModelSource("pvc", "llama3.1-405b-instruct")
HF = ModelSource("remote", "Qwen/Qwen2.5-7B-Instruct")
S3 = ModelSource("s3", "s3://models/qwen2.5-7b-instruct/")
PVC_SETTINGS = KubeSettings(namespace=NS, model_pvc="models")
GPU_NODES = Placement(
    node_selector={"tideserve.io/resource-group": "a100"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
)
TARGETS = [
    {"metric": "waitingPerReplica", "value": 4},
    {"metric": "kvCacheUsage", "value": 0.8},
    {"metric": "ttftP90", "value": 1.5},
    {"metric": "requestsPerSecond", "value": 10},
    {"metric": "gpuUtilization", "value": 0.9},
]
SCHEDULE = {"start": "0 8 * * 1-5", "end": "0 20 * * 1-5", "timezone": "Asia/Shanghai", "minReplicas": 3}


@dataclass(frozen=True)
class Case:
    document: dict[str, Any]
    model: ModelSource = HF
    settings: KubeSettings = field(default_factory=lambda: KubeSettings(namespace=NS))
    placement: Placement = field(default_factory=Placement)
    stable: tuple[int, dict[str, Any]] | None = None
    revision: int = 1

    @property
    def engine(self) -> str:
        return self.document["spec"]["engine"]["name"]

    def input(self) -> RenderInput:
        return RenderInput(
            self.document, self.revision, self.model, self.settings, self.placement, self.stable
        )


def _cases() -> dict[str, Case]:
    stable_doc = document("chat", **GPU, parameters={"maxBatchSize": 32})
    canary = {"canary": {"stableRevision": 2, "stableReplicas": 1, "weight": 10}}
    canary_doc = document("chat", **GPU, replicas=2, parameters={"maxBatchSize": 64}, routing=canary)
    return {
        "builtin-cpu": Case(
            document("tiny", model="smollm2-135m-instruct", resources={"cpu": 2, "memory": "4Gi"})
        ),
        "vllm-1gpu-pvc": Case(document("chat", **GPU, env={"VLLM_LOGGING_LEVEL": "INFO"}), PVC, PVC_SETTINGS),
        "vllm-tp4": Case(
            document(
                "chat-large",
                model="qwen2.5-72b-instruct",
                engine={"name": "vllm"},
                resources={"cpu": 32, "memory": "256Gi", "gpus": 4},
                parameters={"tpSize": 4, "maxModelLen": 16384},
                replicas=2,
            ),
            settings=KubeSettings(
                namespace=NS,
                images={"vllm": "registry.example.com/vllm/vllm-openai:v0.10.1"},
                image_pull_secrets=("registry",),
                shm_size="32Gi",
            ),
            model=ModelSource("remote", "Qwen/Qwen2.5-72B-Instruct"),
            placement=GPU_NODES,
        ),
        "vllm-multinode": Case(
            document(
                "chat-405b",
                model="llama3.1-405b-instruct",
                engine={"name": "vllm"},
                resources={"cpu": 64, "memory": "1Ti", "gpus": 16},
                parameters={"tpSize": 8, "ppSize": 2},
                deployment={"mode": "multiNode", "nodesPerInstance": 2},
            ),
            PVC_405B,
            PVC_SETTINGS,
            GPU_NODES,
        ),
        "sglang-multinode-keda": Case(
            document(
                "chat-405b",
                model="llama3.1-405b-instruct",
                engine={"name": "sglang"},
                resources={"cpu": 64, "memory": "1Ti", "gpus": 16},
                parameters={"tpSize": 16},
                deployment={"mode": "multiNode", "nodesPerInstance": 2},
                autoscaling={"minReplicas": 1, "maxReplicas": 3, "targets": [TARGETS[0]]},
            ),
            PVC_405B,
            PVC_SETTINGS,
            GPU_NODES,
        ),
        "sglang-pd-keda": Case(
            document(
                "chat-pd",
                engine={"name": "sglang"},
                resources={"cpu": 8, "memory": "64Gi", "gpus": 1},
                deployment={"mode": "pdDisaggregated", "prefillReplicas": 1, "decodeReplicas": 2},
                autoscaling={"minReplicas": 1, "maxReplicas": 4, "targets": TARGETS[:3]},
            ),
            settings=KubeSettings(namespace=NS, autoscaler="keda"),
        ),
        "vllm-pd": Case(
            document(
                "chat-pd",
                **GPU,
                replicas=2,
                deployment={"mode": "pdDisaggregated", "prefillReplicas": 2, "decodeReplicas": 1},
            ),
            PVC,
            PVC_SETTINGS,
        ),
        "external-access": Case(
            document(
                "tiny",
                model="smollm2-135m-instruct",
                access={"servicePort": 80, "targetPort": 60001, "exposure": "external"},
            )
        ),
        "vllm-hpa": Case(
            document(
                "chat",
                **GPU,
                autoscaling={
                    "minReplicas": 2,
                    "maxReplicas": 8,
                    "targets": TARGETS,
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
                },
            ),
            PVC,
            KubeSettings(namespace=NS, model_pvc="models", autoscaler="hpa"),
        ),
        "vllm-hpa-zero-schedules": Case(
            document(
                "chat",
                **GPU,
                autoscaling={
                    "minReplicas": 0,
                    "maxReplicas": 4,
                    "targets": TARGETS[:1],
                    "tolerance": 0.2,
                    "schedules": [SCHEDULE],
                },
            ),
            PVC,
            KubeSettings(namespace=NS, model_pvc="models", autoscaler="hpa"),
        ),
        "vllm-keda": Case(
            document(
                "chat",
                **GPU,
                autoscaling={
                    "minReplicas": 1,
                    "maxReplicas": 8,
                    "targets": TARGETS,
                    "behavior": {
                        "scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}
                    },
                    "schedules": [{**SCHEDULE, "prewarmSeconds": 600}],
                },
            ),
            PVC,
            PVC_SETTINGS,
        ),
        "keda-scale-to-zero": Case(
            document(
                "tiny",
                model="smollm2-135m-instruct",
                autoscaling={
                    "minReplicas": 0,
                    "maxReplicas": 2,
                    "idleToZeroSeconds": 900,
                    "targets": [{"metric": "runningPerReplica", "value": 16}],
                },
            )
        ),
        "canary-gateway": Case(canary_doc, PVC, PVC_SETTINGS, stable=(2, stable_doc), revision=3),
        "canary-istio": Case(
            canary_doc,
            PVC,
            KubeSettings(namespace=NS, model_pvc="models", istio=True),
            stable=(2, stable_doc),
            revision=3,
        ),
        "s3-model": Case(
            document("chat", **GPU),
            S3,
            KubeSettings(namespace=NS, s3_secret="model-store", model_cache_dir="/mnt/nvme/tideserve"),
        ),
    }


CASES = _cases()


def _skip_without_adapter(case: Case) -> None:
    # vllm/sglang adapters are written alongside; until registered their cases cannot render.
    if case.engine not in ADAPTERS:
        pytest.skip(f"no {case.engine} adapter registered yet")


def golden_text(case: Case) -> str:
    rendered = render(case.input())
    head = [f"# warning: {w}" for w in rendered.warnings]
    return "".join(line + "\n" for line in head) + to_yaml(rendered.objects)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    case = CASES[name]
    _skip_without_adapter(case)
    path = GOLDEN / f"{name}.yaml"
    text = golden_text(case)
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with TIDESERVE_UPDATE_GOLDEN=1 and review it"
    if path.read_text() != text:
        pytest.fail(
            f"{path} differs from the rendering: review the change, then regenerate with "
            "TIDESERVE_UPDATE_GOLDEN=1"
        )


def test_rendering_is_deterministic() -> None:
    case = CASES["canary-istio"]
    _skip_without_adapter(case)
    assert golden_text(case) == golden_text(case)


# --- schema validation ---------------------------------------------------------------------------


def _pod_templates(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if obj["kind"] == "Deployment":
        yield obj["spec"]["template"]
    if obj["kind"] == "LeaderWorkerSet":
        yield obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        yield obj["spec"]["leaderWorkerTemplate"]["workerTemplate"]


def _as_deployment(template: Mapping[str, Any]) -> dict[str, Any]:
    """A pod template of a custom resource inside a Deployment, so that the Kubernetes schema (which
    knows PodTemplateSpec, not LeaderWorkerSet) checks every field of it."""
    labels = template["metadata"]["labels"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "template-check", "namespace": NS},
        "spec": {"selector": {"matchLabels": labels}, "template": template},
    }


def _validate(obj: Mapping[str, Any]) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} fails Kubernetes {version}: {path}: {e.message}"
            )


@pytest.mark.parametrize("name", sorted(CASES))
def test_objects_validate_against_kubernetes_schemas(name: str) -> None:
    case = CASES[name]
    _skip_without_adapter(case)
    for obj in render(case.input()).objects:
        if obj["kind"] in BUILTIN_KINDS:
            _validate(obj)
        else:
            # kubernetes_validate has no schema for custom resources: their pod templates go through
            # a Deployment wrapper; their own fields are checked in test_custom_resources.
            for template in _pod_templates(obj):
                _validate(_as_deployment(template))


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _has_http_port(template: Mapping[str, Any]) -> bool:
    ports = template["spec"]["containers"][0].get("ports", [])
    return any(p["name"] == "http" for p in ports)


@pytest.mark.parametrize("name", sorted(CASES))
def test_custom_resources_and_cross_references(name: str) -> None:
    """What no schema checks: the custom resources' required fields, and that selectors, names and
    ports refer to what was rendered."""
    case = CASES[name]
    _skip_without_adapter(case)
    objects = render(case.input()).objects
    service = case.document["metadata"]["name"]
    templates = [t for o in objects for t in _pod_templates(o)]
    workloads = {o["metadata"]["name"]: o for o in objects if o["kind"] in ("Deployment", "LeaderWorkerSet")}
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == NS and len(meta["name"]) <= 63
        assert meta["labels"][LABEL_SERVICE] == service
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tideserve"
    for template in templates:
        labels = template["metadata"]["labels"]
        assert {LABEL_REVISION, LABEL_ROLE, LABEL_COMPONENT, LABEL_WORKLOAD} <= labels.keys()
    for obj in objects:
        kind, spec = obj["kind"], obj["spec"]
        if kind == "Deployment":
            assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
        elif kind == "LeaderWorkerSet":
            lwt = spec["leaderWorkerTemplate"]
            assert lwt["size"] >= 2 and _has_http_port(lwt["leaderTemplate"])
            assert not _has_http_port(lwt["workerTemplate"])
        elif kind == "Service":
            chosen = [t for t in templates if _selects(spec["selector"], t["metadata"]["labels"])]
            assert chosen and all(_has_http_port(t) for t in chosen), f"Service {obj['metadata']['name']}"
        elif kind == "PodDisruptionBudget":
            assert all(_selects(spec["selector"]["matchLabels"], t["metadata"]["labels"]) for t in templates)
        elif kind == "PodMonitor":
            chosen = [
                t for t in templates if _selects(spec["selector"]["matchLabels"], t["metadata"]["labels"])
            ]
            assert chosen and all(_has_http_port(t) for t in chosen)
            assert spec["podMetricsEndpoints"][0]["port"] == "http"
        elif kind == "ScaledObject":
            target = spec["scaleTargetRef"]
            assert workloads[target["name"]]["kind"] == target["kind"]
            assert "replicas" not in workloads[target["name"]]["spec"]
            assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] and spec["triggers"]
            for trigger in spec["triggers"]:
                assert trigger["type"] in ("prometheus", "cron") and trigger["name"]
                assert TRIGGER_KEYS[trigger["type"]] <= trigger["metadata"].keys()
        elif kind == "HorizontalPodAutoscaler":
            assert "replicas" not in workloads[spec["scaleTargetRef"]["name"]]["spec"]
        elif kind == "DestinationRule":
            subsets = {s["name"]: s["labels"] for s in spec["subsets"]}
            for subset_labels in subsets.values():
                assert any(_selects(subset_labels, t["metadata"]["labels"]) for t in templates)
        elif kind == "VirtualService":
            routes = spec["http"][0]["route"]
            assert sum(r["weight"] for r in routes) == 100
            assert all(r["destination"]["host"] == spec["hosts"][0] for r in routes)


# --- the shape of particular cases ---------------------------------------------------------------


def _objects(name: str) -> list[dict[str, Any]]:
    case = CASES[name]
    _skip_without_adapter(case)
    return render(case.input()).objects


def _engine(obj: Mapping[str, Any], template: str = "") -> Mapping[str, Any]:
    pod = obj["spec"]["leaderWorkerTemplate"][template] if template else obj["spec"]["template"]
    return pod["spec"]["containers"][0]


def test_order_is_workloads_services_budget_monitor_autoscalers_istio() -> None:
    kinds = [o["kind"] for o in _objects("canary-istio")]
    assert kinds == [
        "Deployment",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
        "DestinationRule",
        "VirtualService",
    ]
    pd = [o["kind"] for o in _objects("sglang-pd-keda")]
    services = ["Service", "Service"]  # the client one, and the headless one of the prefill pods
    assert pd == [
        "Deployment",
        "Deployment",
        *services,
        "PodDisruptionBudget",
        "PodMonitor",
        *["ScaledObject"] * 2,
    ]


def test_gpu_counts_per_pod() -> None:
    tp4 = _objects("vllm-tp4")[0]
    assert _engine(tp4)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    lws = _objects("vllm-multinode")[0]
    for template in ("leaderTemplate", "workerTemplate"):
        resources = _engine(lws, template)["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "8"
        assert resources["requests"]["cpu"] == "32" and resources["requests"]["memory"] == "512Gi"
        assert "cpu" not in resources["limits"]
    cpu = _objects("builtin-cpu")[0]
    assert "nvidia.com/gpu" not in _engine(cpu)["resources"]["requests"]


def test_replicas() -> None:
    prefill, decode = _objects("vllm-pd")[:2]
    assert (prefill["metadata"]["name"], prefill["spec"]["replicas"]) == ("chat-pd-prefill", 4)
    assert (decode["metadata"]["name"], decode["spec"]["replicas"]) == ("chat-pd-decode", 2)
    current, stable = _objects("canary-gateway")[:2]
    assert (current["metadata"]["name"], current["spec"]["replicas"]) == ("chat", 2)
    assert (stable["metadata"]["name"], stable["spec"]["replicas"]) == ("chat-r2", 1)
    assert stable["spec"]["template"]["metadata"]["labels"][LABEL_REVISION] == "2"
    lws = _objects("vllm-multinode")[0]
    assert (lws["metadata"]["name"], lws["spec"]["replicas"]) == ("chat-405b-lws", 1)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2


def test_services_by_exposure_and_role() -> None:
    external = next(o for o in _objects("external-access") if o["kind"] == "Service")
    assert external["spec"]["type"] == "LoadBalancer"
    assert external["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    deployment = _objects("external-access")[0]
    assert _engine(deployment)["ports"][0]["containerPort"] == 60001
    client, prefill = (o for o in _objects("vllm-pd") if o["kind"] == "Service")
    assert client["spec"]["type"] == "ClusterIP" and client["spec"]["selector"][LABEL_ROLE] == "decode"
    assert prefill["spec"]["clusterIP"] == "None" and prefill["spec"]["selector"][LABEL_ROLE] == "prefill"


def test_probes_on_the_engine_health_path() -> None:
    for name in ("builtin-cpu", "vllm-1gpu-pvc", "sglang-pd-keda"):
        case = CASES[name]
        engine = _engine(_objects(name)[0])
        path = ADAPTERS[case.engine].health_path
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert engine[probe]["httpGet"] == {"path": path, "port": "http"}
        assert engine["startupProbe"]["periodSeconds"] * engine["startupProbe"]["failureThreshold"] >= 1800


def test_model_volumes() -> None:
    pvc = _objects("vllm-1gpu-pvc")[0]["spec"]["template"]["spec"]
    assert pvc["volumes"][0] == {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    assert "/models/qwen2.5-7b-instruct" in pvc["containers"][0]["args"]
    s3 = _objects("s3-model")[0]["spec"]["template"]["spec"]
    assert s3["volumes"][0]["hostPath"] == {"path": "/mnt/nvme/tideserve", "type": "DirectoryOrCreate"}
    pull = s3["initContainers"][0]
    assert pull["command"][-2:] == [
        "s3://models/qwen2.5-7b-instruct/",
        "/models/s3/models/qwen2.5-7b-instruct",
    ]
    assert pull["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    assert "/models/s3/models/qwen2.5-7b-instruct" in s3["containers"][0]["args"]
    remote = _objects("builtin-cpu")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HF_HOME", "value": "/models/huggingface"} in remote["env"]
    with pytest.raises(ValueError, match="modelPvc"):
        render(RenderInput(CASES["vllm-1gpu-pvc"].document, 1, PVC, KubeSettings()))


def test_autoscaled_workloads_leave_replicas_to_the_autoscaler() -> None:
    objects = _objects("vllm-keda")
    assert "replicas" not in objects[0]["spec"]
    scaled = objects[-1]
    assert scaled["spec"]["minReplicaCount"] == 1 and "cooldownPeriod" not in scaled["spec"]
    zero = _objects("keda-scale-to-zero")[-1]["spec"]
    assert zero["minReplicaCount"] == 0 and zero["cooldownPeriod"] == 900
    wake = next(t for t in zero["triggers"] if t["name"] == "gateway-queue")
    assert wake["metadata"]["threshold"] == "16"  # one replica per runningPerReplica target of held requests
    pd = [o for o in _objects("sglang-pd-keda") if o["kind"] == "ScaledObject"]
    assert [(o["spec"]["minReplicaCount"], o["spec"]["maxReplicaCount"]) for o in pd] == [(1, 4), (2, 8)]


def test_warnings() -> None:
    case = CASES["vllm-hpa-zero-schedules"]
    _skip_without_adapter(case)
    rendered = render(case.input())
    text = " ".join(rendered.warnings)
    assert "cannot scale to zero" in text and "schedules" in text and "tolerance 0.2" in text
    hpa = rendered.objects[-1]
    assert hpa["kind"] == "HorizontalPodAutoscaler" and hpa["spec"]["minReplicas"] == 1
    assert render(CASES["vllm-keda"].input()).warnings == ()


def test_canary_without_its_stable_revision_renders_the_current_one_with_a_warning() -> None:
    case = CASES["canary-istio"]
    _skip_without_adapter(case)
    rendered = render(RenderInput(case.document, 3, case.model, case.settings))
    assert [o["kind"] for o in rendered.objects].count("Deployment") == 1
    assert "VirtualService" not in [o["kind"] for o in rendered.objects]
    assert "stable revision 2 was not found" in rendered.warnings[0]


def test_canary_across_models_is_refused() -> None:
    case = CASES["canary-gateway"]
    _skip_without_adapter(case)
    other = document("chat", **GPU, model="llama3.1-8b-instruct")
    with pytest.raises(ValueError, match="model source"):
        render(RenderInput(case.document, 3, case.model, case.settings, stable=(2, other)))


# --- small pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "promql", "metric_type"),
    [
        (
            "waiting_per_replica",
            '(sum(vllm:num_requests_waiting{namespace="ns",tideserve_workload="svc"}) or vector(0)) '
            '+ (sum(tideserve_gateway_queued{service="svc"}) or vector(0))',
            "AverageValue",
        ),
        (
            "running_per_replica",
            'sum(vllm:num_requests_running{namespace="ns",tideserve_workload="svc"}) or vector(0)',
            "AverageValue",
        ),
        (
            "kv_cache_usage",
            'sum(vllm:kv_cache_usage_perc{namespace="ns",tideserve_workload="svc"}) or vector(0)',
            "AverageValue",
        ),
        (
            "requests_per_s",
            'sum(rate(vllm:e2e_request_latency_seconds_count{namespace="ns",tideserve_workload="svc"}[1m])) '
            "or vector(0)",
            "AverageValue",
        ),
        (
            "ttft_p90",
            "histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
            '{namespace="ns",tideserve_workload="svc"}[1m]))) > 0 or vector(0)',
            "Value",
        ),
        (
            "gpu_utilization",
            "avg(DCGM_FI_DEV_GPU_UTIL * on (namespace, pod) group_left () max by (namespace, pod) "
            '(kube_pod_labels{namespace="ns",label_tideserve_io_workload="svc"})) / 100 or vector(0)',
            "Value",
        ),
    ],
)
def test_metric_queries(metric: Any, promql: str, metric_type: str) -> None:
    query = metric_query(metric, 2.0, BUILTIN_NAMES, "ns", "svc", "svc")
    assert (query.promql, query.metric_type, query.threshold) == (promql, metric_type, 2.0)


def test_queries_use_the_engines_own_metric_names() -> None:
    if "sglang" not in ADAPTERS:
        pytest.skip("no sglang adapter registered yet")
    names = ADAPTERS["sglang"].metric_names
    query = metric_query("running_per_replica", 8, names, "ns", "svc", "svc")
    assert names["running"][0] in query.promql and "vllm:" not in query.promql


def test_gateway_queue_query() -> None:
    assert gateway_queue_query("chat") == 'sum(tideserve_gateway_queued{service="chat"}) or vector(0)'


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("waiting_per_replica", 4, {"type": "Pods", "pods": {"metric": {"name": "vllm_num_requests_waiting"}, "target": {"type": "AverageValue", "averageValue": "4"}}}),  # noqa: E501
        ("kv_cache_usage", 0.8, {"type": "Pods", "pods": {"metric": {"name": "vllm_kv_cache_usage_perc"}, "target": {"type": "AverageValue", "averageValue": "800m"}}}),  # noqa: E501
        ("requests_per_s", 10, {"type": "Pods", "pods": {"metric": {"name": "vllm_e2e_request_latency_seconds_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}}),  # noqa: E501
        ("gpu_utilization", 0.85, {"type": "Pods", "pods": {"metric": {"name": "DCGM_FI_DEV_GPU_UTIL"}, "target": {"type": "AverageValue", "averageValue": "85"}}}),  # noqa: E501
        ("ttft_p90", 1.5, {"type": "External", "external": {"metric": {"name": "vllm_time_to_first_token_seconds_p90", "selector": {"matchLabels": {"tideserve_workload": "svc"}}}, "target": {"type": "Value", "value": "1500m"}}}),  # noqa: E501
    ],
)  # fmt: skip
def test_hpa_metrics(metric: Any, value: float, expected: dict[str, Any]) -> None:
    assert hpa_metric(metric, value, BUILTIN_NAMES, "svc") == expected


@pytest.mark.parametrize(
    ("expr", "seconds", "shifted"),
    [
        ("0 8 * * 1-5", 300, "55 7 * * 1-5"),
        ("30 8 * * *", 1800, "0 8 * * *"),
        ("0 8 * * *", 90, "58 7 * * *"),  # rounded up to whole minutes: never less pre-warm than asked
        ("10 0 * * *", 1200, "50 23 * * *"),  # past midnight: fine when every day fires
        ("10 0 * * 1-5", 1200, None),  # ...but Monday's would have to move to Sunday
        ("*/15 8 * * *", 300, None),
        ("0 8-10 * * *", 300, None),
        ("0 8 * * *", 0, "0 8 * * *"),
    ],
)
def test_shift_cron(expr: str, seconds: float, shifted: str | None) -> None:
    assert shift_cron(expr, seconds) == shifted


def test_cron_trigger() -> None:
    schedule = Schedule("0 8 * * 1-5", "0 20 * * 1-5", "Asia/Shanghai", 3, prewarm_s=600)
    assert cron_trigger("schedule-0", schedule, per_replica=2) == {
        "type": "cron",
        "name": "schedule-0",
        "metadata": {
            "timezone": "Asia/Shanghai",
            "start": "50 7 * * 1-5",
            "end": "0 20 * * 1-5",
            "desiredReplicas": "6",
        },
    }
    unshiftable = Schedule("*/30 8 * * *", "0 20 * * *", "UTC", 1, prewarm_s=600)
    assert cron_trigger("s", unshiftable)["metadata"]["start"] == "*/30 8 * * *"


@pytest.mark.parametrize(
    ("x", "text"), [(4, "4"), (4.0, "4"), (0.8, "800m"), (1.5, "1500m"), (0.0005, "0.0005")]
)
def test_quantity(x: float, text: str) -> None:
    assert quantity(x) == text


def test_object_names() -> None:
    assert object_name("chat", "r3", "prefill") == "chat-r3-prefill"
    with pytest.raises(ValueError, match="at most 55 characters"):
        object_name("a" * 60, "prefill")
    with pytest.raises(ValueError, match="at most 45 characters"):
        object_name("a" * 46, "lws", limit=49)
    long_name = "a" * 60
    with pytest.raises(ValueError, match="rename the service"):
        render(RenderInput(document(long_name, deployment={"mode": "pdDisaggregated"}), 1, HF))


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("s3://models/qwen/", "s3/models/qwen"),
        ("s3://models//a/b", "s3/models/a/b"),
        ("s3://bucket", "s3/bucket"),
    ],
)
def test_s3_cache_key(uri: str, key: str) -> None:
    assert s3_cache_key(uri) == key


@pytest.mark.parametrize("uri", ["s3://", "https://x/y", "s3://bucket/../etc"])
def test_s3_cache_key_rejects(uri: str) -> None:
    with pytest.raises(ValueError):
        s3_cache_key(uri)


def test_a_metric_the_engine_does_not_publish_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="publishes no 'kv_usage' metric"):
        metric_query("kv_cache_usage", 0.8, {"waiting": ("x",)}, "ns", "svc", "svc")
    with pytest.raises(ValueError, match="publishes no 'e2e' metric"):
        hpa_metric("requests_per_s", 1, {}, "svc")


def test_vllm_pd_pods_advertise_their_own_address_for_kv_transfer() -> None:
    for deployment in _objects("vllm-pd")[:2]:
        env = _engine(deployment)["env"]
        assert {
            "name": "VLLM_NIXL_SIDE_CHANNEL_HOST",
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        } in env
        assert "--kv-transfer-config" in _engine(deployment)["args"]
    assert "env" not in _engine(_objects("vllm-1gpu-pvc")[0]) or all(
        e["name"] != "VLLM_NIXL_SIDE_CHANNEL_HOST" for e in _engine(_objects("vllm-1gpu-pvc")[0])["env"]
    )
