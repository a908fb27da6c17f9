"""KubeApi through the official client, over real HTTP, against the API server double (apiserver.py):
no Kubernetes API server can run on the test machines (see docs/kubernetes.md for a real cluster)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.platforms.kubernetes.apiserver import ApiServer, selector_matches
from tideserve.platforms.kubernetes.api import KINDS, KubeApi, KubeError, ObjectRef
from tideserve.platforms.kubernetes.observe import instance_state
from tideserve.platforms.kubernetes.settings import (
    LABEL_COMPONENT,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SERVICE,
    KubeSettings,
)
from tideserve.services.rollout import DRAINING, FAILED, PENDING, RUNNING, STARTING

NS = "tideserve"


def labels(service: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "tideserve", LABEL_SERVICE: service}


def meta(name: str, service: str = "chat") -> dict[str, Any]:
    return {"name": name, "namespace": NS, "labels": labels(service)}


def deployment(service: str = "chat", image: str = "tideserve/engine:1", grace: int = 30) -> dict[str, Any]:
    pod_labels = {**labels(service), LABEL_REVISION: "1", LABEL_ROLE: "both", LABEL_COMPONENT: "engine"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(service, service),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {LABEL_SERVICE: service}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [
                        {
                            "name": "engine",
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 60000, "protocol": "TCP"}],
                        }
                    ],
                },
            },
        },
    }


def service_obj(service: str = "chat") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(service, service),
        "spec": {
            "selector": {LABEL_SERVICE: service, LABEL_COMPONENT: "engine"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def every_kind(service: str = "chat") -> list[dict[str, Any]]:
    """One object of each kind the renderer emits, shaped as it renders them."""
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    selector = {"matchLabels": {LABEL_SERVICE: service}}
    return [
        deployment(service),
        service_obj(service),
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(service, service),
            "spec": {"maxUnavailable": 1, "selector": selector},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta(service, service),
            "spec": {"scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 4},
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": meta(service, service),
            "spec": {"selector": selector, "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}]},
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": meta(service, service),
            "spec": {"scaleTargetRef": {"name": service}, "minReplicaCount": 0, "maxReplicaCount": 4},
        },
        {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": meta(f"{service}-lws", service),
            "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2}},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": meta(service, service),
            "spec": {"hosts": [service], "http": [{"route": [{"destination": {"host": service}}]}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": meta(service, service),
            "spec": {"host": service, "subsets": [{"name": "r1", "labels": {LABEL_REVISION: "1"}}]},
        },
    ]


def running_pods(apiserver: ApiServer, kube: KubeApi, service: str = "chat", ready: bool = True) -> list[str]:
    kube.apply(deployment(service))
    kube.apply(service_obj(service))
    names = apiserver.run_deployment(service)
    for i, name in enumerate(names):
        apiserver.schedule(name, f"node-{i}")
        apiserver.run_pod(name, ready=ready)
    return names


# --- apply ---------------------------------------------------------------------------------------


def test_apply_creates_with_server_side_apply(apiserver: ApiServer, kube: KubeApi) -> None:
    obj = kube.apply(deployment())
    assert obj["kind"] == "Deployment" and obj["metadata"]["name"] == "chat"
    assert (
        obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"] and obj["metadata"]["generation"] == 1
    )
    assert obj["metadata"]["managedFields"][0]["manager"] == "tideserve"
    call = apiserver.calls[-1]
    assert (call.method, call.path) == ("PATCH", "/apis/apps/v1/namespaces/tideserve/deployments/chat")
    assert call.content_type == "application/apply-patch+yaml"
    assert call.query == {"fieldManager": "tideserve", "force": "true"}
    assert yaml.safe_load(call.body) == deployment()


def test_reapply_is_idempotent_and_updates_bump_generation(apiserver: ApiServer, kube: KubeApi) -> None:
    first = kube.apply(deployment())["metadata"]
    again = kube.apply(deployment())["metadata"]
    assert (again["uid"], again["resourceVersion"], again["generation"]) == (
        first["uid"],
        first["resourceVersion"],
        1,
    )
    changed = kube.apply(deployment(image="tideserve/engine:2"))
    assert changed["metadata"]["uid"] == first["uid"]
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(first["resourceVersion"])
    assert changed["spec"]["template"]["spec"]["containers"][0]["image"] == "tideserve/engine:2"
    relabelled = deployment(image="tideserve/engine:2")
    relabelled["metadata"]["labels"]["team"] = "nlp"
    meta_only = kube.apply(relabelled)["metadata"]
    assert meta_only["generation"] == 2 and meta_only["labels"]["team"] == "nlp"
    assert meta_only["creationTimestamp"] == first["creationTimestamp"]


def test_every_rendered_kind_applies_and_reads_back(apiserver: ApiServer, kube: KubeApi) -> None:
    objects = every_kind()
    for obj in objects:
        applied = kube.apply(obj)
        assert applied["apiVersion"] == obj["apiVersion"] and applied["kind"] == obj["kind"]
        got = kube.get(ObjectRef.of(obj))
        assert got is not None and got["metadata"]["uid"] == applied["metadata"]["uid"]
        assert got["spec"] == applied["spec"] and got["metadata"]["labels"] == obj["metadata"]["labels"]
    assert {(k.api_version, k.kind) for k in KINDS} == {(o["apiVersion"], o["kind"]) for o in objects}
    assert kube.owned("chat") == sorted(ObjectRef.of(o) for o in objects)
    service = kube.get(ObjectRef("v1", "Service", "chat"))
    assert service is not None and service["spec"]["clusterIP"]  # the server's own fields come back too


GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.yaml"))


@pytest.mark.parametrize("golden", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_rendered_objects_apply_as_a_set(apiserver: ApiServer, kubeconfig_path: Path, golden: Path) -> None:
    """Whatever the renderer emits (its reviewed golden files) applies, re-applies as a no-op, is
    found again by owned() and survives a prune that keeps it."""
    objects = [o for o in yaml.safe_load_all(golden.read_text()) if o]
    namespace = objects[0]["metadata"]["namespace"]
    service = objects[0]["metadata"]["labels"][LABEL_SERVICE]
    apiserver.namespaces.add(namespace)
    api = KubeApi.connect(KubeSettings(namespace=namespace, kubeconfig=str(kubeconfig_path)))
    versions = [api.apply(o)["metadata"]["resourceVersion"] for o in objects]
    assert [api.apply(o)["metadata"]["resourceVersion"] for o in objects] == versions
    refs = {ObjectRef.of(o) for o in objects}
    assert set(api.owned(service)) == refs
    assert api.prune(service, refs) == []


def test_missing_objects_read_as_absent(kube: KubeApi) -> None:
    assert kube.get(ObjectRef("apps/v1", "Deployment", "nothing")) is None
    assert kube.delete(ObjectRef("v1", "Service", "nothing")) is False


# --- owned / prune / delete ----------------------------------------------------------------------


def test_owned_lists_only_this_services_managed_objects(apiserver: ApiServer, kube: KubeApi) -> None:
    for obj in [*every_kind("chat"), *every_kind("other")]:
        kube.apply(obj)
    # Labelled with the service but not managed by tideserve (someone's hand-made object): not ours.
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "chat-debug", "namespace": NS, "labels": {LABEL_SERVICE: "chat"}},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    owned = kube.owned("chat")
    assert len(owned) == len(KINDS) and all(ref.name.startswith("chat") for ref in owned)
    assert ObjectRef("v1", "Service", "chat-debug") not in owned
    selectors = {c.query.get("labelSelector") for c in apiserver.calls if c.method == "GET"}
    assert selectors == {"tideserve.io/service=chat,app.kubernetes.io/managed-by=tideserve"}


def test_owned_skips_kinds_the_cluster_does_not_have(apiserver: ApiServer, kube: KubeApi) -> None:
    for obj in every_kind()[:4]:
        kube.apply(obj)
    apiserver.crds = set()  # no Prometheus Operator, KEDA, LWS or Istio
    assert [ref.kind for ref in kube.owned("chat")] == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]


def test_prune_deletes_only_unlisted_owned_objects(apiserver: ApiServer, kube: KubeApi) -> None:
    for obj in [*every_kind("chat"), *every_kind("other")]:
        kube.apply(obj)
    keep = {ObjectRef.of(deployment()), ObjectRef.of(service_obj())}
    pruned = kube.prune("chat", keep)
    assert set(pruned) == {ObjectRef.of(o) for o in every_kind()} - keep
    assert kube.owned("chat") == sorted(keep)
    assert len(kube.owned("other")) == len(KINDS)
    deletes = [c for c in apiserver.calls if c.method == "DELETE"]
    assert len(deletes) == len(pruned)
    assert all(json.loads(c.body)["propagationPolicy"] == "Foreground" for c in deletes)
    assert kube.prune("chat", keep) == []  # nothing left to prune: idempotent


def test_delete_service_drains_pods_then_owners_go(apiserver: ApiServer, kube: KubeApi) -> None:
    for obj in every_kind()[:3]:
        kube.apply(obj)
    pods = running_pods(apiserver, kube)
    before = datetime.now(UTC)
    deleted = kube.delete_service("chat", grace_seconds=20)
    assert {ref.kind for ref in deleted} == {"Deployment", "Service", "PodDisruptionBudget"}
    views = kube.pods("chat")
    assert [p.name for p in views] == sorted(pods)
    for pod in views:
        # The template's 30 s grace is shortened to the 20 s asked for: SIGTERM now, SIGKILL then.
        assert pod.deleting_at is not None
        assert 18 <= (pod.deleting_at - before).total_seconds() <= 22
        assert instance_state(pod, None)[0] == DRAINING
    assert apiserver.objects("Pod")[0]["metadata"]["deletionGracePeriodSeconds"] == 20
    # Foreground deletion: the Deployment waits for its pods; the Service and PDB have none to wait for.
    assert kube.owned("chat") == [ObjectRef.of(deployment())]
    for pod in pods:
        apiserver.finish_termination(pod)
    assert kube.owned("chat") == [] and kube.pods("chat") == []


def test_delete_service_keeps_a_shorter_pod_grace(apiserver: ApiServer, kube: KubeApi) -> None:
    kube.apply(deployment(grace=5))
    pod = apiserver.run_deployment("chat", replicas=1)[0]
    apiserver.schedule(pod, "node-0")
    kube.delete_service("chat", grace_seconds=60)
    assert apiserver.objects("Pod")[0]["metadata"]["deletionGracePeriodSeconds"] == 5


# --- errors --------------------------------------------------------------------------------------


def test_invalid_object_surfaces_the_api_message(kube: KubeApi) -> None:
    bad = deployment()
    bad["metadata"]["name"] = "Chat_Small"
    with pytest.raises(KubeError) as err:
        kube.apply(bad)
    assert err.value.status == 422 and err.value.reason == "Invalid"
    assert str(err.value).startswith('apply Deployment/Chat_Small: Deployment.apps "Chat_Small" is invalid')
    assert 'metadata.name: Invalid value: "Chat_Small"' in str(err.value)

    mismatched = deployment()
    mismatched["spec"]["selector"]["matchLabels"][LABEL_SERVICE] = "other"
    del mismatched["spec"]["template"]["spec"]["containers"][0]["image"]
    with pytest.raises(KubeError) as err:
        kube.apply(mismatched)
    assert "spec.template.metadata.labels: Invalid value" in str(err.value)
    assert "spec.template.spec.containers[0].image: Required value" in str(err.value)


def test_missing_crd_says_which_operator_to_install(apiserver: ApiServer, kube: KubeApi) -> None:
    apiserver.crds -= {"keda.sh", "leaderworkerset.x-k8s.io"}
    objects = {o["kind"]: o for o in every_kind()}
    with pytest.raises(
        KubeError, match=r"the cluster has no ScaledObject \(keda.sh/v1alpha1\): install KEDA"
    ):
        kube.apply(objects["ScaledObject"])
    with pytest.raises(KubeError, match=r"has no LeaderWorkerSet .*install LeaderWorkerSet \(lws\)") as err:
        kube.apply(objects["LeaderWorkerSet"])
    assert err.value.kind_missing and err.value.status == 404


def test_missing_namespace_says_so(kubeconfig_path: Path) -> None:
    api = KubeApi.connect(KubeSettings(namespace="prod", kubeconfig=str(kubeconfig_path)))
    with pytest.raises(KubeError, match=r"namespace prod does not exist \(kubectl create namespace prod\)"):
        api.apply({**deployment(), "metadata": {**meta("chat"), "namespace": "prod"}})


def test_unmanaged_kind_is_refused_before_any_call(apiserver: ApiServer, kube: KubeApi) -> None:
    with pytest.raises(KubeError, match="tideserve does not manage v1 ConfigMap"):
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert apiserver.calls == []


def test_unreachable_server_is_named(kube_settings: KubeSettings) -> None:
    api = KubeApi.connect(KubeSettings(kubeconfig=kube_settings.kubeconfig, context="unreachable"))
    with pytest.raises(KubeError, match=rf"cannot reach the Kubernetes API server at {api.server}") as err:
        api.pods("chat")
    assert err.value.status is None and api.server.startswith("http://127.0.0.1:")


def test_wrong_credentials_surface_401(kube_settings: KubeSettings) -> None:
    api = KubeApi.connect(KubeSettings(kubeconfig=kube_settings.kubeconfig, context="wrong-token"))
    with pytest.raises(KubeError, match="list nodes: Unauthorized") as err:
        api.nodes()
    assert err.value.status == 401


# --- connect -------------------------------------------------------------------------------------


def test_kubeconfig_current_context_and_selected_context(
    apiserver: ApiServer, kube_settings: KubeSettings
) -> None:
    current = KubeApi.connect(KubeSettings(kubeconfig=kube_settings.kubeconfig))
    assert current.server == apiserver.url and current.nodes() == []
    chosen = KubeApi.connect(KubeSettings(kubeconfig=kube_settings.kubeconfig, context="unreachable"))
    assert chosen.server != apiserver.url


def test_kubeconfig_errors_name_the_file_and_context(kube_settings: KubeSettings, tmp_path: Path) -> None:
    path = kube_settings.kubeconfig
    with pytest.raises(KubeError, match=rf"kubeconfig {path} has no context 'prod' \(it has: double, "):
        KubeApi.connect(KubeSettings(kubeconfig=path, context="prod"))
    missing = tmp_path / "nope.yaml"
    with pytest.raises(KubeError, match=f"kubeconfig {missing} does not exist"):
        KubeApi.connect(KubeSettings(kubeconfig=str(missing)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Config\ncontexts: []\nclusters: []\nusers: []\n")
    with pytest.raises(KubeError, match=f"kubeconfig {broken}"):
        KubeApi.connect(KubeSettings(kubeconfig=str(broken)))


def test_in_cluster_without_a_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubeError, match="not running in a pod with a service account"):
        KubeApi.connect(KubeSettings())


# --- pods and endpoints --------------------------------------------------------------------------


def test_pods_read_back_into_instance_states(apiserver: ApiServer, kube: KubeApi) -> None:
    kube.apply(deployment())
    kube.apply(service_obj())
    first, second = sorted(apiserver.run_deployment("chat"))

    def state(name: str) -> tuple[str, str]:
        pod = next(p for p in kube.pods("chat") if p.name == name)
        endpoint = next((e for e in kube.endpoints("chat") if e.pod == name), None)
        return instance_state(pod, endpoint.ready if endpoint else None)

    assert state(first) == (PENDING, "waiting for the scheduler")
    apiserver.unschedulable(second, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    assert state(second) == (
        PENDING,
        "unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
    apiserver.schedule(first, "gpu-1")
    assert state(first) == (PENDING, "creating the containers on gpu-1 (pulling the image)")
    apiserver.run_pod(first, ready=False)
    assert state(first)[0] == STARTING
    apiserver.set_ready(first)
    assert state(first) == (RUNNING, "ready")

    pod = next(p for p in kube.pods("chat") if p.name == first)
    assert (pod.revision, pod.role, pod.node, pod.phase, pod.ready) == (1, "both", "gpu-1", "Running", True)
    assert pod.ip and pod.uid and pod.started_at is not None and pod.deleting_at is None

    apiserver.crash(first, reason="OOMKilled", exit_code=137)
    failed, message = state(first)
    assert failed == FAILED and "OOMKilled" in message and "raise resources.memory" in message
    assert next(p for p in kube.pods("chat") if p.name == first).restarts == 1

    apiserver.schedule(second, "gpu-2")
    apiserver.image_pull_failed(second, "tideserve/engine:nope")
    assert state(second)[0] == FAILED and "cannot pull the image (ImagePullBackOff)" in state(second)[1]


def test_endpoints_come_from_endpoint_slices(apiserver: ApiServer, kube: KubeApi) -> None:
    first, second = sorted(running_pods(apiserver, kube, ready=False))
    assert {(e.pod, e.ready) for e in kube.endpoints("chat")} == {(first, False), (second, False)}
    apiserver.set_ready(first)
    views = {e.pod: e for e in kube.endpoints("chat")}
    pods = {p.name: p for p in kube.pods("chat")}
    assert views[first].ready and views[first].serving and not views[first].terminating
    assert views[first].port == 60000  # the Service's targetPort "http", resolved to the container port
    assert views[first].address == pods[first].ip and views[first].node == pods[first].node
    call = apiserver.calls[-2]  # endpoints(), then pods()
    assert call.path == "/apis/discovery.k8s.io/v1/namespaces/tideserve/endpointslices"
    assert call.query == {"labelSelector": "kubernetes.io/service-name=chat"}

    # A deleted pod stays in the slice as terminating: serving, but no longer ready for new requests.
    apiserver.set_ready(second)
    apiserver.delete_pod(second)  # the Deployment controller scales down (or a rollout replaces it)
    drained = {e.pod: e for e in kube.endpoints("chat")}[second]
    assert (drained.ready, drained.serving, drained.terminating) == (False, True, True)
    assert (
        instance_state(next(p for p in kube.pods("chat") if p.name == second), drained.ready)[0] == DRAINING
    )
    apiserver.finish_termination(second)
    assert [e.pod for e in kube.endpoints("chat")] == [first]


def test_pods_of_other_services_are_not_listed(apiserver: ApiServer, kube: KubeApi) -> None:
    running_pods(apiserver, kube, "chat")
    running_pods(apiserver, kube, "embed")
    assert len(kube.pods("chat")) == 2 and all(p.name.startswith("chat-") for p in kube.pods("chat"))
    assert all(e.pod and e.pod.startswith("embed-") for e in kube.endpoints("embed"))


# --- logs ----------------------------------------------------------------------------------------


def test_logs_with_tail_since_and_previous(apiserver: ApiServer, kube: KubeApi) -> None:
    pod = running_pods(apiserver, kube)[0]
    apiserver.write_log(pod, "old line\n", at=time.time() - 600)
    apiserver.write_log(pod, "loading model\nserving on :60000\nGET /health 200\n")
    assert kube.logs(pod) == "old line\nloading model\nserving on :60000\nGET /health 200\n"
    assert kube.logs(pod, tail_lines=2) == "serving on :60000\nGET /health 200\n"
    assert kube.logs(pod, since_seconds=60).startswith("loading model\n")
    assert kube.logs(pod, container="engine", tail_lines=1) == "GET /health 200\n"
    with pytest.raises(KubeError, match=f'previous terminated container "engine" in pod "{pod}" not found'):
        kube.logs(pod, previous=True)
    apiserver.crash(pod, reason="Error", exit_code=1)
    apiserver.run_pod(pod)  # the kubelet restarted it: a new log, the old one is "previous"
    apiserver.write_log(pod, "second life\n")
    assert kube.logs(pod) == "second life\n"
    assert kube.logs(pod, previous=True).endswith("GET /health 200\n")


def test_logs_errors_are_the_apis(apiserver: ApiServer, kube: KubeApi) -> None:
    apiserver.add_pod("two", labels(service="chat"), containers=("engine", "sidecar"))
    apiserver.schedule("two", "node-0")
    apiserver.run_pod("two")
    with pytest.raises(
        KubeError, match=r"a container name must be specified for pod two, choose one of: \[engine sidecar\]"
    ):
        kube.logs("two")
    apiserver.add_pod("waiting", labels(service="chat"))
    apiserver.schedule("waiting", "node-0")
    with pytest.raises(
        KubeError, match='container "engine" in pod "waiting" is waiting to start: ContainerCreating'
    ):
        kube.logs("waiting")
    with pytest.raises(KubeError, match='pods "ghost" not found') as err:
        kube.logs("ghost")
    assert err.value.status == 404


def test_follow_logs_streams_lines_as_written(apiserver: ApiServer, kube: KubeApi) -> None:
    pod = running_pods(apiserver, kube)[0]
    apiserver.write_log(pod, "one\ntwo\n")

    def writer() -> None:
        for i in range(3):
            time.sleep(0.05)
            apiserver.write_log(pod, f"later {i}\n")
        apiserver.write_log(pod, "no newline at the end")
        apiserver.end_log(pod)

    thread = threading.Thread(target=writer)
    thread.start()
    lines = list(kube.follow_logs(pod))
    thread.join()
    assert lines == ["one", "two", "later 0", "later 1", "later 2", "no newline at the end"]
    follow = apiserver.calls[-1]
    assert follow.query == {"follow": "true"}


def test_follow_logs_can_be_stopped_and_resumed_with_since(apiserver: ApiServer, kube: KubeApi) -> None:
    pod = running_pods(apiserver, kube)[0]
    apiserver.write_log(pod, "a\nb\nc\n")
    stream = kube.follow_logs(pod, tail_lines=2)
    assert next(stream) == "b" and next(stream) == "c"
    stream.close()  # the caller stops: the connection is released, the server keeps running
    apiserver.write_log(pod, "d\n")
    apiserver.end_log(pod)
    assert list(kube.follow_logs(pod, since_seconds=5)) == ["a", "b", "c", "d"]


def test_follow_logs_ends_when_the_pod_goes(apiserver: ApiServer, kube: KubeApi) -> None:
    pod = running_pods(apiserver, kube)[0]
    apiserver.write_log(pod, "serving\n")
    threading.Timer(0.1, apiserver.finish_termination, args=(pod,)).start()
    assert list(kube.follow_logs(pod)) == ["serving"]


# --- nodes ---------------------------------------------------------------------------------------


def test_nodes_with_gpus_taints_and_conditions(apiserver: ApiServer, kube: KubeApi) -> None:
    apiserver.add_node(
        "gpu-1",
        cpu="31500m",
        memory="257846348Ki",
        gpus=8,
        gpu_product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_mib=81559,
        labels={"tideserve.io/group": "online"},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        address="10.0.0.11",
    )
    apiserver.add_node("cpu-1", cpu="4", memory="16Gi", unschedulable=True)
    apiserver.add_node("lost", ready=False)
    gpu, cpu, lost = (next(n for n in kube.nodes() if n.name == name) for name in ("gpu-1", "cpu-1", "lost"))
    assert (gpu.address, gpu.cpu_millis, gpu.memory_bytes) == ("10.0.0.11", 31500, 257846348 * 1024)
    assert (gpu.gpus, gpu.gpu_product, gpu.gpu_memory_mib) == (8, "NVIDIA-H100-80GB-HBM3", 81559)
    assert gpu.labels["tideserve.io/group"] == "online" and gpu.ready and not gpu.unschedulable
    assert [(t.key, t.value, t.effect) for t in gpu.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
    assert (cpu.cpu_millis, cpu.memory_bytes, cpu.gpus, cpu.gpu_product) == (4000, 16 * 2**30, 0, None)
    assert cpu.unschedulable and cpu.ready
    assert not lost.ready


# --- the double itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("tideserve.io/service=chat", True),
        ("tideserve.io/service==chat,tideserve.io/role=both", True),
        ("tideserve.io/service!=chat", False),
        ("tideserve.io/role in (prefill, decode)", False),
        ("tideserve.io/role in (both,decode),tideserve.io/service=chat", True),
        ("tideserve.io/role notin (prefill)", True),
        ("team notin (nlp)", True),
        ("team in (nlp)", False),
        ("tideserve.io/revision", True),
        ("!tideserve.io/revision", False),
        ("!team", True),
    ],
)
def test_double_label_selectors(selector: str, matches: bool) -> None:
    pod_labels = {"tideserve.io/service": "chat", "tideserve.io/role": "both", "tideserve.io/revision": "2"}
    assert selector_matches(selector, pod_labels) is matches
