"""The Kubernetes platform's control loop. For each service whose cluster is on Kubernetes:

    desired objects = render(service)  ->  server-side apply them  ->  prune what is no longer rendered
    pods + EndpointSlices  ->  instance rows (the gateway routes by them, the collector scrapes them)

Kubernetes does the instance work the local controller does by hand: a Deployment rolls a new revision
(maxSurge 1, maxUnavailable 0), restarts crashed pods and, with spec.autoscaling, HPA or KEDA sets the
replica count. So this loop only keeps the objects as rendered and mirrors what runs. Like the local
controller it is level-triggered: each pass starts from the store and the API server, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.catalog.plaza import get_card
from tideserve.observability.logs import service_log_dir
from tideserve.platforms.kubernetes.api import KubeApi, KubeError, ObjectRef
from tideserve.platforms.kubernetes.logship import LogShipper
from tideserve.platforms.kubernetes.manifests import render, to_yaml
from tideserve.platforms.kubernetes.observe import instance_state
from tideserve.platforms.kubernetes.settings import (
    KubeSettings,
    ModelSource,
    Placement,
    RenderInput,
)
from tideserve.services import events, rollout
from tideserve.store.db import Store
from tideserve.store.models import Cluster, CustomModel, Instance, Node, ResourceGroup, Revision, Service

log = logging.getLogger(__name__)

# Unchanged objects are applied again this often anyway: it undoes a hand edit (kubectl edit) and
# recreates what someone deleted, without a request per object per pass.
REAPPLY_S = 60.0
DELETE_GRACE_S = 120  # the engines drain in-flight requests on SIGTERM


class ModelNotOnKubernetes(ValueError):
    pass


def model_source(s: Session, model: str) -> ModelSource:
    """Where the pods of a service find its model."""
    custom = s.scalar(select(CustomModel).where(CustomModel.name == model))
    if custom is not None:
        source = custom.source
        if source.startswith("s3://"):
            return ModelSource("s3", source)
        if source.startswith("hf://"):
            return ModelSource("remote", source.removeprefix("hf://").partition("@")[0])
        # A path on the control plane's disk means nothing to a pod: the cluster's model PVC holds
        # the model under the custom model's name.
        return ModelSource("pvc", model)
    card = get_card(model)
    if card is None:
        raise ModelNotOnKubernetes(f"model {model!r} is neither in the model plaza nor a custom model")
    if card.source == "bundled":
        return ModelSource("remote", card.name)  # the tideserve image ships it
    return ModelSource("remote", card.source.removeprefix("hf://"))


def render_input(
    s: Session,
    document: dict[str, Any],
    revision: int,
    cluster: Cluster | None,
    service_id: int | None = None,
) -> RenderInput:
    """What render() needs for a service document (the current revision's) on `cluster` (None: a
    kubernetes cluster with default settings, for a preview of a service that runs elsewhere)."""
    body = document["spec"]
    group = None
    if cluster is not None:
        group = s.scalar(
            select(ResourceGroup).where(
                ResourceGroup.cluster_id == cluster.id, ResourceGroup.name == body["resourceGroup"]
            )
        )
    where = group.settings if group is not None else {}
    placement = Placement(
        node_selector=dict(where.get("nodeSelector") or {}),
        tolerations=tuple(where.get("tolerations") or ()),
    )
    stable = None
    canary = (body.get("routing") or {}).get("canary")
    if canary and service_id is not None and canary["stableRevision"] != revision:
        doc = s.scalar(
            select(Revision.spec).where(
                Revision.service_id == service_id, Revision.number == canary["stableRevision"]
            )
        )
        if doc is not None:
            stable = (int(canary["stableRevision"]), doc)
    model = model_source(s, body["model"])
    card = get_card(body["model"])
    if (
        body["engine"]["name"] == "builtin"
        and model.kind == "remote"
        and not (card and card.source == "bundled")
    ):
        raise ModelNotOnKubernetes(
            f"the built-in engine loads the bundled model or files, not {model.uri!r} from a hub: register "
            "the model as a custom model from s3:// or give the cluster a model PVC (modelPvc) holding "
            "it, or use engine vllm or sglang, which pull it themselves"
        )
    return RenderInput(
        document=document,
        revision=revision,
        model=model,
        settings=KubeSettings.from_json(cluster.settings if cluster is not None else {}),
        placement=placement,
        stable=stable,
    )


def _digest(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()


def _ref(obj: dict[str, Any]) -> ObjectRef:
    return ObjectRef(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def _instance_id(uid: str) -> str:
    return uid.replace("-", "")[:32]  # a pod's uid is a UUID: 32 hex digits without its dashes


def _now() -> datetime:
    return datetime.now(UTC)


class KubernetesDriver:
    """Runs inside the controller's loop thread: one pass per controller pass."""

    def __init__(
        self,
        store: Store,
        home: Path,
        connect: Callable[[KubeSettings], KubeApi] = KubeApi.connect,
        unroute: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.store = store
        self.home = home
        self.connect = connect
        self.unroute = unroute
        self.logs = LogShipper()
        self._shipping: set[str] = set()  # instances seen this pass, whose logs keep flowing
        self._apis: dict[str, tuple[str, KubeApi]] = {}  # cluster -> (its settings as JSON, client)
        self._applied: dict[str, tuple[str, float]] = {}  # service -> (digest, monotonic time)

    def api_for(self, cluster: Cluster) -> KubeApi:
        key = json.dumps(cluster.settings, sort_keys=True)
        cached = self._apis.get(cluster.name)
        if cached is None or cached[0] != key:
            cached = (key, self.connect(KubeSettings.from_json(cluster.settings)))
            self._apis[cluster.name] = cached
        return cached[1]

    def reconcile_once(self) -> None:
        self._shipping = set()
        try:
            self._pass()
        finally:
            self.logs.retain(self._shipping)

    def close(self) -> None:
        self.logs.close()
        for _key, api in self._apis.values():
            api.close()

    def _pass(self) -> None:
        with self.store.session() as s:
            clusters = list(s.scalars(select(Cluster.name).where(Cluster.platform == "kubernetes")))
        for name in clusters:
            with self.store.session() as s:
                cluster = s.scalar(select(Cluster).where(Cluster.name == name))
                if cluster is None:
                    continue
                try:
                    api = self.api_for(cluster)
                    self._sync_nodes(s, cluster, api)
                except KubeError as e:
                    self._unreachable(cluster, str(e))
                    continue
                cluster.status, cluster.message = "Ready", ""
            with self.store.session() as s:
                services = [
                    svc.name for svc in s.scalars(select(Service)) if svc.spec["spec"].get("cluster") == name
                ]
            for service in services:
                with self.store.session() as s:
                    svc = s.scalar(select(Service).where(Service.name == service))
                    cluster = s.scalar(select(Cluster).where(Cluster.name == name))
                    if svc is None or cluster is None:
                        continue
                    try:
                        self.reconcile_service(s, svc, cluster, api)
                    except ValueError as e:  # not renderable (a create checks this; a model may change)
                        self._refused(s, svc, str(e))
                    except KubeError as e:
                        self._shipping |= {
                            i.id for i in s.scalars(select(Instance).where(Instance.service_id == svc.id))
                        }
                        log.warning("service %s on cluster %s: %s", service, name, e)
                        if svc.message != str(e):
                            svc.message = str(e)

    def _refused(self, s: Session, svc: Service, why: str) -> None:
        if (svc.status, svc.message) != ("Abnormal", why):
            log.warning("service %s cannot be rendered: %s", svc.name, why)
            events.record(s, service=svc.name, reason="NotRendered", message=why)
            svc.status, svc.message = "Abnormal", why

    def _unreachable(self, cluster: Cluster, why: str) -> None:
        if cluster.status != "Unreachable":
            log.warning("cluster %s unreachable: %s", cluster.name, why)
        cluster.status, cluster.message = "Unreachable", why
        self._apis.pop(cluster.name, None)  # reconnect next pass (credentials may have been fixed)

    # --- nodes ------------------------------------------------------------------------------------

    def _sync_nodes(self, s: Session, cluster: Cluster, api: KubeApi) -> None:
        """The cluster's nodes, each in the most specific group whose nodeSelector it matches."""
        groups = sorted(cluster.groups, key=lambda g: g.id)
        seen = set()
        for view in api.nodes():
            seen.add(view.name)
            node = s.scalar(select(Node).where(Node.name == view.name))
            if node is None:
                node = Node(name=view.name, address=view.address or view.name, cpus=0, memory_bytes=0)
                s.add(node)
            elif node.group is not None and node.group.cluster_id != cluster.id:
                continue  # the same name in another cluster: leave that one alone
            node.address = view.address or view.name
            node.cpus, node.memory_bytes = view.cpu_millis / 1000, view.memory_bytes
            gpu_memory = (view.gpu_memory_mib or 0) * 2**20
            node.gpus = [
                {
                    "index": i,
                    "name": view.gpu_product or "nvidia.com/gpu",
                    "memory_bytes": gpu_memory,
                    "uuid": "",
                }
                for i in range(view.gpus)
            ]
            node.labels = dict(view.labels)
            node.status = "Ready" if view.ready and not view.unschedulable else "NotReady"
            node.last_seen = _now()
            node.group = _group_of(groups, view.labels)
        for group in groups:
            for node in list(group.nodes):
                if node.name not in seen:
                    node.status, node.group = "NotReady", None  # gone from the cluster

    # --- services ---------------------------------------------------------------------------------

    def reconcile_service(self, s: Session, svc: Service, cluster: Cluster, api: KubeApi) -> None:
        if svc.deleting:
            self._delete(s, svc, api)
            return
        inp = render_input(s, svc.spec, svc.revision, cluster, svc.id)
        rendered = render(inp)
        objects = rendered.objects
        digest = _digest(objects)
        last = self._applied.get(svc.name)
        if last is None or last[0] != digest or time.monotonic() - last[1] > REAPPLY_S:
            for obj in objects:
                api.apply(obj)
            pruned = api.prune(svc.name, {_ref(o) for o in objects})
            self._applied[svc.name] = (digest, time.monotonic())
            if last is None or last[0] != digest:
                kinds = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
                events.record(
                    s,
                    service=svc.name,
                    reason="Applied",
                    message=f"revision {svc.revision} applied to cluster {cluster.name}: {kinds}"
                    + (f"; removed {', '.join(f'{r.kind}/{r.name}' for r in pruned)}" if pruned else ""),
                    details={"revision": svc.revision, "warnings": list(rendered.warnings)},
                )
        self._mirror(s, svc, api)

    def _delete(self, s: Session, svc: Service, api: KubeApi) -> None:
        # Foreground deletion: an owner stays listed until its pods are gone, so the row goes on the
        # first pass that finds nothing left.
        pending = api.owned(svc.name)
        if pending:
            api.delete_service(svc.name, DELETE_GRACE_S)
        pods = api.pods(svc.name)
        self._mirror(s, svc, api, pods=pods)
        if not pods and not pending:
            self._applied.pop(svc.name, None)
            events.record(s, service=svc.name, reason="Deleted", message="every pod stopped: service removed")
            s.delete(svc)

    def _mirror(self, s: Session, svc: Service, api: KubeApi, pods: list[Any] | None = None) -> None:
        """Pods and EndpointSlices -> instance rows and the service's status."""
        pods = api.pods(svc.name) if pods is None else pods
        serving = {e.pod: e for e in api.endpoints(svc.name) if e.pod}
        rows = {i.id: i for i in s.scalars(select(Instance).where(Instance.service_id == svc.id))}
        now = _now()
        body = svc.spec["spec"]
        target_port = int(body.get("access", {}).get("targetPort", 60000))
        nodes = {n.name: n.id for n in s.scalars(select(Node))}
        live = set()
        for pod in pods:
            iid = _instance_id(pod.uid)
            live.add(iid)
            endpoint = serving.get(pod.name)
            state, message = instance_state(pod, endpoint.ready if endpoint is not None else None)
            inst = rows.get(iid)
            if inst is None:
                inst = Instance(
                    id=iid, service_id=svc.id, revision=pod.revision or svc.revision, pod=pod.name
                )
                inst.created_at = pod.started_at or now
                s.add(inst)
                rows[iid] = inst
            before = inst.state
            inst.role = pod.role or "both"
            inst.node_id = nodes.get(pod.node) if pod.node else None
            inst.address = endpoint.address if endpoint is not None else (pod.ip or "")
            inst.port = endpoint.port if endpoint is not None and endpoint.port else target_port
            inst.restarts = pod.restarts
            if not inst.log_path:
                inst.log_path = str(service_log_dir(self.home, svc.name) / f"{iid}.log")
            if pod.phase != "Pending":  # no container to read yet
                self._shipping.add(iid)
                self.logs.ensure(
                    iid,
                    pod.name,
                    Path(inst.log_path),
                    lambda p, since: api.follow_logs(p, since_seconds=since),
                )
            inst.started_at = pod.started_at
            inst.last_error = message if state == rollout.FAILED else ""
            inst.failures = pod.restarts if state == rollout.FAILED else 0
            inst.state = state
            if state == rollout.RUNNING and before != rollout.RUNNING:
                inst.ready_at = now
            if state == rollout.DRAINING and before != rollout.DRAINING:
                self.unroute(iid)  # before the gateway's next read of the store
                inst.drain_since = now
            if before != state:
                events.record(
                    s,
                    service=svc.name,
                    instance=iid,
                    kind="instance",
                    reason=f"Instance{state}",
                    message=f"pod {pod.name}: {before} → {state}" + (f": {message}" if message else ""),
                    details={"pod": pod.name, "node": pod.node, "revision": inst.revision},
                )
        for iid, inst in rows.items():
            if iid not in live:
                events.record(
                    s,
                    service=svc.name,
                    instance=iid,
                    kind="instance",
                    reason="InstanceStopped",
                    message=f"pod {inst.pod} is gone",
                )
                s.delete(inst)
        self._status(s, svc, [r for i, r in rows.items() if i in live])

    def _status(self, s: Session, svc: Service, instances: list[Instance]) -> None:
        body = svc.spec["spec"]
        desired = rollout.desired_of(svc.revision, body, deleting=svc.deleting)
        if body.get("autoscaling"):
            # HPA or KEDA own the count: what they made is what is wanted.
            current = [i for i in instances if i.revision == svc.revision and i.state != rollout.DRAINING]
            desired = rollout.Desired(
                svc.revision,
                len(current),
                deleting=svc.deleting,
                keep_revision=desired.keep_revision,
                keep_replicas=desired.keep_replicas,
            )
        observed = [
            rollout.Observed(i.id, i.revision, i.state, i.failures)
            for i in instances
            if i.role in ("both", "decode")  # the pods a replica is counted by
        ]
        failing = [i.last_error for i in instances if i.state == rollout.FAILED and i.last_error]
        message = failing[0] if failing else ""
        # Kubernetes retries a failing pod itself (with backoff); what it can't fix by retrying
        # (CrashLoopBackOff, an image it can't pull, OOM) is a problem to show at once.
        status = "Abnormal" if failing and not svc.deleting else rollout.service_status(desired, observed)
        if (svc.status, svc.message) != (status, message):
            if svc.status != status:
                events.record(
                    s,
                    service=svc.name,
                    reason="StatusChanged",
                    message=f"{svc.status} → {status}" + (f": {message}" if message else ""),
                    details={"from": svc.status, "to": status, "revision": svc.revision},
                )
            svc.status, svc.message = status, message


def _group_of(groups: list[ResourceGroup], labels: Mapping[str, str]) -> ResourceGroup | None:
    """The matching group with the most selector terms (the earliest made on a tie): a node labelled
    for an `h200` group lands there, not in `default`, which selects every node."""
    best: tuple[int, int] | None = None
    found = None
    for group in groups:
        selector = (group.settings or {}).get("nodeSelector") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            rank = (-len(selector), group.id)
            if best is None or rank < best:
                best, found = rank, group
    return found


def manifests_yaml(
    s: Session, document: dict[str, Any], revision: int, cluster: Cluster, service_id: int | None = None
) -> str:
    """Exactly what the driver applies for this document on `cluster` (a local cluster: what it would
    apply on a kubernetes cluster with default settings), the renderer's warnings as comments on top."""
    on_kubernetes = cluster.platform == "kubernetes"
    rendered = render(render_input(s, document, revision, cluster if on_kubernetes else None, service_id))
    head = []
    if not on_kubernetes:
        head.append(
            f"# cluster {cluster.name} is {cluster.platform}: these are the objects this service would be "
            "on a kubernetes cluster with default settings (namespace tideserve, in-cluster)"
        )
    head += [f"# warning: {w}" for w in rendered.warnings]
    return "".join(line + "\n" for line in head) + to_yaml(rendered.objects)
