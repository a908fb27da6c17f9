"""Inference services: create / list / get / update (rolling) / restart / delete, instances, logs,
events, the YAML view, and a dry run that returns the fit estimate without deploying."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import AwareDatetime
from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.api.deps import Admin, Context, Ctx
from tideserve.errors import ApiError, invalid, not_found
from tideserve.observability.logs import (
    FOLLOW_POLL_S,
    GATEWAY,
    RESCAN_S,
    Follower,
    LineFilter,
    LogLine,
    Source,
    gateway_sources,
    parse_since,
    search,
    service_log_dir,
)
from tideserve.platforms.kubernetes.reconcile import manifests_yaml
from tideserve.services import events, manager
from tideserve.services.rollout import desired_of
from tideserve.services.spec import parse_service_document, to_yaml
from tideserve.store.models import Cluster, Instance, Node, Service

router = APIRouter(prefix="/api/v1/services", dependencies=[Admin], tags=["services"])

DOCUMENT_EXAMPLE = {
    "metadata": {"name": "chat"},
    "spec": {"model": "smollm2-135m-instruct", "cluster": "local", "resourceGroup": "default"},
}


async def document_body(request: Request) -> Any:
    """The service document as JSON or YAML (by Content-Type), parsed by the spec module."""
    raw = await request.body()
    if not raw.strip():
        raise invalid("the request body is empty: send a service document (JSON or YAML)")
    ctype = request.headers.get("content-type", "")
    if "yaml" in ctype:
        return raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise invalid(
            f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}",
            [{"loc": "body", "msg": f"line {e.lineno} column {e.colno}: {e.msg}"}],
        ) from e


def instance_view(s: Session, inst: Instance) -> dict[str, Any]:
    node = s.get(Node, inst.node_id)
    return {
        "id": inst.id,
        "revision": inst.revision,
        "role": inst.role,
        "state": inst.state,
        "node": node.name if node else None,
        "address": f"{inst.address}:{inst.port}" if inst.port else "",
        "gpus": inst.gpu_indices,
        "pid": inst.pid,
        **({"pod": inst.pod} if inst.pod else {}),
        "restarts": inst.restarts,
        "startedAt": inst.started_at.isoformat() if inst.started_at else None,
        "readyAt": inst.ready_at.isoformat() if inst.ready_at else None,
        "lastError": inst.last_error,
    }


def service_view(s: Session, svc: Service, detail: bool = False) -> dict[str, Any]:
    spec = svc.spec["spec"]
    instances = list(
        s.scalars(select(Instance).where(Instance.service_id == svc.id).order_by(Instance.created_at))
    )
    ready = sum(i.state == "Running" and i.revision == svc.revision for i in instances)
    res = spec["resources"]
    view: dict[str, Any] = {
        "name": svc.name,
        "description": svc.spec["metadata"].get("description", ""),
        "model": spec["model"],
        "status": svc.status,
        "message": svc.message,
        "engine": spec["engine"],
        "resources": res,
        "replicas": {
            "ready": ready,
            "desired": desired_of(svc.revision, spec, autoscaled=svc.autoscaled_replicas).replicas,
            **({"min": a["minReplicas"], "max": a["maxReplicas"]} if (a := spec.get("autoscaling")) else {}),
        },
        "access": {**spec["access"], "endpoint": "/v1/chat/completions", "modelField": svc.name},
        "revision": svc.revision,
        "createdAt": svc.created_at.isoformat(),
        "updatedAt": svc.updated_at.isoformat(),
    }
    if detail:
        view["spec"] = svc.spec
        view["instances"] = [instance_view(s, i) for i in instances]
    return view


@router.get("")
def list_services(ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        return [service_view(s, svc) for svc in s.scalars(select(Service).order_by(Service.id))]


@router.post(
    "",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"example": DOCUMENT_EXAMPLE}, "application/yaml": {}}
        }
    },
)
async def create_service(ctx: Ctx, request: Request) -> dict[str, Any]:
    body = await document_body(request)
    with ctx.store.session() as s:
        svc = manager.create(s, body)
        s.flush()
        view = service_view(s, svc, detail=True)
    ctx.controller.wake()
    return view


@router.post("/dry-run")
async def dry_run(ctx: Ctx, request: Request) -> dict[str, Any]:
    """Validate a document and estimate its memory against the group's nodes; deploys nothing."""
    body = await document_body(request)
    with ctx.store.session() as s:
        p = manager.prepare(s, body)
        s.rollback()
        return {"spec": p.document, "fit": p.fit.as_dict()}


@router.put("/{name}")
async def apply_service(ctx: Ctx, name: str, request: Request) -> dict[str, Any]:
    """Create or update (idempotent): what `tideserve apply -f` sends."""
    body = await document_body(request)
    with ctx.store.session() as s:
        svc, result = manager.apply(s, body, name=name)
        s.flush()
        view = {**service_view(s, svc, detail=True), "result": result}
    ctx.controller.wake()
    return view


@router.get("/{name}")
def get_service(ctx: Ctx, name: str) -> dict[str, Any]:
    with ctx.store.session() as s:
        return service_view(s, manager.get(s, name), detail=True)


@router.get("/{name}/yaml", response_class=PlainTextResponse)
def service_yaml(ctx: Ctx, name: str) -> str:
    with ctx.store.session() as s:
        return to_yaml(parse_service_document(manager.get(s, name).spec))


@router.get("/{name}/manifests", response_class=PlainTextResponse)
def service_manifests(ctx: Ctx, name: str, cluster: str | None = None) -> str:
    """The Kubernetes objects of the service: on its cluster, or on `cluster` to preview a move."""
    with ctx.store.session() as s:
        svc = manager.get(s, name)
        target = _cluster(s, cluster or svc.spec["spec"]["cluster"])
        return _manifests(s, svc.spec, svc.revision, target, svc.id)


@router.post("/manifests", response_class=PlainTextResponse)
async def preview_manifests(ctx: Ctx, request: Request, cluster: str | None = None) -> str:
    """The Kubernetes objects a document would become, checked as a create would check it; deploys
    nothing (what `tideserve services manifests -f` prints, for GitOps or a review)."""
    body = await document_body(request)
    with ctx.store.session() as s:
        p = manager.prepare(s, body)
        target = _cluster(s, cluster or p.document["spec"]["cluster"])
        text = _manifests(s, p.document, 1, target, None)
        s.rollback()
        return text


def _cluster(s: Session, name: str) -> Cluster:
    c = s.scalar(select(Cluster).where(Cluster.name == name))
    if c is None:
        raise not_found("cluster", name)
    return c


def _manifests(s: Session, document: dict[str, Any], revision: int, cluster: Cluster, sid: int | None) -> str:
    try:
        return manifests_yaml(s, document, revision, cluster, sid)
    except ValueError as e:  # a model the pods cannot get, a name too long for its suffixes
        raise invalid(str(e)) from e


@router.post("/{name}/restart")
def restart_service(ctx: Ctx, name: str) -> dict[str, Any]:
    with ctx.store.session() as s:
        svc = manager.restart(s, name)
        s.flush()
        view = service_view(s, svc)
    ctx.controller.wake()
    return view


@router.delete("/{name}", status_code=202)
def delete_service(ctx: Ctx, name: str, request: Request) -> dict[str, Any]:
    """Graceful: routing stops at once, in-flight requests finish, then instances stop."""
    with ctx.store.session() as s:
        svc = manager.delete(s, name)
        view = service_view(s, svc)
    request.app.state.gateway.table.forget(name)
    ctx.controller.wake()
    return view


@router.get("/{name}/instances")
def list_instances(ctx: Ctx, name: str) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        svc = manager.get(s, name)
        rows = s.scalars(select(Instance).where(Instance.service_id == svc.id).order_by(Instance.created_at))
        return [instance_view(s, i) for i in rows]


def _log_sources(ctx: Context, name: str, instance: str | None, flt: LineFilter) -> list[Source]:
    """What a logs query reads: the service's instances (when searching, also those since replaced,
    whose files stay), and for a request or session id the gateway's lines of the service too.
    `instance` names one of them, or `gateway` for the gateway's."""
    with ctx.store.session() as s:
        svc = manager.get(s, name)
        rows = s.scalars(select(Instance).where(Instance.service_id == svc.id).order_by(Instance.created_at))
        current = {i.id: Source(i.id, Path(i.log_path)) for i in rows if i.log_path}
    gateway = gateway_sources(ctx.home, name)
    if instance == GATEWAY:
        return gateway
    everything = dict(current)
    if flt.searching or instance is not None:
        for path in sorted(service_log_dir(ctx.home, name).glob("*.log")):
            everything.setdefault(path.stem, Source(path.stem, path))
    if instance is not None:
        if instance not in everything:
            raise not_found(
                "instance",
                instance,
                f"list them with GET /api/v1/services/{name}/instances, or ask for {GATEWAY!r}",
            )
        return [everything[instance]]
    picked = list((everything if flt.searching else current).values())
    if flt.request_id is not None or flt.session_id is not None:
        picked += gateway
    return picked


Renderer = Callable[[LogLine], str]


async def _follow(
    ctx: Context, name: str, instance: str | None, follower: Follower, first: str, render: Renderer
) -> AsyncIterator[str]:
    """Until the client disconnects (which cancels this) or the service is deleted."""
    try:
        if first:
            yield first
        rescan = time.monotonic() + RESCAN_S
        while True:
            await asyncio.sleep(FOLLOW_POLL_S)
            found = await asyncio.to_thread(follower.poll)
            if time.monotonic() >= rescan:  # a new instance (a restart, a scale-up) joins the stream
                rescan = time.monotonic() + RESCAN_S
                try:
                    sources = await asyncio.to_thread(_log_sources, ctx, name, instance, follower.flt)
                except ApiError:
                    return
                found += await asyncio.to_thread(follower.track, sources)
            if found:
                yield "".join(map(render, found))
    finally:
        follower.close()


def _renderer(fmt: str, tagged: bool) -> Renderer:
    if fmt == "json":
        return lambda line: json.dumps(line.as_dict()) + "\n"
    if tagged:
        return lambda line: f"{line.source} | {line.text}\n"
    return lambda line: line.text + "\n"


@router.get("/{name}/logs", response_class=PlainTextResponse)
def service_logs(
    ctx: Ctx,
    name: str,
    instance: Annotated[
        str | None, Query(description="one instance id, or `gateway` for the gateway's lines of the service")
    ] = None,
    grep: Annotated[
        str | None, Query(min_length=1, max_length=1000, description="case-insensitive substring")
    ] = None,
    request_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    session_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    since: Annotated[
        str | None, Query(description="a time ago (15m, 2h, 1d) or an ISO 8601 time with a zone")
    ] = None,
    lines: Annotated[int, Query(ge=1, le=10000, description="at most this many, the newest")] = 200,
    follow: Annotated[bool, Query(description="then stream new lines until the client disconnects")] = False,
    fmt: Annotated[Literal["text", "json"], Query(alias="format")] = "text",
) -> Response:
    """The service's logs: what its instances print (stdout and stderr), newest last, across rotated
    files. Without `instance`, lines of all instances interleave by time, each as `SOURCE | line`.

    - `grep`: lines containing this text, case-insensitively.
    - `request_id`, `session_id`: everything about one request or one conversation, from the instances
      (the engine's request line and any line naming the id) and from the gateway's access log, each
      line tagged with its source (an instance id, or `gateway`). JSON lines match by that field.
    - `since`: lines from then on (a line without a time of its own has the time of the one before).
    - `follow=true`: the last `lines`, then new ones as they are written (through rotations), until
      the client disconnects.
    - `format=json`: `{"sources": [...], "items": [{"source", "time", "line"}]}`; with `follow`,
      one such item per line (NDJSON)."""
    try:
        since_at = parse_since(since, datetime.now(UTC)) if since is not None else None
    except ValueError as e:
        raise invalid(f"since: {e}", [{"loc": "since", "msg": str(e)}]) from e
    flt = LineFilter(grep, request_id, session_id, since_at)
    sources = _log_sources(ctx, name, instance, flt)
    render = _renderer(fmt, tagged=instance is None)
    if not follow:
        found = search(sources, flt, lines)
        if fmt == "json":
            return JSONResponse({"sources": [s.name for s in sources], "items": [x.as_dict() for x in found]})
        return PlainTextResponse("".join(map(render, found)))
    follower = Follower(sources, flt)
    first = "".join(map(render, follower.backlog(lines)))
    return StreamingResponse(
        _follow(ctx, name, instance, follower, first, render),
        media_type="application/x-ndjson" if fmt == "json" else "text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy holds lines back
    )


@router.get("/{name}/events")
def service_events(
    ctx: Ctx,
    name: str,
    since: Annotated[
        AwareDatetime | None, Query(description="ISO 8601 time with a zone, e.g. 2030-01-31T12:00:00Z")
    ] = None,
    limit: int = Query(100, ge=1, le=events.KEEP),
) -> dict[str, Any]:
    """What happened to the service and why, newest first. A deleted service's trail stays readable
    (it says how the service went); a name with neither a service nor events is not found."""
    with ctx.store.session() as s:
        rows = events.list_events(s, name, since, limit)
        if not rows and not events.known(s, name):
            raise not_found("service", name, "list services with `tideserve services list`")
        return {
            "items": [
                {
                    "at": e.at.isoformat(),
                    "kind": e.kind,
                    "reason": e.reason,
                    "message": e.message,
                    "instance": e.instance,
                    "details": e.details,
                }
                for e in rows
            ]
        }
