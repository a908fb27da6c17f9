"""The pod template of one engine process: its container (image, command, flags from the engine
adapter, probes, resources), the model volume and /dev/shm. Pure: plain dicts out.

A workload passes a `Pod`: which role and topology rank this pod plays, and its share of the
instance's resources (a multiNode instance spreads its CPUs, memory and GPUs evenly over its pods)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tideserve.backends import adapter_for
from tideserve.backends.base import LaunchContext, Role, Topology
from tideserve.platforms.kubernetes.settings import KubeSettings, ModelSource, Placement
from tideserve.services.spec import format_quantity, parse_quantity

MODEL_DIR = "/models"
HTTP_PORT_NAME = "http"  # the Service, the probes and the PodMonitor all find the engine by this name
GPU_RESOURCE = "nvidia.com/gpu"
# The built-in engine finishes in-flight requests on SIGTERM (vLLM and SGLang too); long streams need
# this long, and a pod killed sooner cuts them off mid-answer.
TERMINATION_GRACE_S = 120
# EndpointSlices and the gateway learn of a terminating pod a moment after the kubelet signals it:
# while they catch up the engine must still accept the requests they send.
PRESTOP_SLEEP_S = 10


@dataclass(frozen=True)
class Pod:
    """One pod of an instance: single-node instances have one, multiNode ones `nodes` (rank 0 serves
    HTTP, the others are workers of its distributed runtime)."""

    labels: Mapping[str, str]
    role: Role = "both"
    topology: Topology = field(default_factory=Topology)
    serves_http: bool = True


def pod_template(
    pod: Pod,
    service: str,
    spec: Mapping[str, Any],
    model: ModelSource,
    settings: KubeSettings,
    placement: Placement,
) -> dict[str, Any]:
    """A PodTemplateSpec for one engine pod of the service whose document `spec` body is given."""
    volumes, mounts, init, env, model_ref = _model_volume(model, settings)
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}})
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    body: dict[str, Any] = {
        # A Service named like an engine (vllm, say) would otherwise inject VLLM_PORT=tcp://... into
        # every pod of the namespace, which vLLM reads as its own setting and fails on.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
    }
    if init:
        body["initContainers"] = init
    body["containers"] = [_engine_container(pod, service, spec, model_ref, env, mounts, settings)]
    body["volumes"] = volumes
    if placement.node_selector:
        body["nodeSelector"] = dict(sorted(placement.node_selector.items()))
    if placement.tolerations:
        body["tolerations"] = [dict(t) for t in placement.tolerations]
    if settings.image_pull_secrets:
        body["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return {"metadata": {"labels": dict(pod.labels)}, "spec": body}


def _engine_container(
    pod: Pod,
    service: str,
    spec: Mapping[str, Any],
    model_ref: str,
    model_env: dict[str, str],
    mounts: list[dict[str, Any]],
    settings: KubeSettings,
) -> dict[str, Any]:
    engine = spec["engine"]["name"]
    adapter = adapter_for(engine)
    port = int(spec["access"]["targetPort"])
    ctx = LaunchContext(service, model_ref, spec, port, "0.0.0.0", pod.role, pod.topology)
    # The user's env wins over ours (they may point HF_HOME elsewhere on purpose).
    values: dict[str, dict[str, Any]] = {k: {"value": v} for k, v in model_env.items()}
    values |= _kv_transfer_env(engine, pod.role)
    values |= {k: {"value": v} for k, v in spec.get("env", {}).items()}
    container: dict[str, Any] = {
        "name": "engine",
        # The cluster's own image for the engine wins (a mirror, a patched build); else the release
        # spec.engine.version names, else the one the adapter targets.
        "image": settings.images.get(engine) or adapter.image_for(spec["engine"].get("version", "")),
        "command": adapter.program("container"),
        "args": adapter.args(ctx),
    }
    if values:
        container["env"] = [{"name": k, **v} for k, v in sorted(values.items())]
    if pod.serves_http:
        # Workers of a multiNode instance serve no HTTP: without the named port the PodMonitor does
        # not scrape them, and without probes the kubelet does not restart them for it.
        container["ports"] = [{"name": HTTP_PORT_NAME, "containerPort": port, "protocol": "TCP"}]
    container["resources"] = _resources(spec["resources"], pod.topology.nodes)
    if pod.serves_http:
        container.update(_probes(adapter.health_path))
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}}
    container["volumeMounts"] = mounts
    return container


def _kv_transfer_env(engine: str, role: Role) -> dict[str, dict[str, Any]]:
    """vLLM's NIXL side channel (where the decode side fetches the prefill side's KV-cache layout)
    advertises VLLM_NIXL_SIDE_CHANNEL_HOST, localhost unless set: across pods it must be the pod's
    IP. The adapter contract computes flags only, so this environment is set here."""
    if engine != "vllm" or role == "both":
        return {}
    return {"VLLM_NIXL_SIDE_CHANNEL_HOST": {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}}


def _resources(resources: Mapping[str, Any], nodes: int) -> dict[str, Any]:
    """This pod's share of the instance's resources. No CPU limit: CFS quota throttles an engine's
    busy scheduling loop in bursts, which shows up as TTFT/TPOT spikes; memory and GPUs are limited
    at their request (a memory limit above it only invites OOM kills of neighbours)."""
    cpu = _cpu(float(resources["cpu"]) / nodes)
    memory = format_quantity(parse_quantity(resources["memory"]) // nodes)
    gpus = int(resources.get("gpus", 0)) // nodes
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def _cpu(cores: float) -> str:
    if cores.is_integer():
        return str(int(cores))
    return f"{math.ceil(cores * 1000)}m"  # rounds up: a share never falls below what the spec asked


def _probes(health_path: str) -> dict[str, Any]:
    def get(period: int, timeout: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": health_path, "port": HTTP_PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": failures,
        }

    return {
        # Loading (and for s3/remote models, the engine's own download) can take long: up to
        # 10 s × 180 = 30 min before the kubelet gives up; liveness only starts after.
        "startupProbe": get(10, 5, 180),
        "readinessProbe": get(5, 5, 3),
        # Generous: a busy engine answers /health late, and a restart costs a full model load.
        "livenessProbe": get(15, 10, 6),
    }


def _model_volume(
    model: ModelSource, settings: KubeSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, str], str]:
    """(volumes, engine mounts, init containers, engine env, the model reference the engine gets)."""
    if model.kind == "pvc":
        if not settings.model_pvc:
            raise ValueError(
                f"model {model.uri!r} is on the cluster's model PVC, but the cluster sets none: "
                "set modelPvc in the cluster's settings"
            )
        volume = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": settings.model_pvc, "readOnly": True},
        }
        mount = {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}
        return [volume], [mount], [], {}, f"{MODEL_DIR}/{model.uri.strip('/')}"
    cache = {"name": "model", "hostPath": {"path": settings.model_cache_dir, "type": "DirectoryOrCreate"}}
    if model.kind == "s3":
        path = f"{MODEL_DIR}/{s3_cache_key(model.uri)}"
        mount = {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}
        return [cache], [mount], [_s3_pull(model.uri, path, settings)], {}, path
    # remote: the engine downloads it; HF_HOME on the node cache lets a pod recreated on the same
    # node (a restart, a rollout) reuse the download instead of fetching gigabytes again.
    mount = {"name": "model", "mountPath": MODEL_DIR}
    return [cache], [mount], [], {"HF_HOME": f"{MODEL_DIR}/huggingface"}, model.uri


def s3_cache_key(uri: str) -> str:
    """Where an s3:// model lands in the node cache: s3://bucket/a/b/ -> s3/bucket/a/b."""
    if not uri.startswith("s3://") or not uri[len("s3://") :].strip("/"):
        raise ValueError(f"{uri!r} is not an s3:// URI of a model: write s3://bucket/path")
    parts = [p for p in uri[len("s3://") :].split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri!r} has a '.' or '..' segment: it would land outside the model cache")
    return "/".join(["s3", *parts])


def _s3_pull(uri: str, path: str, settings: KubeSettings) -> dict[str, Any]:
    # `sync` copies only what changed, so a pod restarted on a node with the model cached starts at
    # once; pods of one node syncing the same model at once write identical files.
    container: dict[str, Any] = {
        "name": "pull-model",
        "image": settings.s3_pull_image,
        "command": ["aws", "s3", "sync", "--no-progress", uri.rstrip("/") + "/", path],
    }
    if settings.s3_secret:
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for an S3-compatible store.
        container["envFrom"] = [{"secretRef": {"name": settings.s3_secret}}]
    container["resources"] = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    container["volumeMounts"] = [{"name": "model", "mountPath": MODEL_DIR}]
    return container
