"""The `tideserve` command: `up`/`down` run the platform; the rest talk to its REST API."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from tideserve.cli.autoscale import simulate
from tideserve.cli.client import Client, fail
from tideserve.cli.gateway import gateway
from tideserve.cli.output import Format, emit, gib
from tideserve.cli.top import top
from tideserve.cli.up import down, up
from tideserve.durations import duration_seconds

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="tideserve: elastic LLM inference platform.",
)
app.command()(up)
app.command()(down)
app.command()(gateway)
app.command()(top)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="state directory (default: $TIDESERVE_HOME)")]
OutOpt = Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml")]
FileOpt = Annotated[Path, typer.Option("-f", "--file", help="service document (YAML or JSON); - for stdin")]


def _group(name: str, help: str) -> typer.Typer:
    sub = typer.Typer(no_args_is_help=True, help=help)
    app.add_typer(sub, name=name)
    return sub


def _read(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    raise AssertionError  # fail() exits


# --- models ------------------------------------------------------------------------------------

models = _group("models", "The model plaza and custom models.")
MODEL_COLUMNS = [
    ("name", lambda m: m["name"]),
    ("family", lambda m: m["family"]),
    ("params", lambda m: m.get("parametersHuman", m.get("parameters"))),
    ("context", lambda m: m.get("maxContext")),
    ("tasks", lambda m: ",".join(m.get("taskTypes", []))),
    ("engines", lambda m: ",".join(m.get("recommendedEngines", []))),
    ("source", lambda m: m.get("source")),
]


@models.command("list")
def models_list(
    task: Annotated[str | None, typer.Option(help="task type, e.g. chat")] = None,
    family: Annotated[str | None, typer.Option(help="model family, e.g. qwen3")] = None,
    tag: Annotated[str | None, typer.Option(help="tag")] = None,
    output: OutOpt = Format.table,
    home: HomeOpt = None,
) -> None:
    """List models of the plaza and custom models, optionally filtered."""
    params = {k: v for k, v in {"task": task, "family": family, "tag": tag}.items() if v}
    emit(Client(home).get("/api/v1/models", params=params), output, MODEL_COLUMNS)


@models.command("get")
def models_get(name: str, output: OutOpt = Format.yaml, home: HomeOpt = None) -> None:
    """A model's card: version, license, architecture, usage."""
    emit(Client(home).get(f"/api/v1/models/{name}"), output)


@models.command("add")
def models_add(
    name: str,
    source: Annotated[str, typer.Argument(help="a local path, s3://bucket/prefix or hf://org/name")],
    s3_endpoint: Annotated[str | None, typer.Option(help="S3-compatible endpoint URL")] = None,
    output: OutOpt = Format.yaml,
    home: HomeOpt = None,
) -> None:
    """Register a custom model; its metadata and sha256 are read from the files."""
    body: dict[str, Any] = {"name": name, "source": source}
    if s3_endpoint:
        body["s3"] = {"endpointUrl": s3_endpoint}
    emit(Client(home).post("/api/v1/models", body), output)


@models.command("delete")
def models_delete(name: str, home: HomeOpt = None) -> None:
    """Remove a custom model (not one a service uses)."""
    Client(home).delete(f"/api/v1/models/{name}")
    typer.echo(f"model {name} deleted")


@models.command("deploy")
def models_deploy(
    model: str,
    name: Annotated[str | None, typer.Option(help="service name (default: the model's name)")] = None,
    replicas: int = 1,
    cpu: float = 1.0,
    memory: str = "2Gi",
    gpus: int = 0,
    cluster: str = "local",
    group: str = "default",
    wait: Annotated[bool, typer.Option(help="show progress until Running")] = True,
    home: HomeOpt = None,
) -> None:
    """Deploy a model as a service with the card's recommended settings."""
    doc = {
        "metadata": {"name": name or model.replace(".", "-")},
        "spec": {
            "model": model,
            "cluster": cluster,
            "resourceGroup": group,
            "replicas": replicas,
            "resources": {"cpu": cpu, "memory": memory, "gpus": gpus},
        },
    }
    client = Client(home)
    svc = client.post("/api/v1/services", doc)
    typer.echo(f"service {svc['name']} created")
    if wait:
        _wait_running(client, svc["name"])


# --- resources ---------------------------------------------------------------------------------

clusters = _group("clusters", "Application clusters.")
CLUSTER_COLUMNS = [
    ("name", lambda c: c["name"]),
    ("platform", lambda c: c["platform"]),
    ("status", lambda c: c["status"]),
    ("groups", lambda c: c["groups"]),
    ("nodes", lambda c: c["nodes"]),
    ("created", lambda c: c["createdAt"][:19]),
]


@clusters.command("list")
def clusters_list(output: OutOpt = Format.table, home: HomeOpt = None) -> None:
    emit(Client(home).get("/api/v1/clusters"), output, CLUSTER_COLUMNS)


@clusters.command("create")
def clusters_create(
    name: str,
    description: str = "",
    platform: Annotated[str, typer.Option(help="local, or kubernetes")] = "local",
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubernetes: a kubeconfig (none: the pod's service account)")
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubernetes: the kubeconfig's context")] = None,
    namespace: Annotated[str | None, typer.Option(help="kubernetes: where services go")] = None,
    autoscaler: Annotated[str | None, typer.Option(help="kubernetes: keda (default) or hpa")] = None,
    istio: Annotated[bool, typer.Option(help="kubernetes: canary weights as Istio routes")] = False,
    model_pvc: Annotated[str | None, typer.Option(help="kubernetes: a PVC holding the models")] = None,
    home: HomeOpt = None,
) -> None:
    body: dict[str, Any] = {"name": name, "description": description, "platform": platform}
    if platform == "kubernetes":
        settings = {
            "kubeconfig": str(kubeconfig) if kubeconfig else None,
            "context": context,
            "namespace": namespace,
            "autoscaler": autoscaler,
            "istio": istio or None,
            "modelPvc": model_pvc,
        }
        body["kubernetes"] = {k: v for k, v in settings.items() if v is not None}
    Client(home).post("/api/v1/clusters", body)
    typer.echo(f"cluster {name} created ({platform})")


@clusters.command("get")
def clusters_get(name: str, output: OutOpt = Format.yaml, home: HomeOpt = None) -> None:
    emit(Client(home).get(f"/api/v1/clusters/{name}"), output)


@clusters.command("delete")
def clusters_delete(name: str, home: HomeOpt = None) -> None:
    """Delete a cluster that has no resource groups."""
    Client(home).delete(f"/api/v1/clusters/{name}")
    typer.echo(f"cluster {name} deleted")


groups = _group("groups", "Resource groups of a cluster.")
GROUP_COLUMNS = [
    ("name", lambda g: g["name"]),
    ("cluster", lambda g: g["cluster"]),
    ("nodes", lambda g: " ".join(f"{n['name']}({n['status']})" for n in g["nodes"])),
    ("services", lambda g: ",".join(g["services"])),
    ("created", lambda g: g["createdAt"][:19]),
]
ClusterOpt = Annotated[str, typer.Option("--cluster", "-c", help="cluster")]


@groups.command("list")
def groups_list(cluster: ClusterOpt = "local", output: OutOpt = Format.table, home: HomeOpt = None) -> None:
    emit(Client(home).get(f"/api/v1/clusters/{cluster}/groups"), output, GROUP_COLUMNS)


@groups.command("create")
def groups_create(
    name: str,
    cluster: ClusterOpt = "local",
    description: str = "",
    node_selector: Annotated[
        list[str] | None, typer.Option(help="kubernetes: KEY=VALUE a node must have (repeatable)")
    ] = None,
    toleration: Annotated[
        list[str] | None, typer.Option(help="kubernetes: KEY[=VALUE]:EFFECT a pod tolerates (repeatable)")
    ] = None,
    home: HomeOpt = None,
) -> None:
    body: dict[str, Any] = {"name": name, "description": description}
    if node_selector:
        body["nodeSelector"] = dict(_pair(p, "--node-selector", "KEY=VALUE") for p in node_selector)
    if toleration:
        body["tolerations"] = [_toleration(t) for t in toleration]
    Client(home).post(f"/api/v1/clusters/{cluster}/groups", body)
    typer.echo(f"resource group {cluster}/{name} created")


@groups.command("get")
def groups_get(
    name: str, cluster: ClusterOpt = "local", output: OutOpt = Format.yaml, home: HomeOpt = None
) -> None:
    emit(Client(home).get(f"/api/v1/clusters/{cluster}/groups/{name}"), output)


@groups.command("delete")
def groups_delete(name: str, cluster: ClusterOpt = "local", home: HomeOpt = None) -> None:
    """Delete a resource group that has no nodes."""
    Client(home).delete(f"/api/v1/clusters/{cluster}/groups/{name}")
    typer.echo(f"resource group {cluster}/{name} deleted")


nodes = _group("nodes", "Machines: register, add to a resource group, remove.")
NODE_COLUMNS = [
    ("name", lambda n: n["name"]),
    ("address", lambda n: n["address"]),
    ("status", lambda n: n["status"]),
    ("group", lambda n: f"{n['cluster']}/{n['group']}" if n["group"] else ""),
    ("cpus", lambda n: f"{n['cpus']:g}"),
    ("memory", lambda n: gib(n["memoryBytes"])),
    ("gpus", lambda n: ", ".join(f"{g['name']} {gib(g['memory_bytes'])}" for g in n["gpus"]) or "-"),
    ("instances", lambda n: len(n["instances"])),
]


@nodes.command("list")
def nodes_list(output: OutOpt = Format.table, home: HomeOpt = None) -> None:
    emit(Client(home).get("/api/v1/nodes"), output, NODE_COLUMNS)


@nodes.command("get")
def nodes_get(name: str, output: OutOpt = Format.yaml, home: HomeOpt = None) -> None:
    emit(Client(home).get(f"/api/v1/nodes/{name}"), output)


@nodes.command("add")
def nodes_add(
    name: str,
    group: Annotated[str, typer.Option(help="resource group to add the node to")] = "default",
    cluster: ClusterOpt = "local",
    home: HomeOpt = None,
) -> None:
    """Add a registered node to a resource group (a node belongs to one cluster at a time)."""
    Client(home).post(f"/api/v1/clusters/{cluster}/groups/{group}/nodes", {"node": name})
    typer.echo(f"node {name} added to {cluster}/{group}")


@nodes.command("remove")
def nodes_remove(
    name: str,
    group: Annotated[str, typer.Option(help="resource group the node is in")] = "default",
    cluster: ClusterOpt = "local",
    home: HomeOpt = None,
) -> None:
    """Remove a node from its resource group (the machine itself is left alone)."""
    Client(home).delete(f"/api/v1/clusters/{cluster}/groups/{group}/nodes/{name}")
    typer.echo(f"node {name} removed from {cluster}/{group}")


# --- services ----------------------------------------------------------------------------------

services = _group("services", "Inference services.")
SERVICE_COLUMNS = [
    ("name", lambda s: s["name"]),
    ("status", lambda s: s["status"]),
    ("model", lambda s: s["model"]),
    (
        "engine",
        lambda s: (
            f"{s['engine']['name']}{' ' + s['engine']['version'] if s['engine'].get('version') else ''}"
        ),
    ),
    (
        "resources",
        lambda s: f"{s['resources']['cpu']}cpu/{s['resources']['memory']}/{s['resources']['gpus']}gpu",
    ),
    ("instances", lambda s: f"{s['replicas']['ready']}/{s['replicas']['desired']}"),
    ("access", lambda s: f"{s['access']['exposure']}:{s['access']['servicePort']}"),
    ("revision", lambda s: s["revision"]),
    ("updated", lambda s: s["updatedAt"][:19]),
]
INSTANCE_COLUMNS = [
    ("id", lambda i: i["id"]),
    ("revision", lambda i: i["revision"]),
    ("state", lambda i: i["state"]),
    ("node", lambda i: i["node"]),
    ("address", lambda i: i["address"]),
    ("restarts", lambda i: i["restarts"]),
    ("started", lambda i: (i["startedAt"] or "")[:19]),
    ("last error", lambda i: (i["lastError"] or "").split("\n")[0][:80]),
]


def _wait_running(client: Client, name: str, timeout: float = 900.0) -> None:
    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    with console.status(f"deploying {name} ...") as status:
        while time.monotonic() < deadline:
            svc = client.get(f"/api/v1/services/{name}")
            states = ", ".join(f"{i['id']} {i['state']}" for i in svc["instances"]) or "no instances yet"
            status.update(
                f"{name}: {svc['status']}  "
                f"{svc['replicas']['ready']}/{svc['replicas']['desired']} ready  ({states})"
            )
            if svc["status"] == "Running":
                console.print(f"{name} is Running")
                return
            if svc["status"] == "Abnormal":
                fail(f"{name} is Abnormal: {svc['message']}")
            time.sleep(1.0)
    fail(f"{name} is not Running after {timeout:.0f} s")


@services.command("list")
def services_list(output: OutOpt = Format.table, home: HomeOpt = None) -> None:
    emit(Client(home).get("/api/v1/services"), output, SERVICE_COLUMNS)


@services.command("get")
def services_get(name: str, output: OutOpt = Format.yaml, home: HomeOpt = None) -> None:
    emit(Client(home).get(f"/api/v1/services/{name}"), output)


@services.command("create")
def services_create(file: FileOpt, wait: bool = True, home: HomeOpt = None) -> None:
    """Create a service from a document (fails if the name exists; see `apply`)."""
    client = Client(home)
    text = _read(file)
    svc = client.send_document("POST", "/api/v1/services", text)
    typer.echo(f"service {svc['name']} created")
    if wait:
        _wait_running(client, svc["name"])


@services.command("dry-run")
def services_dry_run(file: FileOpt, output: OutOpt = Format.yaml, home: HomeOpt = None) -> None:
    """Validate a document and show the memory estimate against the nodes; deploys nothing."""
    text = _read(file)
    out = Client(home).send_document("POST", "/api/v1/services/dry-run", text)
    emit(out["fit"], output)


@services.command("yaml")
def services_yaml(name: str, home: HomeOpt = None) -> None:
    """Print the service's document; `tideserve apply -f` takes it back."""
    typer.echo(Client(home).get(f"/api/v1/services/{name}/yaml").rstrip())


@services.command("manifests")
def services_manifests(
    name: Annotated[str | None, typer.Argument(help="a service (or give -f)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="a service document to render")] = None,
    cluster: Annotated[str | None, typer.Option(help="render for this cluster (default: the spec's)")] = None,
    home: HomeOpt = None,
) -> None:
    """Print the Kubernetes objects a service is (or a document would be) applied as."""
    client = Client(home)
    query = f"?cluster={cluster}" if cluster else ""
    if file is not None:
        text = client.send_document("POST", f"/api/v1/services/manifests{query}", _read(file))
    elif name is not None:
        text = client.get(f"/api/v1/services/{name}/manifests{query}")
    else:
        fail("name a service or give -f FILE")
    typer.echo(text.rstrip())


def _pair(text: str, option: str, form: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        fail(f"{option} {text!r}: write {form}")
    return key, value


def _toleration(text: str) -> dict[str, str]:
    """KEY[=VALUE]:EFFECT, as kubectl taint writes taints."""
    spec, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not spec:
        fail(f"--toleration {text!r}: write KEY[=VALUE]:EFFECT (NoSchedule, PreferNoSchedule, NoExecute)")
    key, eq, value = spec.partition("=")
    if eq:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


@services.command("restart")
def services_restart(name: str, wait: bool = False, home: HomeOpt = None) -> None:
    """Rolling restart: each new instance is ready before an old one drains."""
    client = Client(home)
    svc = client.post(f"/api/v1/services/{name}/restart")
    typer.echo(f"service {name} restarting (revision {svc['revision']})")
    if wait:
        _wait_running(client, name)


@services.command("scale")
def services_scale(name: str, replicas: int, home: HomeOpt = None) -> None:
    client = Client(home)
    doc = yaml.safe_load(client.get(f"/api/v1/services/{name}/yaml"))
    doc["spec"]["replicas"] = replicas
    client.send_document("PUT", f"/api/v1/services/{name}", yaml.safe_dump(doc, sort_keys=False))
    typer.echo(f"service {name} scaled to {replicas}")


@services.command("delete")
def services_delete(name: str, wait: bool = False, home: HomeOpt = None) -> None:
    """Graceful delete: routing stops, in-flight requests finish, then instances stop."""
    client = Client(home)
    client.delete(f"/api/v1/services/{name}")
    typer.echo(f"service {name} deleting")
    while wait:
        names = [s["name"] for s in client.get("/api/v1/services")]
        if name not in names:
            typer.echo(f"service {name} deleted")
            return
        time.sleep(0.5)


@services.command("instances")
def services_instances(name: str, output: OutOpt = Format.table, home: HomeOpt = None) -> None:
    emit(Client(home).get(f"/api/v1/services/{name}/instances"), output, INSTANCE_COLUMNS)


@app.command("logs")
@services.command("logs")
def logs(
    service: str,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="then print new lines as they come, until Ctrl-C")
    ] = False,
    instance: Annotated[
        str | None, typer.Option(help="one instance id, or 'gateway' for the gateway's lines of the service")
    ] = None,
    grep: Annotated[str | None, typer.Option(help="lines containing this text (any case)")] = None,
    request_id: Annotated[
        str | None, typer.Option(help="everything about one request, from the gateway and the instances")
    ] = None,
    session_id: Annotated[
        str | None, typer.Option(help="everything about one conversation (X-Session-Id or the `user` field)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="newer than 15m, 1h, 2d ago, or an ISO time")] = None,
    lines: Annotated[
        int, typer.Option("-n", "--lines", min=1, max=10000, help="at most this many, the newest")
    ] = 200,
    home: HomeOpt = None,
) -> None:
    """What a service's instances print, across rotated files: tail, follow, search."""
    given = {"instance": instance, "grep": grep, "request_id": request_id, "session_id": session_id}
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None} | {"lines": lines}
    if since:
        params["since"] = since_time(since)
    client, path = Client(home), f"/api/v1/services/{service}/logs"
    if not follow:
        text = client.get(path, params=params)
        if text:
            typer.echo(text.rstrip("\n"))
        else:
            typer.echo("no log lines match", err=True)
        return
    try:
        for chunk in client.stream_text(path, params={**params, "follow": "true"}):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:  # the way to stop following
        pass


EVENT_COLUMNS = [
    ("at", lambda e: e["at"][:19].replace("T", " ")),
    ("reason", lambda e: e["reason"]),
    ("instance", lambda e: e["instance"] or ""),
    ("message", lambda e: e["message"].split("\n")[0]),
]


def since_time(text: str) -> str:
    """--since for the API: a time ago ('30m', '1h', '2d') or an ISO time, local when it has no zone."""
    try:
        if (seconds := duration_seconds(text)) is not None:
            return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()
        when = datetime.fromisoformat(text.strip())
        return (when if when.tzinfo else when.astimezone()).isoformat()
    except (ValueError, OverflowError):
        fail(
            f"--since {text!r} is neither a time ago (30m, 1h, 2d) "
            "nor an ISO time (2030-01-31T12:00:00Z, 2030-01-31 12:00)"
        )
    raise AssertionError  # fail() exits


@services.command("events")
def services_events(
    name: str,
    since: Annotated[str | None, typer.Option(help="newer than 30m, 1h, 2d ago, or an ISO time")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, the newest (1-1000)")] = 100,
    output: OutOpt = Format.table,
    home: HomeOpt = None,
) -> None:
    """What happened to a service and why, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if since:
        params["since"] = since_time(since)
    emit(Client(home).get(f"/api/v1/services/{name}/events", params=params)["items"], output, EVENT_COLUMNS)


instances = _group("instances", "Instances of services.")


@instances.command("list")
def instances_list(
    service: Annotated[str, typer.Option("--service", "-s", help="service name")],
    output: OutOpt = Format.table,
    home: HomeOpt = None,
) -> None:
    emit(Client(home).get(f"/api/v1/services/{service}/instances"), output, INSTANCE_COLUMNS)


@app.command()
def apply(file: FileOpt, wait: bool = False, home: HomeOpt = None) -> None:
    """Create or update a service from a document, idempotently."""
    text = _read(file)
    try:
        name = yaml.safe_load(text)["metadata"]["name"]
    except (yaml.YAMLError, TypeError, KeyError):
        # The server gives the precise error (line, column, field) for a malformed document.
        name = "-"
    client = Client(home)
    out = client.send_document("PUT", f"/api/v1/services/{name}", text)
    typer.echo(f"service {out['name']} {out['result']} (revision {out['revision']})")
    if wait:
        _wait_running(client, out["name"])


keys = _group("keys", "API keys.")


def _key_limits(k: dict[str, Any]) -> str:
    parts = [
        f"{v}{unit}"
        for v, unit in (
            (k["requestsPerMinute"], "rpm"),
            (k["tokensPerMinute"], "tpm"),
            (k["maxConcurrent"], "conc"),
        )
        if v is not None
    ]
    return " ".join(parts) or "-"


KEY_COLUMNS = [
    ("name", lambda k: k["name"]),
    ("scope", lambda k: k["scope"]),
    ("prefix", lambda k: k["prefix"]),
    ("state", lambda k: "revoked" if k["revoked"] else "expired" if k["expired"] else "active"),
    ("services", lambda k: "*" if k["services"] is None else ",".join(k["services"])),
    ("priority", lambda k: k["priority"]),
    ("limits", _key_limits),
    ("expires", lambda k: (k["expiresAt"] or "never")[:19]),
    ("created", lambda k: k["createdAt"][:19]),
]
ServiceOpt = Annotated[
    list[str] | None, typer.Option("--service", help="a service the key may call (repeat); default: all")
]
ExpiresInOpt = Annotated[str | None, typer.Option(help="lifetime from now: 30d, 12h, 90m, 3600s")]
PriorityOpt = Annotated[str | None, typer.Option(help="high, normal or low")]
RpmOpt = Annotated[int | None, typer.Option("--rpm", help="requests per minute")]
TpmOpt = Annotated[int | None, typer.Option("--tpm", help="tokens per minute")]
ConcurrentOpt = Annotated[int | None, typer.Option(help="requests in flight at once")]


def _key_access(
    service: list[str] | None,
    expires_in: str | None,
    priority: str | None,
    rpm: int | None,
    tpm: int | None,
    max_concurrent: int | None,
) -> dict[str, Any]:
    """The options given, as the API's fields; options left out are not sent, so they do not change."""
    fields = {
        "services": service or None,
        "expiresIn": expires_in,
        "priority": priority,
        "requestsPerMinute": rpm,
        "tokensPerMinute": tpm,
        "maxConcurrent": max_concurrent,
    }
    return {k: v for k, v in fields.items() if v is not None}


@keys.command("create")
def keys_create(
    name: str,
    scope: Annotated[str, typer.Option(help="inference (OpenAI endpoints only) or admin")] = "inference",
    service: ServiceOpt = None,
    expires_in: ExpiresInOpt = None,
    priority: PriorityOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrent: ConcurrentOpt = None,
    home: HomeOpt = None,
) -> None:
    """Create a key; the secret is printed once."""
    access = _key_access(service, expires_in, priority, rpm, tpm, max_concurrent)
    out = Client(home).post("/api/v1/keys", {"name": name, "scope": scope, **access})
    typer.echo(out["key"])


@keys.command("update")
def keys_update(
    name: str,
    service: ServiceOpt = None,
    all_services: Annotated[
        bool, typer.Option("--all-services", help="let the key call every service")
    ] = False,
    expires_in: ExpiresInOpt = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="the key never expires")] = False,
    priority: PriorityOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrent: ConcurrentOpt = None,
    home: HomeOpt = None,
) -> None:
    """Change a key's services, expiry, priority or limits; options left out stay as they are."""
    if service and all_services:
        fail("--service and --all-services contradict each other: give one")
    if expires_in and no_expiry:
        fail("--expires-in and --no-expiry contradict each other: give one")
    body: dict[str, Any] = _key_access(service, expires_in, priority, rpm, tpm, max_concurrent)
    if all_services:
        body["services"] = None
    if no_expiry:
        body["expiresAt"] = None
    if not body:
        fail("nothing to change: give at least one option (see --help)")
    Client(home).request("PATCH", f"/api/v1/keys/{name}", json=body)
    typer.echo(f"key {name} updated")


@keys.command("get")
def keys_get(name: str, output: OutOpt = Format.yaml, home: HomeOpt = None) -> None:
    """A key's scope, services, expiry, priority and limits (never its secret)."""
    emit(Client(home).get(f"/api/v1/keys/{name}"), output)


@keys.command("list")
def keys_list(output: OutOpt = Format.table, home: HomeOpt = None) -> None:
    emit(Client(home).get("/api/v1/keys"), output, KEY_COLUMNS)


@keys.command("revoke")
def keys_revoke(name: str, home: HomeOpt = None) -> None:
    Client(home).delete(f"/api/v1/keys/{name}")
    typer.echo(f"key {name} revoked")


autoscale = _group("autoscale", "Autoscaling policies, offline: replay a trace to tune one.")
autoscale.command()(simulate)


def main() -> None:
    app()
