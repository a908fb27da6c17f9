"""The Kubernetes platform end to end: a real `tideserve up` drives the API server double (no real API
server can run here; tests/platforms/kubernetes/apiserver.py says what it does and doesn't do).

The double plays the Deployment controller, the scheduler and the kubelet through its hooks; the pod's
container is a real built-in engine process started with exactly the command and arguments of the
applied Deployment, listening where the pod's IP and port say, so the gateway's requests really reach
an engine found through the EndpointSlice."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controlplane.conftest import Platform, _cleanup, free_port
from tests.platforms.kubernetes.apiserver import ApiServer
from tideserve.platforms import local

SERVICE = "chat"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path / "home", free_port(), None)
    p.start("--no-default", "--metrics-interval", "1")
    yield p
    _cleanup(p)


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """The kubelet's part: run the engine container of an applied Deployment, with its command and
    args as applied, on this machine; stopped at the end whatever the test did."""
    started: list[subprocess.Popen[bytes]] = []

    def run(deployment: dict[str, Any]) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        command, args = list(container["command"]), list(container["args"])
        assert command == ["python", "-m", "tideserve.engine"]
        args[args.index("--host") + 1] = "127.0.0.1"  # the pod's own network namespace, here loopback
        with open(tmp_path / f"container-{len(started)}.log", "ab") as out:
            started.append(
                subprocess.Popen([sys.executable, *command[1:], *args], stdout=out, stderr=subprocess.STDOUT)
            )

    yield run
    for proc in started:
        proc.kill()
        proc.wait(30)


def test_a_service_deploys_serves_logs_and_deletes_on_kubernetes(
    platform: Platform, apiserver: ApiServer, kubeconfig_path: Path, kubelet: Callable[[dict[str, Any]], None]
) -> None:
    apiserver.add_node("cpu-node-1", cpu="4", memory="16Gi", labels={"pool": "cpu"})
    apiserver.add_node("gpu-node-1", gpus=8, gpu_product="NVIDIA-H200", gpu_memory_mib=143771)
    port = local.free_port((), base=61000)  # in the target-port range, for the "pod" (a local engine)
    with platform.client() as c:
        settings = {"kubeconfig": str(kubeconfig_path), "context": "double", "namespace": "tideserve"}
        made = c.post(
            "/api/v1/clusters", json={"name": "k8s", "platform": "kubernetes", "kubernetes": settings}
        )
        assert made.status_code == 201, made.text
        group = {"name": "cpu", "nodeSelector": {"pool": "cpu"}}
        assert c.post("/api/v1/clusters/k8s/groups", json=group).status_code == 201
        # The nodes come from the cluster, each into the first group whose selector it matches.
        nodes = wait_for(
            "the cluster's nodes",
            lambda: (n := {x["name"]: x for x in c.get("/api/v1/nodes").json()}).get("gpu-node-1") and n,
        )
        assert nodes["cpu-node-1"]["cpus"] == 4
        wait_for(
            "the most specific group", lambda: c.get("/api/v1/nodes/cpu-node-1").json()["group"] == "cpu"
        )
        assert c.get("/api/v1/nodes/gpu-node-1").json()["group"] == "default"
        assert (
            len(nodes["gpu-node-1"]["gpus"]) == 8 and nodes["gpu-node-1"]["gpus"][0]["name"] == "NVIDIA-H200"
        )
        assert c.get("/api/v1/clusters/k8s").json()["status"] == "Ready"

        doc = {
            "metadata": {"name": SERVICE},
            "spec": {
                "model": "smollm2-135m-instruct",
                "cluster": "k8s",
                "resourceGroup": "cpu",
                "resources": {"cpu": 1, "memory": "2Gi", "gpus": 0},
                "access": {"targetPort": port},
                "parameters": {"maxModelLen": 1024, "maxBatchSize": 4},
            },
        }
        assert c.post("/api/v1/services", json=doc).status_code == 201
        deployment = wait_for("the Deployment", lambda: apiserver.object("Deployment", SERVICE))
        applied = [call for call in apiserver.calls if call.method == "PATCH"]
        assert applied and all(call.content_type == "application/apply-patch+yaml" for call in applied)
        assert all(call.query.get("fieldManager") == "tideserve" for call in applied)
        assert apiserver.object("Service", SERVICE)["spec"]["type"] == "ClusterIP"
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["nodeSelector"] == {"pool": "cpu"}
        # What `tideserve services manifests` shows is what was applied.
        shown = c.get(f"/api/v1/services/{SERVICE}/manifests").text
        assert f"containerPort: {port}" in shown and "nodeSelector:\n" in shown

        [pod] = apiserver.run_deployment(SERVICE)
        apiserver.schedule(pod, "cpu-node-1")
        instance = wait_for(
            "an instance for the pod",
            lambda: (i := c.get(f"/api/v1/services/{SERVICE}/instances").json()) and i[0],
        )
        assert instance["pod"] == pod and instance["state"] == "Pending"

        kubelet(deployment)
        apiserver.set_pod_status(pod, {"phase": "Pending", "podIP": "127.0.0.1"})
        apiserver.run_pod(pod, ready=False)
        wait_for(
            "Starting",
            lambda: c.get(f"/api/v1/services/{SERVICE}/instances").json()[0]["state"] == "Starting",
        )
        wait_for("the engine", lambda: _healthy(port), timeout=120)
        apiserver.set_ready(pod)  # the readiness probe passed: the endpoint controller marks it ready
        svc = platform.wait_service(SERVICE, timeout=60)
        [inst] = svc["instances"]
        assert (inst["node"], inst["address"]) == ("cpu-node-1", f"127.0.0.1:{port}")

        # The gateway sends to the pod it found through the EndpointSlice.
        r = c.post("/v1/completions", json={"model": SERVICE, "prompt": "Hello", "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.headers["x-tideserve-instance"] == inst["id"]

        # The collector scrapes the pod where the EndpointSlice says it is: the service's monitoring works.
        metrics = wait_for(
            "the pod's metrics",
            lambda: (
                (m := c.get(f"/api/v1/services/{SERVICE}/metrics", params={"window": "15m"}).json())[
                    "current"
                ]["ttft_p50"]
                is not None
                and m
            ),
        )
        assert metrics["instances"][inst["id"]]["up"] == 1 and metrics["current"]["ready_instances"] == 1

        # Pod logs are shipped into the service's logs.
        apiserver.write_log(pod, "engine says hello from the pod\n")
        logs = wait_for(
            "the pod's log line",
            lambda: "hello from the pod" in (t := c.get(f"/api/v1/services/{SERVICE}/logs").text) and t,
        )
        assert f"{inst['id']} | engine says hello from the pod" in logs

        # A crash-looping pod makes the service Abnormal with the reason.
        apiserver.crash(pod, reason="OOMKilled", exit_code=137)
        abnormal = platform.wait_service(SERVICE, status="Abnormal", timeout=30)
        assert "OOMKilled" in abnormal["message"] or "memory" in abnormal["message"]
        apiserver.run_pod(pod, ready=True)
        platform.wait_service(SERVICE, timeout=30)

        assert c.delete(f"/api/v1/services/{SERVICE}").status_code == 202
        wait_for(
            "the pod to be deleted", lambda: apiserver.object("Pod", pod)["metadata"].get("deletionTimestamp")
        )
        deletes = {call.path.rsplit("/", 1)[-1] for call in apiserver.calls if call.method == "DELETE"}
        assert SERVICE in deletes
        apiserver.finish_termination(pod)  # the engine drained and exited
        wait_for("the service to go", lambda: c.get(f"/api/v1/services/{SERVICE}").status_code == 404)
        assert apiserver.objects("Deployment") == [] and apiserver.object("Service", SERVICE) is None


def test_an_unreachable_cluster_says_why_and_stopping_leaves_pods_running(
    platform: Platform, apiserver: ApiServer, kubeconfig_path: Path
) -> None:
    with platform.client() as c:
        bad = {"kubeconfig": str(kubeconfig_path), "context": "unreachable"}
        assert (
            c.post(
                "/api/v1/clusters", json={"name": "far", "platform": "kubernetes", "kubernetes": bad}
            ).status_code
            == 201
        )
        far = wait_for(
            "Unreachable",
            lambda: (x := c.get("/api/v1/clusters/far").json())["status"] == "Unreachable" and x,
        )
        assert "cannot reach" in far["message"]

        apiserver.add_node("n1")
        good = {"kubeconfig": str(kubeconfig_path), "context": "double"}
        assert (
            c.post(
                "/api/v1/clusters", json={"name": "near", "platform": "kubernetes", "kubernetes": good}
            ).status_code
            == 201
        )
        wait_for("the node", lambda: c.get("/api/v1/clusters/near").json()["nodes"] == 1)
        # The built-in engine can't pull a model from a hub: refused at create, nothing applied.
        hub = {
            "metadata": {"name": "hub"},
            "spec": {"model": "qwen3-0.6b", "cluster": "near", "resources": {"cpu": 1, "memory": "4Gi"}},
        }
        refused = c.post("/api/v1/services", json=hub)
        assert refused.status_code == 422 and refused.json()["error"]["message"].startswith("spec.model:")
        assert (
            "built-in engine" in refused.json()["error"]["message"] and apiserver.objects("Deployment") == []
        )
        doc = {
            "metadata": {"name": "kept"},
            "spec": {
                "model": "smollm2-135m-instruct",
                "cluster": "near",
                "resources": {"cpu": 1, "memory": "2Gi"},
            },
        }
        assert c.post("/api/v1/services", json=doc).status_code == 201
        wait_for("the Deployment", lambda: apiserver.object("Deployment", "kept"))
        [pod] = apiserver.run_deployment("kept")
    # Ctrl-C stops the control plane, not the cluster's services: nothing is deleted.
    assert platform.stop() == 0
    assert not [call for call in apiserver.calls if call.method == "DELETE"]
    assert apiserver.object("Pod", pod) is not None


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_in_cluster_control_plane_registers_its_cluster(tmp_path: Path) -> None:
    p = Platform(tmp_path / "home", free_port(), None)
    p.start("--no-default", "--kubernetes-cluster", "here", "--kubernetes-namespace", "ml")
    try:
        with p.client() as c:
            cluster = c.get("/api/v1/clusters/here").json()
            assert cluster["platform"] == "kubernetes" and cluster["kubernetes"] == {"namespace": "ml"}
            assert [g["name"] for g in cluster["resourceGroups"]] == ["default"]
            # Not in a pod here: no service account to reach the API server with, and it says so.
            far = wait_for(
                "Unreachable", lambda: (x := c.get("/api/v1/clusters/here").json())["message"] and x
            )
            assert far["status"] == "Unreachable" and "service account" in far["message"]
        assert p.stop() == 0
        p.start("--no-default", "--kubernetes-cluster", "here")  # a restart keeps the cluster as it is
        with p.client() as c:
            assert c.get("/api/v1/clusters/here").json()["kubernetes"] == {"namespace": "ml"}
    finally:
        _cleanup(p)
