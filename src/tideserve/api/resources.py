"""Clusters, resource groups and nodes (PRODUCT.md "Resources")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tideserve.api.deps import Admin, Ctx
from tideserve.errors import conflict, invalid, not_found
from tideserve.platforms.kubernetes.settings import KubeSettings
from tideserve.services.specbase import _Model
from tideserve.store.models import Cluster, Instance, Node, ResourceGroup, Service

router = APIRouter(prefix="/api/v1", dependencies=[Admin], tags=["resources"])

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(v: str) -> str:
    if not DNS_LABEL.match(v):
        raise ValueError(
            "must be a DNS label: lowercase letters, digits and '-', starting with a letter, at most 63 chars"
        )
    return v


class KubernetesIn(_Model):
    """A kubernetes cluster's settings: what each does, and its default, is in KubeSettings."""

    namespace: str = KubeSettings.namespace
    kubeconfig: str | None = None
    context: str | None = None
    autoscaler: Literal["hpa", "keda"] = KubeSettings.autoscaler
    prometheus_url: str = Field(KubeSettings.prometheus_url, pattern=r"^https?://")
    istio: bool = KubeSettings.istio
    images: dict[Literal["builtin", "vllm", "sglang"], str] = Field(default_factory=dict)
    image_pull_secrets: list[str] = Field(default_factory=list)
    model_pvc: str | None = None
    model_cache_dir: str = Field(KubeSettings.model_cache_dir, pattern=r"^/")
    s3_pull_image: str = KubeSettings.s3_pull_image
    s3_secret: str | None = None
    shm_size: str = KubeSettings.shm_size
    _ns = field_validator("namespace")(_dns_label)


class ClusterIn(_Model):
    name: str
    description: str = Field("", max_length=1000)
    platform: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesIn | None = None
    _v = field_validator("name")(_dns_label)

    @model_validator(mode="after")
    def _settings_for_platform(self) -> ClusterIn:
        if self.platform == "local" and self.kubernetes is not None:
            raise ValueError("kubernetes settings apply to platform kubernetes: remove them or set platform")
        if self.platform == "kubernetes" and self.kubernetes is None:
            self.kubernetes = KubernetesIn()  # in-cluster credentials, namespace tideserve
        return self


class GroupIn(_Model):
    name: str
    description: str = Field("", max_length=1000)
    # kubernetes clusters: the nodes the group's pods may land on
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    _v = field_validator("name")(_dns_label)


class GPUIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    name: str
    memory_bytes: int = Field(gt=0, alias="memoryBytes")
    uuid: str = ""


class NodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=253)
    address: str = Field(min_length=1, max_length=255)
    cpus: float = Field(gt=0)
    memory_bytes: int = Field(gt=0, alias="memoryBytes")
    gpus: list[GPUIn] = []
    labels: dict[str, str] = {}


class NodeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str


def find_cluster(s: Session, name: str) -> Cluster:
    c = s.scalar(select(Cluster).where(Cluster.name == name))
    if c is None:
        raise not_found("cluster", name, "list clusters with GET /api/v1/clusters")
    return c


def _group(s: Session, cluster: str, name: str) -> ResourceGroup:
    c = find_cluster(s, cluster)
    g = s.scalar(select(ResourceGroup).where(ResourceGroup.cluster_id == c.id, ResourceGroup.name == name))
    if g is None:
        raise not_found("resource group", f"{cluster}/{name}")
    return g


def find_node(s: Session, name: str) -> Node:
    n = s.scalar(select(Node).where(Node.name == name))
    if n is None:
        raise not_found("node", name, "list nodes with GET /api/v1/nodes")
    return n


def _services_in(s: Session, cluster: str, group: str | None = None) -> list[str]:
    names = []
    for svc in s.scalars(select(Service)):
        spec = svc.spec["spec"]
        if spec["cluster"] == cluster and (group is None or spec["resourceGroup"] == group):
            names.append(svc.name)
    return names


def cluster_view(s: Session, c: Cluster) -> dict[str, Any]:
    nodes = s.scalar(
        select(func.count()).select_from(Node).join(ResourceGroup).where(ResourceGroup.cluster_id == c.id)
    )
    return {
        "name": c.name,
        "description": c.description,
        "platform": c.platform,
        "status": c.status,
        "message": c.message,
        **({"kubernetes": c.settings} if c.platform == "kubernetes" else {}),
        "groups": len(c.groups),
        "nodes": nodes,
        "createdAt": c.created_at.isoformat(),
    }


def group_view(s: Session, g: ResourceGroup) -> dict[str, Any]:
    return {
        "name": g.name,
        "cluster": g.cluster.name,
        "description": g.description,
        **({k: g.settings.get(k) for k in ("nodeSelector", "tolerations")} if g.settings else {}),
        "nodes": [{"name": n.name, "status": n.status} for n in g.nodes],
        "services": _services_in(s, g.cluster.name, g.name),
        "createdAt": g.created_at.isoformat(),
    }


def node_view(s: Session, n: Node) -> dict[str, Any]:
    instances = []
    for inst in s.scalars(select(Instance).where(Instance.node_id == n.id)):
        svc = s.get(Service, inst.service_id)
        instances.append(
            {"id": inst.id, "service": svc.name if svc else "", "state": inst.state, "port": inst.port}
        )
    return {
        "name": n.name,
        "address": n.address,
        "status": n.status,
        "cluster": n.group.cluster.name if n.group else None,
        "group": n.group.name if n.group else None,
        "cpus": n.cpus,
        "memoryBytes": n.memory_bytes,
        "gpus": n.gpus,
        "labels": n.labels,
        "instances": instances,
        "lastSeen": n.last_seen.isoformat(),
    }


# --- clusters ----------------------------------------------------------------------------------


@router.get("/clusters")
def list_clusters(ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        return [cluster_view(s, c) for c in s.scalars(select(Cluster).order_by(Cluster.id))]


@router.post("/clusters", status_code=201)
def create_cluster(ctx: Ctx, body: ClusterIn) -> dict[str, Any]:
    with ctx.store.session() as s:
        if s.scalar(select(Cluster).where(Cluster.name == body.name)) is not None:
            raise conflict(f"cluster {body.name!r} already exists: pick another name")
        settings: dict[str, Any] = {}
        if body.kubernetes is not None:
            kubeconfig = body.kubernetes.kubeconfig
            if kubeconfig is not None and not Path(kubeconfig).expanduser().is_file():
                raise invalid(
                    f"kubernetes.kubeconfig: no file at {kubeconfig}: give the path of a kubeconfig the "
                    "control plane can read, or leave it out to use the pod's service account (in-cluster)",
                    [{"loc": "kubernetes.kubeconfig", "msg": f"{kubeconfig} not found"}],
                )
            if kubeconfig is not None:
                body.kubernetes.kubeconfig = str(Path(kubeconfig).expanduser().resolve())
            settings = body.kubernetes.model_dump(by_alias=True, exclude_none=True)
        c = Cluster(name=body.name, description=body.description, platform=body.platform, settings=settings)
        s.add(c)
        if body.platform == "kubernetes":
            # Pods may land on any node until groups narrow it down with a nodeSelector.
            s.add(ResourceGroup(cluster=c, name="default", description="Every node of the cluster."))
        s.flush()
        ctx.controller.wake()
        return cluster_view(s, c)


@router.get("/clusters/{name}")
def get_cluster(ctx: Ctx, name: str) -> dict[str, Any]:
    with ctx.store.session() as s:
        c = find_cluster(s, name)
        return {**cluster_view(s, c), "resourceGroups": [group_view(s, g) for g in c.groups]}


@router.delete("/clusters/{name}", status_code=204)
def delete_cluster(ctx: Ctx, name: str) -> None:
    with ctx.store.session() as s:
        c = find_cluster(s, name)
        if c.groups:
            groups = ", ".join(g.name for g in c.groups)
            raise conflict(f"cluster {name!r} still has resource groups ({groups}): delete them first")
        s.delete(c)


# --- resource groups ---------------------------------------------------------------------------


@router.get("/clusters/{cluster}/groups")
def list_groups(ctx: Ctx, cluster: str) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        return [group_view(s, g) for g in find_cluster(s, cluster).groups]


@router.post("/clusters/{cluster}/groups", status_code=201)
def create_group(ctx: Ctx, cluster: str, body: GroupIn) -> dict[str, Any]:
    with ctx.store.session() as s:
        c = find_cluster(s, cluster)
        if any(g.name == body.name for g in c.groups):
            raise conflict(f"resource group {cluster}/{body.name} already exists: pick another name")
        placement = body.model_dump(by_alias=True, include={"node_selector", "tolerations"})
        if c.platform != "kubernetes" and any(placement.values()):
            raise invalid(
                f"nodeSelector and tolerations apply to kubernetes clusters; {cluster!r} is "
                f"{c.platform}: remove them, or add nodes to the group",
                [{"loc": "nodeSelector", "msg": f"cluster {cluster} is {c.platform}"}],
            )
        settings = {k: v for k, v in placement.items() if v}
        g = ResourceGroup(cluster=c, name=body.name, description=body.description, settings=settings)
        s.add(g)
        s.flush()
        return group_view(s, g)


@router.get("/clusters/{cluster}/groups/{name}")
def get_group(ctx: Ctx, cluster: str, name: str) -> dict[str, Any]:
    with ctx.store.session() as s:
        g = _group(s, cluster, name)
        return {**group_view(s, g), "nodes": [node_view(s, n) for n in g.nodes]}


@router.delete("/clusters/{cluster}/groups/{name}", status_code=204)
def delete_group(ctx: Ctx, cluster: str, name: str) -> None:
    with ctx.store.session() as s:
        g = _group(s, cluster, name)
        if g.nodes:
            nodes = ", ".join(n.name for n in g.nodes)
            raise conflict(f"resource group {cluster}/{name} still has nodes ({nodes}): remove them first")
        if services := _services_in(s, cluster, name):
            raise conflict(
                f"resource group {cluster}/{name} is used by services {', '.join(services)}: "
                "delete them first"
            )
        s.delete(g)


@router.post("/clusters/{cluster}/groups/{name}/nodes", status_code=201)
def add_node(ctx: Ctx, cluster: str, name: str, body: NodeRef) -> dict[str, Any]:
    with ctx.store.session() as s:
        g = _group(s, cluster, name)
        n = find_node(s, body.node)
        if n.group is not None:
            where = f"{n.group.cluster.name}/{n.group.name}"
            if n.group.cluster_id != g.cluster_id:
                raise conflict(
                    f"node {n.name!r} is already added to another cluster ({where}): "
                    "remove it there first; a node belongs to one cluster at a time"
                )
            raise conflict(f"node {n.name!r} is already in resource group {where}: remove it there first")
        n.group = g
        s.flush()
        ctx.controller.wake()
        return node_view(s, n)


@router.delete("/clusters/{cluster}/groups/{name}/nodes/{node}", status_code=204)
def remove_node(ctx: Ctx, cluster: str, name: str, node: str) -> None:
    with ctx.store.session() as s:
        g = _group(s, cluster, name)
        n = find_node(s, node)
        if n.group_id != g.id:
            raise not_found("node", node, f"it is not in resource group {cluster}/{name}")
        running = s.scalars(select(Instance).where(Instance.node_id == n.id)).all()
        if running:
            services = sorted({svc.name for i in running if (svc := s.get(Service, i.service_id))})
            raise conflict(
                f"node {node!r} runs {len(running)} instance(s) of {', '.join(services)}: "
                "scale those services down or delete them first"
            )
        n.group = None


# --- nodes -------------------------------------------------------------------------------------


@router.get("/nodes")
def list_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        return [node_view(s, n) for n in s.scalars(select(Node).order_by(Node.id))]


@router.post("/nodes", status_code=201)
def register_node(ctx: Ctx, body: Annotated[NodeIn, Body()]) -> dict[str, Any]:
    """Register a machine by its hardware. Only the machine running the control plane has an agent
    on the local platform, so another node stays NotReady: it is listed and can be grouped, but the
    local platform places no instance on it."""
    with ctx.store.session() as s:
        if s.scalar(select(Node).where(Node.name == body.name)) is not None:
            raise conflict(f"node {body.name!r} is already registered")
        n = Node(
            name=body.name,
            address=body.address,
            cpus=body.cpus,
            memory_bytes=body.memory_bytes,
            gpus=[g.model_dump(by_alias=False) for g in body.gpus],
            labels=body.labels,
            status="NotReady",
        )
        s.add(n)
        s.flush()
        return node_view(s, n)


@router.get("/nodes/{name}")
def get_node(ctx: Ctx, name: str) -> dict[str, Any]:
    with ctx.store.session() as s:
        return node_view(s, find_node(s, name))


@router.delete("/nodes/{name}", status_code=204)
def delete_node(ctx: Ctx, name: str) -> None:
    with ctx.store.session() as s:
        n = find_node(s, name)
        if n.group is not None:
            raise conflict(
                f"node {name!r} is in resource group {n.group.cluster.name}/{n.group.name}: remove it first"
            )
        s.delete(n)
