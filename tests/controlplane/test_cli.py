"""The CLI covers the API: every command group, -o table|json|yaml, and errors that exit non-zero
with the API's message (against a real platform)."""

from __future__ import annotations

import json

import yaml


def test_models_resources_and_output_formats(shared_platform, tmp_path):
    p = shared_platform
    models = json.loads(p.cli("models", "list", "-o", "json").stdout)
    assert any(m["name"] == "smollm2-135m-instruct" for m in models)
    table = p.cli("models", "list", "--family", "qwen3").stdout
    assert "qwen3-8b" in table and "llama" not in table
    card = yaml.safe_load(p.cli("models", "get", "qwen2.5-7b-instruct").stdout)
    assert card["architecture"]["kvHeads"] == 4

    p.cli("clusters", "create", "cli-east")
    p.cli("groups", "create", "gpu", "--cluster", "cli-east")
    clusters = yaml.safe_load(p.cli("clusters", "list", "-o", "yaml").stdout)
    assert {"name": "cli-east", "groups": 1}.items() <= next(
        c for c in clusters if c["name"] == "cli-east"
    ).items()
    assert "gpu" in p.cli("groups", "list", "--cluster", "cli-east").stdout
    nodes = json.loads(p.cli("nodes", "list", "-o", "json").stdout)
    local = nodes[0]["name"]
    out = p.cli("nodes", "add", local, "--cluster", "cli-east", "--group", "gpu", check=False)
    assert out.returncode == 1 and "already added to another cluster" in out.stderr
    out = p.cli("clusters", "delete", "cli-east", check=False)
    assert out.returncode == 1 and "still has resource groups" in out.stderr
    p.cli("groups", "delete", "gpu", "--cluster", "cli-east")
    p.cli("clusters", "delete", "cli-east")
    assert "cli-east" not in p.cli("clusters", "list").stdout

    doc = tmp_path / "svc.yaml"
    doc.write_text(yaml.safe_dump({"metadata": {"name": "est"}, "spec": {"model": "smollm2-135m-instruct"}}))
    fit = yaml.safe_load(p.cli("services", "dry-run", "-f", str(doc)).stdout)
    assert fit["fits"] is True and fit["estimate"]["weightsBytes"] > 0
    assert "est" not in p.cli("services", "list").stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata: {name: est}\nspec:\n  model: smollm2-135m-instruct\n  replicas: many\n")
    out = p.cli("apply", "-f", str(bad), check=False)
    assert out.returncode == 1 and "spec.replicas" in out.stderr
    out = p.cli("services", "get", "nope", check=False)
    assert out.returncode == 1 and "not found" in out.stderr

    key = p.cli("keys", "create", "cli-app").stdout.strip()
    assert key.startswith("ts-")
    assert "cli-app" in p.cli("keys", "list").stdout
    p.cli("keys", "revoke", "cli-app")


def test_kubernetes_clusters_groups_and_manifests_from_the_cli(shared_platform, tmp_path):
    p = shared_platform
    kube = ("clusters", "create", "k", "--platform", "kubernetes", "--kubeconfig")
    out = p.cli(*kube, str(tmp_path / "x"), check=False)
    assert out.returncode == 1 and "kubernetes.kubeconfig" in out.stderr
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    p.cli(*kube, str(config), "--autoscaler", "hpa")
    out = p.cli("groups", "create", "g", "--cluster", "k", "--toleration", "nvidia.com/gpu", check=False)
    assert out.returncode == 1 and "KEY[=VALUE]:EFFECT" in out.stderr
    p.cli(
        "groups", "create", "g", "--cluster", "k", "--node-selector", "pool=gpu",
        "--toleration", "nvidia.com/gpu:NoSchedule",
    )  # fmt: skip
    group = yaml.safe_load(p.cli("groups", "get", "g", "--cluster", "k").stdout)
    assert group["nodeSelector"] == {"pool": "gpu"}
    assert group["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

    doc = tmp_path / "svc.yaml"
    doc.write_text(
        "metadata: {name: onk}\nspec: {model: smollm2-135m-instruct, resources: {cpu: 1, memory: 2Gi}}\n"
    )
    objects = list(yaml.safe_load_all(p.cli("services", "manifests", "-f", str(doc)).stdout))
    assert [o["kind"] for o in objects][:2] == ["Deployment", "Service"]
    out = p.cli("services", "manifests", check=False)
    assert out.returncode == 1 and "-f FILE" in out.stderr
    p.cli("groups", "delete", "g", "--cluster", "k")
    p.cli("groups", "delete", "default", "--cluster", "k")
    p.cli("clusters", "delete", "k")
