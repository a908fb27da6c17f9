"""The local platform launches engines on this machine, so creating (or dry-running) a service whose
engine is not installed here is a 422 naming spec.engine.name and the fix; a kubernetes cluster does
not care what this machine has. Through the real API app, in-process (no server, no lifespan: the
reconciler never starts, so nothing is launched)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tideserve.backends.sglang import SGLANG
from tideserve.backends.vllm import VLLM
from tideserve.controlplane import build


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home: Path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TIDESERVE_DATABASE_URL", raising=False)  # its own SQLite store, whatever the shell has
        app, _summary = build(home, deploy_default=False)
    key = (home / "admin.key").read_text().strip()
    yield TestClient(app, headers={"Authorization": f"Bearer {key}"})
    app.state.ctx.store.close()


def document(name: str, engine: str, cluster: str = "local", model: str = "smollm2-135m-instruct") -> dict:
    spec = {
        "model": model,
        "cluster": cluster,
        "engine": {"name": engine},
        "resources": {"cpu": 0.5, "memory": "1Gi", "gpus": 0},
    }
    return {"metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize(
    ("adapter", "command", "pin"),
    [(VLLM, "`vllm serve`", "vllm==0.33.0"), (SGLANG, "`python3 -m sglang.launch_server`", "sglang==0.5.23")],
)
@pytest.mark.parametrize("path", ["/api/v1/services", "/api/v1/services/dry-run"])
def test_local_cluster_refuses_an_engine_not_installed_here(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, adapter, command: str, pin: str, path: str
) -> None:
    monkeypatch.setattr(type(adapter), "installed", lambda self: None)
    r = client.post(path, json=document("chat", adapter.name))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    message = error["message"]
    assert message.startswith(f"spec.engine.name: engine '{adapter.name}' is not installed on node ")
    assert socket.gethostname() in message and command in message
    assert f"pip install {pin}" in message and "kubernetes cluster" in message
    assert [d["loc"] for d in error["details"]] == ["spec.engine.name"]
    assert client.get("/api/v1/services").json() == []


def test_local_cluster_accepts_an_installed_engine(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(VLLM), "installed", lambda self: "0.33.0")
    # a bf16 model: the fit estimate of the bundled GGUF one is the built-in engine's alone
    r = client.post("/api/v1/services/dry-run", json=document("chat", "vllm", model="qwen3-0.6b"))
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["spec"]["engine"]["name"] == "vllm"


def test_kubernetes_cluster_does_not_ask_this_machine(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(VLLM), "installed", lambda self: None)
    r = client.post("/api/v1/clusters", json={"name": "gpus", "platform": "kubernetes"})
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/services/dry-run", json=document("chat", "vllm", "gpus", "qwen3-0.6b"))
    # Whatever else the kubernetes cluster says of the document (this one has no nodes yet), it is
    # not about the engine on this machine.
    assert r.status_code in (200, 422), r.text
    assert "not installed" not in r.text
    if r.status_code == 422:
        assert "spec.engine.name" not in [d["loc"] for d in r.json()["error"]["details"]]


def test_the_release_a_spec_names_must_be_the_one_installed_here(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(VLLM), "installed", lambda self: "0.33.0")
    doc = document("chat", "vllm", model="qwen3-0.6b")
    other = {**doc, "spec": {**doc["spec"], "engine": {"name": "vllm", "version": "0.30.1"}}}
    r = client.post("/api/v1/services/dry-run", json=other)
    assert r.status_code == 422 and [d["loc"] for d in r.json()["error"]["details"]] == [
        "spec.engine.version"
    ]
    assert "vllm 0.33.0 is installed" in r.json()["error"]["message"]
    same = {**doc, "spec": {**doc["spec"], "engine": {"name": "vllm", "version": "v0.33.0"}}}
    r = client.post("/api/v1/services/dry-run", json=same)
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["spec"]["engine"]["version"] == "0.33.0"  # the leading v dropped
    bad = {**doc, "spec": {**doc["spec"], "engine": {"name": "vllm", "version": "latest!"}}}
    r = client.post("/api/v1/services/dry-run", json=bad)
    assert r.status_code == 422 and "spec.engine.version" in r.json()["error"]["message"]
    # A quantized file on a CPU instance of another engine: estimated in bfloat16, never a 500.
    r = client.post("/api/v1/services/dry-run", json=document("chat", "vllm"))
    assert r.status_code in (200, 422), r.text


def test_a_named_release_is_the_image_on_kubernetes(client: TestClient) -> None:
    assert client.post("/api/v1/clusters", json={"name": "k8s", "platform": "kubernetes"}).status_code == 201
    node = {"name": "gpu-node", "address": "10.0.0.7", "cpus": 32, "memoryBytes": 256 * 2**30}
    assert client.post("/api/v1/nodes", json=node).status_code == 201
    assert (
        client.post("/api/v1/clusters/k8s/groups/default/nodes", json={"node": "gpu-node"}).status_code == 201
    )
    doc = document("chat", "sglang", "k8s", "qwen3-0.6b")
    doc["spec"]["engine"]["version"] = "0.5.21"
    doc["spec"]["resources"]["memory"] = "16Gi"
    r = client.post("/api/v1/services/manifests", json=doc)
    assert r.status_code == 200, r.text
    assert "image: lmsysorg/sglang:v0.5.21-cu130" in r.text
