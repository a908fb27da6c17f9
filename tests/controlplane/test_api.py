"""The REST API against a real `tideserve up` (no engines started), on SQLite and PostgreSQL:
resources and their rules, keys, the model plaza, validation, and that a rejected call changes nothing."""

from __future__ import annotations

import socket

import pytest

GiB = 2**30


@pytest.fixture
def c(shared_platform):
    with shared_platform.client() as client:
        yield client


def snapshot(c) -> dict:
    """Everything a failed call must leave as it was."""
    return {
        "clusters": c.get("/api/v1/clusters").json(),
        "nodes": c.get("/api/v1/nodes").json(),
        "services": c.get("/api/v1/services").json(),
        "models": [m["name"] for m in c.get("/api/v1/models").json()],
    }


def svc(name: str, **spec) -> dict:
    base = {"model": "smollm2-135m-instruct", "resources": {"cpu": 0.5, "memory": "1Gi", "gpus": 0}}
    return {"metadata": {"name": name}, "spec": {**base, **spec}}


def test_first_start_made_local_cluster_group_and_node(c):
    clusters = c.get("/api/v1/clusters").json()
    assert [(x["name"], x["groups"], x["nodes"]) for x in clusters][:1] == [("local", 1, 1)]
    node = c.get("/api/v1/nodes").json()[0]
    assert node["name"] == socket.gethostname() and node["status"] == "Ready"
    assert node["memoryBytes"] > GiB and node["gpus"] == []  # no GPU on this machine
    group = c.get("/api/v1/clusters/local/groups/default").json()
    assert [n["name"] for n in group["nodes"]] == [node["name"]]


def test_clusters_groups_nodes_and_their_rules(c):
    assert c.post("/api/v1/clusters", json={"name": "east"}).status_code == 201
    r = c.post("/api/v1/clusters", json={"name": "east"})
    assert r.status_code == 409 and "already exists" in r.json()["error"]["message"]
    assert c.post("/api/v1/clusters/east/groups", json={"name": "online"}).status_code == 201
    gpu = {"index": 0, "name": "NVIDIA L40S", "memoryBytes": 48 * GiB}
    r = c.post(
        "/api/v1/nodes",
        json={"name": "gpu-1", "address": "10.0.0.7", "cpus": 32, "memoryBytes": 256 * GiB, "gpus": [gpu]},
    )
    assert r.status_code == 201 and r.json()["status"] == "NotReady"
    assert c.post("/api/v1/clusters/east/groups/online/nodes", json={"node": "gpu-1"}).status_code == 201
    # A node belongs to one cluster at a time.
    c.post("/api/v1/clusters", json={"name": "west"})
    c.post("/api/v1/clusters/west/groups", json={"name": "batch"})
    r = c.post("/api/v1/clusters/west/groups/batch/nodes", json={"node": "gpu-1"})
    assert r.status_code == 409 and "already added to another cluster" in r.json()["error"]["message"]
    r = c.post("/api/v1/clusters/east/groups/online/nodes", json={"node": "gpu-1"})
    assert r.status_code == 409
    # Node view: hardware and instances; group view lists the node.
    node = c.get("/api/v1/nodes/gpu-1").json()
    assert node["gpus"][0]["name"] == "NVIDIA L40S" and node["cluster"] == "east" and node["instances"] == []
    # A group with nodes and a cluster with groups cannot be deleted.
    r = c.delete("/api/v1/clusters/east/groups/online")
    assert r.status_code == 409 and "gpu-1" in r.json()["error"]["message"]
    r = c.delete("/api/v1/clusters/east")
    assert r.status_code == 409 and "online" in r.json()["error"]["message"]
    # Removing the node unbinds it; then it may join another cluster.
    assert c.delete("/api/v1/clusters/east/groups/online/nodes/gpu-1").status_code == 204
    assert c.get("/api/v1/nodes/gpu-1").json()["group"] is None
    assert c.post("/api/v1/clusters/west/groups/batch/nodes", json={"node": "gpu-1"}).status_code == 201
    assert c.delete("/api/v1/clusters/east/groups/online").status_code == 204
    assert c.delete("/api/v1/clusters/east").status_code == 204
    assert c.get("/api/v1/clusters/east").status_code == 404
    assert c.delete("/api/v1/clusters/west/groups/batch/nodes/gpu-1").status_code == 204
    assert c.delete("/api/v1/nodes/gpu-1").status_code == 204
    c.delete("/api/v1/clusters/west/groups/batch")
    c.delete("/api/v1/clusters/west")


def test_every_call_needs_a_key(shared_platform, c):
    import httpx

    with httpx.Client(base_url=shared_platform.url, timeout=10) as anon:
        assert anon.get("/api/v1/clusters").status_code == 401
        assert anon.get("/api/v1/clusters", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert anon.post("/v1/chat/completions", json={"model": "x"}).status_code == 401
        r = anon.get("/api/v1/clusters", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    made = c.post("/api/v1/keys", json={"name": "app", "scope": "inference"}).json()
    with shared_platform.client(made["key"]) as app:
        r = app.get("/api/v1/clusters")
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
        r = app.post(
            "/v1/chat/completions",
            json={"model": "no-such-service", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    admin = c.post("/api/v1/keys", json={"name": "ops", "scope": "admin"}).json()
    with shared_platform.client(admin["key"]) as ops:
        assert ops.get("/api/v1/clusters").status_code == 200
    assert c.delete("/api/v1/keys/ops").status_code == 204
    with shared_platform.client(admin["key"]) as ops:
        assert ops.get("/api/v1/clusters").status_code == 401
    assert c.delete("/api/v1/keys/admin").status_code == 409


def test_model_plaza_filters_and_cards(c):
    models = c.get("/api/v1/models").json()
    names = {m["name"] for m in models}
    assert len(names) >= 21 and "smollm2-135m-instruct" in names
    families = {m["family"] for m in models}
    assert {"qwen2.5", "qwen3", "llama3.1", "mistral"} <= families
    qwen3 = c.get("/api/v1/models", params={"family": "qwen3"}).json()
    assert qwen3 and all(m["family"] == "qwen3" for m in qwen3)
    code = c.get("/api/v1/models", params={"task": "code"}).json()
    assert code and all("code" in m["taskTypes"] for m in code)
    card = c.get("/api/v1/models/llama-3.1-8b-instruct").json()
    arch = card["architecture"]
    assert (arch["layers"], arch["hiddenSize"], arch["heads"], arch["kvHeads"]) == (32, 4096, 32, 8)
    assert card["license"] and card["releaseDate"] and "curl" in card["usage"]
    assert c.get("/api/v1/models/no-such-model").status_code == 404


def test_dry_run_estimates_and_misfits_say_why(c):
    r = c.post("/api/v1/services/dry-run", json=svc("est"))
    assert r.status_code == 200, r.text
    fit = r.json()["fit"]
    assert fit["fits"] and fit["estimate"]["kvBytesPerToken"] == 2 * 30 * 3 * 64 * 2
    assert c.get("/api/v1/services/est").status_code == 404  # nothing deployed
    # A 72B model does not fit a CPU instance of 16Gi: rejected with the numbers.
    big = svc(
        "big",
        model="qwen2.5-72b-instruct",
        resources={"cpu": 1, "memory": "16Gi", "gpus": 0},
        parameters={"maxModelLen": 4096},
    )
    before = snapshot(c)
    r = c.post("/api/v1/services", json=big)
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert "GiB" in msg and "needs" in msg
    assert snapshot(c) == before


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        (svc("Bad_Name"), 422, "metadata.name"),
        (svc("x", model="no-such-model"), 422, "spec.model"),
        (svc("x", replicas=-1), 422, "spec.replicas"),
        (svc("x", replicas="two"), 422, "spec.replicas"),
        (svc("x", parameters={"maxModelLen": 512}), 422, "spec.parameters.maxModelLen"),
        (svc("x", parameters={"maxModelLen": 100000}), 422, "spec.parameters.maxModelLen"),
        (svc("x", parameters={"gpuMemoryUtilization": 1.5}), 422, "spec.parameters.gpuMemoryUtilization"),
        (svc("x", parameters={"tpSize": 2}), 422, "spec.parameters"),
        (svc("x", resources={"cpu": 1, "memory": "1Gi", "gpus": 1}), 422, "spec.resources.gpus"),
        (svc("x", resources={"cpu": 64, "memory": "1Gi", "gpus": 0}), 422, "spec.resources.cpu"),
        (svc("x", engine={"name": "vllm"}), 422, "spec.engine.name"),
        (svc("x", engine={"name": "tgi"}), 422, "spec.engine.name"),
        (svc("x", resourceGroup="nope"), 422, "spec.resourceGroup"),
        (svc("x", surprise=1), 422, "spec.surprise"),
        (
            {
                "metadata": {"name": "x", "description": "d" * 1001},
                "spec": {"model": "smollm2-135m-instruct"},
            },
            422,
            "metadata.description",
        ),
    ],
)
def test_bad_service_documents_are_422_with_field_paths_and_create_nothing(c, body, status, loc):
    before = snapshot(c)
    r = c.post("/api/v1/services", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    assert any(d["loc"].startswith(loc) for d in err["details"]), err
    assert snapshot(c) == before


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b"{not json", "application/json"),
        (b"metadata: [unclosed", "application/yaml"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"\xff\xfe", "application/yaml"),
    ],
)
def test_malformed_bodies_are_4xx(c, content, ctype):
    before = snapshot(c)
    r = c.post("/api/v1/services", content=content, headers={"content-type": ctype})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    assert snapshot(c) == before


def test_duplicate_and_immutable_fields(c):
    # Create on a NotReady-only group so no engine starts: the service waits for resources.
    c.post("/api/v1/clusters/local/groups", json={"name": "parked"})
    c.post(
        "/api/v1/nodes",
        json={"name": "parked-node", "address": "10.9.9.9", "cpus": 8, "memoryBytes": 32 * GiB},
    )
    c.post("/api/v1/clusters/local/groups/parked/nodes", json={"node": "parked-node"})
    doc = svc("dup", resourceGroup="parked")
    assert c.post("/api/v1/services", json=doc).status_code == 201
    r = c.post("/api/v1/services", json=doc)
    assert r.status_code == 409 and "already exists" in r.json()["error"]["message"]
    changed = svc(
        "dup",
        resourceGroup="parked",
        resources={"cpu": 1, "memory": "1Gi", "gpus": 2},
        parameters={"tpSize": 2},
        deployment={"mode": "multiNode", "nodesPerInstance": 2},
    )
    r = c.put("/api/v1/services/dup", json=changed)
    assert r.status_code == 422 and "cannot change after creation" in r.json()["error"]["message"]
    r = c.put("/api/v1/services/dup", json={**doc, "spec": {**doc["spec"], "engine": {"name": "sglang"}}})
    assert r.status_code == 422 and "spec.engine.name" in r.json()["error"]["message"]
    r = c.put("/api/v1/services/other", json=doc)
    assert r.status_code == 422 and "metadata.name" in r.json()["error"]["message"]
    svc_view = c.get("/api/v1/services/dup").json()
    assert svc_view["status"] == "Pending" and "waiting for resources" in svc_view["message"]
    assert c.get("/api/v1/services/dup/yaml").text.startswith("apiVersion: tideserve/v1")
    assert c.delete("/api/v1/services/dup").status_code == 202
    assert c.delete("/api/v1/services/nope").status_code == 404


def test_openapi_documents_the_api(shared_platform):
    import httpx

    spec = httpx.get(shared_platform.url + "/api/v1/openapi.json", timeout=10).json()
    paths = set(spec["paths"])
    assert {
        "/api/v1/clusters",
        "/api/v1/nodes",
        "/api/v1/models",
        "/api/v1/services",
        "/api/v1/keys",
    } <= paths
    assert "/api/v1/services/{name}/restart" in paths and "/api/v1/services/dry-run" in paths
    assert httpx.get(shared_platform.url + "/api/docs", timeout=10).status_code == 200


def test_kubernetes_clusters_and_groups_check_their_settings(c, tmp_path):
    before = snapshot(c)
    missing = c.post(
        "/api/v1/clusters",
        json={"name": "gpu", "platform": "kubernetes", "kubernetes": {"kubeconfig": str(tmp_path / "nope")}},
    )
    assert missing.status_code == 422 and "kubernetes.kubeconfig" in missing.json()["error"]["message"]
    local_with_settings = c.post("/api/v1/clusters", json={"name": "gpu", "kubernetes": {}})
    assert local_with_settings.status_code == 422
    bad_ns = c.post(
        "/api/v1/clusters", json={"name": "gpu", "platform": "kubernetes", "kubernetes": {"namespace": "No"}}
    )
    assert bad_ns.status_code == 422 and "namespace" in bad_ns.text
    selector_on_local = c.post(
        "/api/v1/clusters/local/groups", json={"name": "a100", "nodeSelector": {"x": "y"}}
    )
    assert (
        selector_on_local.status_code == 422 and "kubernetes" in selector_on_local.json()["error"]["message"]
    )
    assert snapshot(c) == before

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    made = c.post(
        "/api/v1/clusters",
        json={
            "name": "gpu",
            "platform": "kubernetes",
            "kubernetes": {"kubeconfig": str(kubeconfig), "istio": True},
        },
    )
    assert made.status_code == 201, made.text
    view = made.json()
    assert view["platform"] == "kubernetes" and view["groups"] == 1
    assert view["kubernetes"]["namespace"] == "tideserve" and view["kubernetes"]["istio"] is True
    group = c.post(
        "/api/v1/clusters/gpu/groups",
        json={
            "name": "h200",
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    assert group.status_code == 201 and group.json()["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H200"
    }
    assert c.delete("/api/v1/clusters/gpu/groups/h200").status_code == 204
    assert c.delete("/api/v1/clusters/gpu/groups/default").status_code == 204
    assert c.delete("/api/v1/clusters/gpu").status_code == 204


def test_manifests_of_a_local_service_preview_kubernetes(c):
    r = c.post("/api/v1/services/manifests", json=svc("preview"))
    assert r.status_code == 200, r.text
    assert r.text.startswith("# cluster local is local:") and "kind: Deployment" in r.text
    assert "name: preview" in r.text and c.get("/api/v1/services/preview").status_code == 404
    bad = c.post("/api/v1/services/manifests", json=svc("preview", replicas=-1))
    assert bad.status_code == 422 and "spec.replicas" in bad.json()["error"]["message"]
    assert c.get("/api/v1/services/nope/manifests").status_code == 404
    unknown = c.post("/api/v1/services/manifests?cluster=mars", json=svc("preview"))
    assert unknown.status_code == 404 and "mars" in unknown.json()["error"]["message"]
