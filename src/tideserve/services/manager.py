"""Service operations behind the API and `tideserve apply`: validate everything first, then write in
one transaction, so a rejected request leaves nothing behind. The reconciler does the rest."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.backends import adapter_for
from tideserve.catalog.plaza import get_card
from tideserve.errors import ApiError, conflict, invalid, not_found
from tideserve.platforms.kubernetes.manifests import render
from tideserve.platforms.kubernetes.reconcile import ModelNotOnKubernetes, render_input
from tideserve.services import events
from tideserve.services import spec as specs
from tideserve.services.fit import FitReport, fit_report
from tideserve.store.models import Cluster, CustomModel, ResourceGroup, Revision, Service


@dataclass
class Prepared:
    spec: specs.ServiceSpec
    document: dict[str, Any]
    fit: FitReport


def _spec_error(e: specs.SpecError) -> ApiError:
    first = e.errors[0] if e.errors else {"loc": "", "msg": str(e)}
    return invalid(f"{first['loc']}: {first['msg']}" if first["loc"] else first["msg"], e.errors)


def _model_max_context(s: Session, model: str) -> int | None:
    custom = s.scalar(select(CustomModel).where(CustomModel.name == model))
    if custom is not None:
        return custom.meta.get("max_context")
    card = get_card(model)
    if card is None:
        raise invalid(
            f"spec.model: model {model!r} is neither in the model plaza nor a registered custom model: "
            "list models with `tideserve models list` or register one with `tideserve models add`",
            [{"loc": "spec.model", "msg": f"unknown model {model!r}"}],
        )
    return card.architecture.max_context


def _check_engine_installed(s: Session, cluster: str, engine: str, wanted: str) -> None:
    """The local platform launches engines on this machine, so the engine (and the release the spec
    names, if it names one) must be installed here; a kubernetes cluster runs the adapter's image
    instead and needs nothing of this machine. An unknown cluster is left to the resource-group
    check, which names it."""
    platform = s.scalar(select(Cluster.platform).where(Cluster.name == cluster))
    adapter = adapter_for(engine)
    installed = adapter.installed()
    if platform != "local" or (installed is not None and wanted in ("", installed)):
        return
    command = " ".join(adapter.program("container"))
    version = wanted or adapter.targets.rsplit(" ", 1)[-1]
    if installed is None:
        raise invalid(
            f"spec.engine.name: engine {engine!r} is not installed on node {socket.gethostname()} "
            f"(the local platform launches `{command}` there): `pip install {engine}=={version}` on it, "
            "or deploy to a kubernetes cluster",
            [{"loc": "spec.engine.name", "msg": f"{engine} is not installed on this node"}],
        )
    raise invalid(
        f"spec.engine.version: {engine} {installed} is installed on node {socket.gethostname()}, not "
        f"{wanted}: install {wanted} there, or leave version empty to run {installed}",
        [{"loc": "spec.engine.version", "msg": f"{engine} {installed} is installed, not {wanted}"}],
    )


def prepare(s: Session, body: Any, name: str | None = None) -> Prepared:
    """Parse and check a service document against the store and the hardware; writes nothing."""
    try:
        spec = specs.parse_service_document(body)
    except specs.SpecError as e:
        raise _spec_error(e) from e
    doc = specs.to_document(spec)
    if name is not None and doc["metadata"]["name"] != name:
        raise invalid(
            f"metadata.name is {doc['metadata']['name']!r} but the URL names {name!r}: make them match",
            [{"loc": "metadata.name", "msg": "does not match the URL"}],
        )
    body_spec = doc["spec"]
    try:
        spec = specs.apply_defaults(spec, _model_max_context(s, body_spec["model"]))
    except specs.SpecError as e:
        raise _spec_error(e) from e
    doc = specs.to_document(spec)
    body_spec = doc["spec"]
    engine = body_spec["engine"]["name"]
    _check_engine_installed(s, body_spec["cluster"], engine, body_spec["engine"]["version"])
    params = body_spec["parameters"]
    if engine == "builtin" and (params["tpSize"] > 1 or params["ppSize"] > 1 or params["dpSize"] > 1):
        raise invalid(
            "spec.parameters.tpSize: the built-in engine runs one GPU per instance: "
            "set tpSize=1, ppSize=1 and dpSize=1 (scale with replicas), or use engine vllm or sglang",
            [{"loc": "spec.parameters.tpSize", "msg": "builtin supports tpSize=1, ppSize=1, dpSize=1"}],
        )
    if body_spec["deployment"]["mode"] != "single" and engine == "builtin":
        raise invalid(
            "spec.deployment.mode: the built-in engine serves single-machine instances: "
            "use mode single, or engine vllm/sglang for multiNode and pdDisaggregated",
            [{"loc": "spec.deployment.mode", "msg": "builtin supports mode single"}],
        )
    group = s.scalar(
        select(ResourceGroup)
        .join(Cluster, ResourceGroup.cluster_id == Cluster.id)
        .where(Cluster.name == body_spec["cluster"], ResourceGroup.name == body_spec["resourceGroup"])
    )
    if group is None:
        where = f"{body_spec['cluster']}/{body_spec['resourceGroup']}"
        raise invalid(
            f"spec.resourceGroup: resource group {where} does not exist: create it or pick another",
            [{"loc": "spec.resourceGroup", "msg": f"{where} not found"}],
        )
    nodes = group.nodes
    errors = specs.validate_against_hardware(
        spec, [len(n.gpus) for n in nodes], [n.cpus for n in nodes], [n.memory_bytes for n in nodes]
    )
    if errors:
        raise invalid(f"{errors[0]['loc']}: {errors[0]['msg']}", errors)
    if group.cluster.platform == "kubernetes":
        _check_renders(s, doc, group.cluster)
    report = fit_report(s, doc, nodes)
    return Prepared(spec, doc, report)


def _check_renders(s: Session, doc: dict[str, Any], cluster: Cluster) -> None:
    """What the Kubernetes platform could not apply is refused now, not found by the reconciler later."""

    try:
        render(render_input(s, doc, 1, cluster))
    except ModelNotOnKubernetes as e:
        raise invalid(f"spec.model: {e}", [{"loc": "spec.model", "msg": str(e)}]) from e
    except ValueError as e:  # a name too long for the objects' suffixes, say
        raise invalid(f"cluster {cluster.name}: {e}", [{"loc": "spec", "msg": str(e)}]) from e


def _check_fit(p: Prepared) -> None:
    if not p.fit.fits:
        raise invalid(p.fit.message, [{"loc": "spec.resources", "msg": p.fit.message}])


STABLE_REVISION = "spec.routing.canary.stableRevision"


def canary_problem(name: str, stable: int, existing: set[int], current: int, rolls: bool) -> str | None:
    """Why a canary's stableRevision cannot be kept beside `current`, the revision this apply leaves
    serving (`rolls`: the apply creates it), given the service's `existing` revision numbers (none:
    the apply creates the service)."""
    if not existing:
        return (
            f"service {name!r} has no revision {stable} yet: create the service first, "
            "then apply the new spec with a canary"
        )
    if stable == current:
        if rolls:
            return (
                f"revision {stable} is the one this apply creates, so it cannot also be the stable "
                f"revision: set stableRevision to an earlier revision ({_choices(existing)})"
            )
        return (
            f"revision {stable} is already the current revision of service {name!r} and this apply "
            "changes nothing that rolls a new one, so there is nothing to compare it with: change the "
            "spec itself (not only routing) to roll a new revision, set stableRevision to an earlier "
            f"revision ({_choices(existing - {current})}), or remove the canary block"
        )
    if stable not in existing:
        return (
            f"service {name!r} has no revision {stable}: set stableRevision to one of its earlier revisions "
            f"({_choices(existing - {current})})"
        )
    return None


def _choices(revisions: set[int]) -> str:
    if not revisions:
        return "it has no other revision yet"
    return "it has revision" + ("s " if len(revisions) > 1 else " ") + ", ".join(map(str, sorted(revisions)))


def _check_canary(p: Prepared, name: str, existing: set[int], current: int, rolls: bool) -> None:
    canary = p.document["spec"].get("routing", {}).get("canary")
    if canary is None:
        return
    msg = canary_problem(name, int(canary["stableRevision"]), existing, current, rolls)
    if msg is not None:
        raise invalid(f"{STABLE_REVISION}: {msg}", [{"loc": STABLE_REVISION, "msg": msg}])


def _get(s: Session, name: str) -> Service:
    svc = s.scalar(select(Service).where(Service.name == name))
    if svc is None:
        raise not_found("service", name, "list services with `tideserve services list`")
    return svc


def create(s: Session, body: Any) -> Service:
    p = prepare(s, body)
    name = p.document["metadata"]["name"]
    if s.scalar(select(Service).where(Service.name == name)) is not None:
        raise conflict(f"service {name!r} already exists: pick another name, or update it with PUT / apply")
    _check_canary(p, name, existing=set(), current=1, rolls=True)
    _check_fit(p)
    svc = Service(name=name, spec=p.document, revision=1, status="Pending")
    s.add(svc)
    s.flush()
    s.add(Revision(service_id=svc.id, number=1, hash=specs.revision_hash(p.spec), spec=p.document))
    body = p.document["spec"]
    events.record(
        s,
        service=name,
        reason="Created",
        message=f"created with model {body['model']}, {body['replicas']} replica(s): revision 1",
        details={"revision": 1, "replicas": body["replicas"]},
    )
    return svc


def update(s: Session, name: str, body: Any, *, restart: bool = False) -> tuple[Service, str]:
    """New spec for an existing service: a new revision (rolled out) when instances must change,
    an in-place edit when only replicas/description/access change. Returns (service, what happened)."""
    svc = _get(s, name)
    if svc.deleting:
        raise conflict(f"service {name!r} is being deleted")
    try:
        wanted = specs.parse_service_document(body)
    except specs.SpecError as e:
        raise _spec_error(e) from e
    if errors := specs.immutable_errors(specs.parse_service_document(svc.spec), wanted):
        raise invalid(errors[0]["msg"], [dict(e) for e in errors])
    p = prepare(s, body, name=name)
    current = s.scalar(select(Revision).where(Revision.service_id == svc.id, Revision.number == svc.revision))
    new_hash = specs.revision_hash(p.spec)
    rolls = current is None or current.hash != new_hash or restart
    existing = set(s.scalars(select(Revision.number).where(Revision.service_id == svc.id)))
    _check_canary(p, name, existing, svc.revision + 1 if rolls else svc.revision, rolls)
    # Per instance, so a canary's stable instances (already running or brought back) need no extra check.
    _check_fit(p)
    if not rolls and p.document == svc.spec:
        return svc, "unchanged"
    _record_update(s, svc, p.document, rolls, restart)
    if not rolls:
        svc.spec, svc.updated_at = p.document, datetime.now(UTC)
        return svc, "updated"
    svc.revision += 1
    svc.spec, svc.updated_at = p.document, datetime.now(UTC)
    s.add(Revision(service_id=svc.id, number=svc.revision, hash=new_hash, spec=p.document))
    return svc, "rolled out"


def _record_update(s: Session, svc: Service, doc: dict[str, Any], rolls: bool, restart: bool) -> None:
    """Events for an accepted update of `svc` (still holding the old spec) to `doc`."""
    before, after = svc.spec["spec"]["replicas"], doc["spec"]["replicas"]
    if before != after:
        events.record(
            s,
            service=svc.name,
            reason="Scaled",
            message=f"replicas {before} → {after}",
            details={"from": before, "to": after},
        )
    new = svc.revision + 1 if rolls else svc.revision
    if restart:
        reason, message = "Restarted", f"restart requested: revision {new} replaces every instance"
    elif rolls:
        reason, message = "Updated", f"spec changed: rolling out revision {new}"
    elif _but_replicas(doc) != _but_replicas(svc.spec):
        reason, message = "Updated", f"spec changed in place (revision {new}): no instance restarts"
    else:
        return  # only the replica count changed: Scaled says it all
    events.record(s, service=svc.name, reason=reason, message=message, details={"revision": new})


def _but_replicas(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "spec": {**doc["spec"], "replicas": None}}


def apply(s: Session, body: Any, name: str | None = None) -> tuple[Service, str]:
    """Create or update by the document's name (which must match `name`, the URL's, when given)."""
    try:
        doc_name = specs.to_document(specs.parse_service_document(body))["metadata"]["name"]
    except specs.SpecError as e:
        raise _spec_error(e) from e
    if name is not None and doc_name != name:
        raise invalid(
            f"metadata.name is {doc_name!r} but the URL names {name!r}: make them match",
            [{"loc": "metadata.name", "msg": "does not match the URL"}],
        )
    if s.scalar(select(Service).where(Service.name == doc_name)) is None:
        return create(s, body), "created"
    return update(s, doc_name, body)


def restart(s: Session, name: str) -> Service:
    svc = _get(s, name)
    return update(s, name, svc.spec, restart=True)[0]


def delete(s: Session, name: str) -> Service:
    svc = _get(s, name)
    svc.deleting, svc.status, svc.updated_at = True, "Deleting", datetime.now(UTC)
    events.record(
        s,
        service=name,
        reason="Deleting",
        message="delete requested: routing stops, in-flight requests finish, then instances stop",
    )
    return svc


def get(s: Session, name: str) -> Service:
    return _get(s, name)
