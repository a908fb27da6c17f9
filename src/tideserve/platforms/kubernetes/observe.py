"""Reading a cluster back: pods, EndpointSlice entries and nodes as small views, and a pod as a
tideserve instance state with a message that says what to change. Pure functions over the API's JSON
(plain dicts, exactly as the server sends them), so they are table-tested on recorded responses;
api.py does the I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from tideserve.platforms.kubernetes.settings import LABEL_REVISION, LABEL_ROLE
from tideserve.services.rollout import DRAINING, FAILED, PENDING, RUNNING, STARTING, STOPPED
from tideserve.services.spec import parse_quantity

# NVIDIA GPU feature discovery labels (set by the GPU operator / the device plugin's GFD).
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU

# Waiting reasons the kubelet keeps retrying but that need a person (or a spec change) to fix.
_FAILING_WAITS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
_IMAGE_WAITS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}


# --- views -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool  # the pod's Ready condition
    ip: str | None = None
    node: str | None = None
    revision: int | None = None
    role: str | None = None
    restarts: int = 0  # all of the pod's containers together
    container: str | None = None  # the container the fields below describe (the one in trouble)
    container_state: str | None = None  # waiting | running | terminated
    waiting_reason: str | None = None  # ContainerCreating, CrashLoopBackOff, ImagePullBackOff ...
    waiting_message: str | None = None
    terminated_reason: str | None = None  # the current or else the last termination: OOMKilled, Error
    exit_code: int | None = None
    termination_message: str | None = None
    unschedulable: str | None = None  # the scheduler's message while PodScheduled is False
    reason: str | None = None  # pod-level (Evicted, ...)
    message: str | None = None
    started_at: datetime | None = None
    deleting_at: datetime | None = None  # metadata.deletionTimestamp: the pod is terminating


@dataclass(frozen=True)
class EndpointView:
    """One address of an EndpointSlice: what the gateway may send to."""

    address: str
    port: int | None  # the slice's port named http
    ready: bool
    serving: bool
    terminating: bool
    pod: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str  # NoSchedule | PreferNoSchedule | NoExecute


@dataclass(frozen=True)
class NodeView:
    name: str
    address: str | None  # InternalIP, else Hostname
    cpu_millis: int  # allocatable
    memory_bytes: int  # allocatable
    gpus: int  # allocatable nvidia.com/gpu
    gpu_product: str | None = None
    gpu_memory_mib: int | None = None  # per GPU
    ready: bool = False
    unschedulable: bool = False  # cordoned
    taints: tuple[Taint, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


# --- quantities ------------------------------------------------------------------------------------

_CPU_SUFFIX = {"": Decimal(1000), "m": Decimal(1), "u": Decimal("0.001"), "n": Decimal("0.000001")}


def parse_cpu(value: str | int | float) -> int:
    """Millicores in a Kubernetes CPU quantity ("500m" -> 500, "2" -> 2000, "1.5" -> 1500)."""
    text = str(value).strip()
    suffix = text[-1] if text and text[-1] in "mun" else ""
    try:
        millis = Decimal(text[: len(text) - len(suffix)]) * _CPU_SUFFIX[suffix]
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a CPU quantity (e.g. 2, 1.5, 500m)") from None
    # The API rounds fractions of a millicore up; a smaller request is still a request.
    return int(millis.to_integral_value(rounding="ROUND_CEILING"))


def parse_memory(value: str | int) -> int:
    """Bytes in a Kubernetes memory quantity. The API may print milli-bytes ("1288490188800m") for
    memory computed as a fraction; those round down, everything else goes through the spec's parser."""
    if isinstance(value, str) and value.endswith("m") and value[:-1].isdigit():
        return int(value[:-1]) // 1000
    return parse_quantity(value)


# --- parsing ---------------------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    # RFC 3339 as the API writes it ("2026-11-29T16:24:25Z"); fromisoformat reads the Z since 3.11.
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _is_true(condition: Mapping[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "True"


def _completed(container: Mapping[str, Any]) -> bool:
    terminated = (container.get("state") or {}).get("terminated")
    return terminated is not None and terminated.get("exitCode") == 0


def _troubled_container(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The container whose state explains the pod: an unfinished init container while the pod is not
    initialized (the s3 copy, say), else the first main container that is not ready, else the first."""
    if not _is_true(_condition(status, "Initialized")):
        for c in status.get("initContainerStatuses") or []:
            if not _completed(c):
                return c
    main = status.get("containerStatuses") or []
    return next((c for c in main if not c.get("ready")), main[0] if main else None)


def _revision(labels: Mapping[str, str]) -> int | None:
    value = labels.get(LABEL_REVISION)
    return int(value) if value is not None and value.isdigit() else None


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    labels = meta.get("labels") or {}
    scheduled = _condition(status, "PodScheduled")
    container = _troubled_container(status) or {}
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        phase=status.get("phase", "Pending"),
        ready=_is_true(_condition(status, "Ready")),
        ip=status.get("podIP"),
        node=spec.get("nodeName"),
        revision=_revision(labels),
        role=labels.get(LABEL_ROLE),
        restarts=sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or []),
        container=container.get("name"),
        container_state=next((k for k in ("waiting", "running", "terminated") if k in state), None),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        terminated_reason=terminated.get("reason"),
        exit_code=terminated.get("exitCode"),
        termination_message=terminated.get("message"),
        unschedulable=(
            scheduled.get("message") or scheduled.get("reason")
            if scheduled is not None and scheduled.get("status") == "False"
            else None
        ),
        reason=status.get("reason"),
        message=status.get("message"),
        started_at=_time(status.get("startTime")),
        deleting_at=_time(meta.get("deletionTimestamp")),
    )


def endpoint_views(endpoint_slice: Mapping[str, Any], port_name: str = "http") -> list[EndpointView]:
    """The addresses of one discovery.k8s.io/v1 EndpointSlice, with the API's defaults for absent
    conditions: ready unknown counts as ready, serving unknown follows ready, terminating unknown is not."""
    ports = endpoint_slice.get("ports") or []
    named = next((p for p in ports if p.get("name") == port_name), None)
    # A Service with a single unnamed port yields a slice port named "": that one is the port too.
    if named is None and len(ports) == 1 and not ports[0].get("name"):
        named = ports[0]
    port = named.get("port") if named else None
    views = []
    for ep in endpoint_slice.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False
        serving = cond["serving"] if cond.get("serving") is not None else ready
        target = ep.get("targetRef") or {}
        views += [
            EndpointView(
                address=address,
                port=port,
                ready=ready,
                serving=serving,
                terminating=cond.get("terminating") is True,
                pod=target.get("name") if target.get("kind", "Pod") == "Pod" else None,
                node=ep.get("nodeName"),
            )
            for address in ep.get("addresses") or []
        ]
    return views


def node_view(node: Mapping[str, Any]) -> NodeView:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels = meta.get("labels") or {}
    allocatable = status.get("allocatable") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    gpu_memory = labels.get(GPU_MEMORY_LABEL, "")
    return NodeView(
        name=meta.get("name", ""),
        address=addresses.get("InternalIP") or addresses.get("Hostname"),
        cpu_millis=parse_cpu(allocatable.get("cpu", "0")),
        memory_bytes=parse_memory(allocatable.get("memory", "0")),
        gpus=int(allocatable.get(GPU_RESOURCE, "0")),
        gpu_product=labels.get(GPU_PRODUCT_LABEL),
        gpu_memory_mib=int(gpu_memory) if gpu_memory.isdigit() else None,
        ready=_is_true(_condition(status, "Ready")),
        unschedulable=bool(spec.get("unschedulable")),
        taints=tuple(
            Taint(t.get("key", ""), t.get("value"), t.get("effect", "")) for t in spec.get("taints") or []
        ),
        labels=dict(labels),
    )


# --- instance state --------------------------------------------------------------------------------


def _oom_message(pod: PodView) -> str:
    return (
        f"container {pod.container} was killed for going over its memory limit (OOMKilled, "
        f"{pod.restarts} restarts): raise resources.memory in the service spec, "
        "or lower maxModelLen / maxBatchSize"
    )


def _exit_message(pod: PodView) -> str:
    detail = f": {pod.termination_message.strip()}" if pod.termination_message else ""
    return f"container {pod.container} exited with code {pod.exit_code} ({pod.terminated_reason}){detail}"


def _waiting_failure(pod: PodView) -> str:
    reason = pod.waiting_reason
    if reason == "CrashLoopBackOff":
        if pod.terminated_reason == "OOMKilled":
            return _oom_message(pod)
        return f"crash loop ({pod.restarts} restarts); last: " + _exit_message(pod)
    detail = f": {pod.waiting_message}" if pod.waiting_message else ""
    if reason in _IMAGE_WAITS:
        return f"cannot pull the image ({reason}){detail}: check the engine image and imagePullSecrets"
    return f"container {pod.container} cannot start ({reason}){detail}"


def _pending_message(pod: PodView) -> str:
    if pod.node is None:
        return "waiting for the scheduler"
    if pod.waiting_reason == "PodInitializing" or (pod.container_state == "running" and not pod.ready):
        return f"init container {pod.container} running (copying the model)"
    if pod.waiting_reason == "ContainerCreating":
        return f"creating the containers on {pod.node} (pulling the image)"
    return f"{pod.waiting_reason or 'starting'} on {pod.node}"


def instance_state(pod: PodView, endpoint_ready: bool | None) -> tuple[str, str]:
    """The tideserve instance state of a pod and why. `endpoint_ready` is whether the pod's address is
    serving in its Service's EndpointSlice (None: no entry for it, e.g. before the endpoint controller
    has seen it): a ready pod counts as Running only once the gateway can find it there."""
    if pod.deleting_at is not None:
        return DRAINING, "terminating: the engine finishes in-flight requests, then exits"
    if pod.phase == "Succeeded":
        return STOPPED, "exited"
    if pod.phase == "Failed":
        if pod.terminated_reason == "OOMKilled":
            return FAILED, _oom_message(pod)
        if pod.reason or pod.message:
            return FAILED, f"{pod.reason or 'Failed'}: {pod.message or ''}".rstrip(": ")
        return FAILED, _exit_message(pod)
    if pod.phase == "Unknown":
        return FAILED, f"node {pod.node} stopped reporting on this pod"
    if pod.waiting_reason in _FAILING_WAITS:
        return FAILED, _waiting_failure(pod)
    if pod.container_state == "terminated":
        return FAILED, _oom_message(pod) if pod.terminated_reason == "OOMKilled" else _exit_message(pod)
    if pod.unschedulable is not None:
        return PENDING, f"unschedulable: {pod.unschedulable}"
    if pod.phase == "Pending":
        return PENDING, _pending_message(pod)
    if not pod.ready:
        restarted = f" (restarted {pod.restarts} times)" if pod.restarts else ""
        return STARTING, f"loading the model: waiting for /health{restarted}"
    if endpoint_ready is False:
        return STARTING, "ready; not yet serving in the Service's endpoints"
    return RUNNING, "ready"
