"""The read-back decisions, as tables: pod JSON (shaped as the API returns it) -> PodView -> instance
state; EndpointSlices and nodes -> views; Kubernetes quantities."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tideserve.platforms.kubernetes.observe import (
    EndpointView,
    PodView,
    Taint,
    endpoint_views,
    instance_state,
    node_view,
    parse_cpu,
    parse_memory,
    pod_view,
)
from tideserve.services.rollout import DRAINING, FAILED, PENDING, RUNNING, STARTING, STOPPED

T0 = "2026-11-29T16:00:00Z"


def pod(
    phase: str = "Running",
    *,
    node: str | None = "gpu-1",
    ready: bool = False,
    state: dict[str, Any] | None = None,
    last_state: dict[str, Any] | None = None,
    restarts: int = 0,
    conditions: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    **status: Any,
) -> dict[str, Any]:
    """A pod as GET /api/v1/namespaces/tideserve/pods/{name} returns it, trimmed to what matters."""
    meta: dict[str, Any] = {
        "name": "chat-7d9f8b6c5d-x2x9k",
        "namespace": "tideserve",
        "uid": "0f6c2a54-9a8e-4d3e-9c1b-5b6f7e8d9a0b",
        "resourceVersion": "48213",
        "creationTimestamp": T0,
        "labels": {"tideserve.io/service": "chat", "tideserve.io/revision": "3", "tideserve.io/role": "both"},
    }
    if deleting:
        meta |= {"deletionTimestamp": "2026-11-29T16:05:30Z", "deletionGracePeriodSeconds": 30}
    spec: dict[str, Any] = {"containers": [{"name": "engine", "image": "vllm/vllm-openai:v0.11.0"}]}
    if node:
        spec["nodeName"] = node
    scheduled = [{"type": "PodScheduled", "status": "True" if node else "False"}]
    body: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions
        if conditions is not None
        else [
            *scheduled,
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ],
        **status,
    }
    if node:
        body |= {"hostIP": "10.0.0.11", "podIP": "10.244.1.17", "startTime": T0}
    if state is not None:
        body["containerStatuses"] = [
            {
                "name": "engine",
                "ready": ready,
                "restartCount": restarts,
                "started": "running" in state,
                "image": "vllm/vllm-openai:v0.11.0",
                "imageID": "",
                "state": state,
                "lastState": last_state or {},
            }
        ]
    if init is not None:
        body["initContainerStatuses"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": body}


RUNNING_STATE = {"running": {"startedAt": T0}}
OOM = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": T0, "finishedAt": T0}}
UNSCHEDULABLE = [
    {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
    }
]
INIT_RUNNING = [{"name": "pull-model", "ready": False, "restartCount": 0, "state": RUNNING_STATE}]
INIT_CONDITIONS = [
    {"type": "PodScheduled", "status": "True"},
    {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized"},
    {"type": "Ready", "status": "False"},
]


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


# (pod JSON, the EndpointSlice's ready for it, expected state, a part of the expected message)
CASES = [
    (pod("Pending", node=None, state=None, conditions=[]), None, PENDING, "waiting for the scheduler"),
    (
        pod("Pending", node=None, conditions=UNSCHEDULABLE),
        None,
        PENDING,
        "unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
    ),
    (pod("Pending", state=waiting("ContainerCreating")), None, PENDING, "pulling the image"),
    (
        pod("Pending", state=waiting("PodInitializing"), init=INIT_RUNNING, conditions=INIT_CONDITIONS),
        None,
        PENDING,
        "init container pull-model running (copying the model)",
    ),
    (pod(state=RUNNING_STATE), None, STARTING, "loading the model"),
    (pod(state=RUNNING_STATE, restarts=2), None, STARTING, "restarted 2 times"),
    (pod(state=RUNNING_STATE, ready=True), None, RUNNING, "ready"),
    (pod(state=RUNNING_STATE, ready=True), True, RUNNING, "ready"),
    (pod(state=RUNNING_STATE, ready=True), False, STARTING, "not yet serving"),
    (pod(state=RUNNING_STATE, ready=True, deleting=True), False, DRAINING, "in-flight requests"),
    (pod("Succeeded", state={"terminated": {"exitCode": 0, "reason": "Completed"}}), None, STOPPED, "exited"),
    (
        pod("Failed", state=None, reason="Evicted", message="The node was low on resource: memory."),
        None,
        FAILED,
        "Evicted: The node was low on resource: memory.",
    ),
    (pod("Unknown", state=None), None, FAILED, "node gpu-1 stopped reporting"),
    (
        pod(state=waiting("CrashLoopBackOff", "back-off 40s"), last_state=OOM, restarts=3),
        None,
        FAILED,
        "OOMKilled, 3 restarts): raise resources.memory",
    ),
    (
        pod(
            state=waiting("CrashLoopBackOff"),
            last_state={"terminated": {"exitCode": 1, "reason": "Error", "message": "CUDA out of memory\n"}},
            restarts=5,
        ),
        None,
        FAILED,
        "crash loop (5 restarts); last: container engine exited with code 1 (Error): CUDA out of memory",
    ),
    (pod(state=OOM), None, FAILED, "raise resources.memory"),
    (
        pod("Pending", state=waiting("ImagePullBackOff", 'Back-off pulling image "vllm/vllm:nope"')),
        None,
        FAILED,
        'cannot pull the image (ImagePullBackOff): Back-off pulling image "vllm/vllm:nope": check the engine',
    ),
    (pod("Pending", state=waiting("ErrImagePull")), None, FAILED, "cannot pull the image (ErrImagePull)"),
    (
        pod("Pending", state=waiting("CreateContainerConfigError", 'secret "hf-token" not found')),
        None,
        FAILED,
        'cannot start (CreateContainerConfigError): secret "hf-token" not found',
    ),
    (
        pod(
            "Pending",
            state=waiting("PodInitializing"),
            init=[{"name": "pull-model", "restartCount": 2, "state": waiting("CrashLoopBackOff")}],
            conditions=INIT_CONDITIONS,
        ),
        None,
        FAILED,
        "crash loop",
    ),
]


@pytest.mark.parametrize(("obj", "endpoint_ready", "state", "message"), CASES)
def test_instance_state(obj: dict[str, Any], endpoint_ready: bool | None, state: str, message: str) -> None:
    got_state, got_message = instance_state(pod_view(obj), endpoint_ready)
    assert (got_state, message in got_message) == (state, True), got_message


def test_pod_view_reads_the_fields() -> None:
    view = pod_view(pod(state=waiting("CrashLoopBackOff"), last_state=OOM, restarts=3, deleting=True))
    assert view == PodView(
        name="chat-7d9f8b6c5d-x2x9k",
        uid="0f6c2a54-9a8e-4d3e-9c1b-5b6f7e8d9a0b",
        phase="Running",
        ready=False,
        ip="10.244.1.17",
        node="gpu-1",
        revision=3,
        role="both",
        restarts=3,
        container="engine",
        container_state="waiting",
        waiting_reason="CrashLoopBackOff",
        terminated_reason="OOMKilled",
        exit_code=137,
        started_at=datetime(2026, 11, 29, 16, 0, tzinfo=UTC),
        deleting_at=datetime(2026, 11, 29, 16, 5, 30, tzinfo=UTC),
    )


def test_pod_view_of_a_bare_pod() -> None:
    view = pod_view({"metadata": {"name": "p", "uid": "u", "labels": {"tideserve.io/revision": "x"}}})
    assert (view.phase, view.ready, view.revision, view.container, view.restarts) == (
        "Pending",
        False,
        None,
        None,
        0,
    )


def test_endpoint_views_apply_the_api_defaults() -> None:
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "chat-abcde", "labels": {"kubernetes.io/service-name": "chat"}},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 60000}],
        "endpoints": [
            {
                "addresses": ["10.244.1.17"],
                "targetRef": {"kind": "Pod", "name": "chat-1"},
                "nodeName": "gpu-1",
            },
            {
                "addresses": ["10.244.2.9"],
                "conditions": {"ready": False, "serving": True, "terminating": True},
                "targetRef": {"kind": "Pod", "name": "chat-2"},
            },
            {"addresses": ["10.244.3.4"], "conditions": {"ready": False}},
        ],
    }
    assert endpoint_views(endpoint_slice) == [
        # Absent conditions: ready unknown counts as ready, serving follows ready, not terminating.
        EndpointView(
            "10.244.1.17", 60000, ready=True, serving=True, terminating=False, pod="chat-1", node="gpu-1"
        ),
        EndpointView("10.244.2.9", 60000, ready=False, serving=True, terminating=True, pod="chat-2"),
        EndpointView("10.244.3.4", 60000, ready=False, serving=False, terminating=False),
    ]


@pytest.mark.parametrize(
    ("ports", "port"),
    [
        ([{"name": "", "port": 8000}], 8000),  # a Service's single unnamed port
        ([{"port": 8000}], 8000),
        ([{"name": "grpc", "port": 9000}], None),
        ([{"name": "grpc", "port": 9000}, {"name": "", "port": 8000}], None),
        ([], None),
    ],
)
def test_endpoint_port_is_the_one_named_http(ports: list[dict[str, Any]], port: int | None) -> None:
    endpoint_slice = {"ports": ports, "endpoints": [{"addresses": ["10.0.0.1"]}]}
    assert endpoint_views(endpoint_slice)[0].port == port


def test_node_view() -> None:
    node = {
        "metadata": {
            "name": "gpu-1",
            "labels": {"nvidia.com/gpu.product": "NVIDIA-L40S", "nvidia.com/gpu.memory": "46068"},
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}], "unschedulable": True},
        "status": {
            "allocatable": {"cpu": "63800m", "memory": "512873952Ki", "nvidia.com/gpu": "4", "pods": "110"},
            "addresses": [
                {"type": "Hostname", "address": "gpu-1"},
                {"type": "InternalIP", "address": "10.0.0.21"},
            ],
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True"},
            ],
        },
    }
    view = node_view(node)
    assert (view.name, view.address, view.cpu_millis, view.memory_bytes) == (
        "gpu-1",
        "10.0.0.21",
        63800,
        512873952 * 1024,
    )
    assert (view.gpus, view.gpu_product, view.gpu_memory_mib) == (4, "NVIDIA-L40S", 46068)
    assert view.ready and view.unschedulable and view.taints == (Taint("nvidia.com/gpu", None, "NoSchedule"),)
    bare = node_view(
        {"metadata": {"name": "n"}, "status": {"addresses": [{"type": "Hostname", "address": "n"}]}}
    )
    assert (bare.address, bare.cpu_millis, bare.gpus, bare.gpu_memory_mib, bare.ready) == (
        "n",
        0,
        0,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("500m", 500),
        ("2", 2000),
        ("1.5", 1500),
        (4, 4000),
        (0.25, 250),
        ("250000u", 250),
        ("1n", 1),
        ("0", 0),
    ],
)
def test_parse_cpu(value: str | int | float, millis: int) -> None:
    assert parse_cpu(value) == millis


@pytest.mark.parametrize("value", ["", "two", "5Gi", "m"])
def test_parse_cpu_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="is not a CPU quantity"):
        parse_cpu(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("16Gi", 16 * 2**30),
        ("32766352Ki", 32766352 * 1024),
        ("1G", 10**9),
        ("1288490188800m", 1288490188),
        (512, 512),
    ],
)
def test_parse_memory(value: str | int, size: int) -> None:
    assert parse_memory(value) == size
