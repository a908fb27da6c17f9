"""First start of a home: the `local` cluster with group `default`, this machine as its node, and
(unless asked not to) the default service. Later starts only refresh this node's hardware."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tideserve.resources.discovery import MachineInfo
from tideserve.store.models import Cluster, Node, ResourceGroup, Service

log = logging.getLogger("tideserve")

LOCAL_CLUSTER, DEFAULT_GROUP = "local", "default"
DEFAULT_SERVICE = "smollm2-135m-instruct"


def default_service_document(machine: MachineInfo) -> dict[str, object]:
    return {
        "apiVersion": "tideserve/v1",
        "kind": "Service",
        "metadata": {"name": DEFAULT_SERVICE, "description": "The bundled SmolLM2-135M-Instruct on CPU."},
        "spec": {
            "model": DEFAULT_SERVICE,
            "cluster": LOCAL_CLUSTER,
            "resourceGroup": DEFAULT_GROUP,
            "engine": {"name": "builtin"},
            "replicas": 1,
            # Half the machine at most, so a rolling update has room for the surge instance.
            "resources": {"cpu": max(1, machine.cpus // 2), "memory": "2Gi", "gpus": 0},
            "parameters": {"maxModelLen": 8192, "maxBatchSize": 32},
        },
    }


def register_this_machine(s: Session, machine: MachineInfo) -> tuple[Node, bool]:
    """Upsert the node for this machine; True when this is the home's first start."""
    first = s.scalar(select(func.count()).select_from(Cluster)) == 0 and (
        s.scalar(select(func.count()).select_from(Node)) == 0
    )
    node = s.scalar(select(Node).where(Node.name == machine.hostname))
    gpus = [
        {"index": g.index, "name": g.name, "memory_bytes": g.memory_bytes, "uuid": g.uuid}
        for g in machine.gpus
    ]
    if node is None:
        node = Node(name=machine.hostname, address="127.0.0.1", cpus=machine.cpus, memory_bytes=0)
        s.add(node)
    node.cpus, node.memory_bytes, node.gpus = machine.cpus, machine.memory_bytes, gpus
    node.status, node.last_seen = "Ready", datetime.now(UTC)
    if first:
        cluster = Cluster(name=LOCAL_CLUSTER, description="This machine.", platform="local")
        group = ResourceGroup(cluster=cluster, name=DEFAULT_GROUP, description="Created by the first start.")
        s.add_all([cluster, group])
        node.group = group
        log.info("first start: cluster %s, group %s, node %s", LOCAL_CLUSTER, DEFAULT_GROUP, node.name)
    return node, first


def has_service(s: Session, name: str) -> bool:
    return s.scalar(select(Service).where(Service.name == name)) is not None


def ensure_kubernetes_cluster(s: Session, name: str, namespace: str) -> Cluster:
    """An in-cluster control plane's own cluster (`tideserve up --kubernetes-cluster`): created with the
    pod's service account for credentials and a `default` group of every node; kept as is once there,
    so settings changed through the API survive restarts."""
    cluster = s.scalar(select(Cluster).where(Cluster.name == name))
    if cluster is None:
        cluster = Cluster(
            name=name,
            description="The Kubernetes cluster this control plane runs in.",
            platform="kubernetes",
            settings={"namespace": namespace},
        )
        s.add_all([cluster, ResourceGroup(cluster=cluster, name=DEFAULT_GROUP, description="Every node.")])
        log.info("cluster %s on kubernetes (in-cluster), services in namespace %s", name, namespace)
    elif cluster.platform != "kubernetes":
        raise SystemExit(f"cluster {name!r} exists on the {cluster.platform} platform: pick another name")
    return cluster
