"""Inference services: create / list / get / update (rolling) / restart / delete, instances, logs,
events, the YAML view, and a dry run that returns the fit estimate without deploying."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime
from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.api.deps import Admin, Ctx
from tideserve.errors import invalid, not_found
from tideserve.platforms.local import log_tail
from tideserve.services import events, manager
from tideserve.services.spec import parse_service_document, to_yaml
from tideserve.store.models import Instance, Node, Service

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
        "replicas": {"ready": ready, "desired": spec["replicas"]},
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


@router.get("/{name}/logs", response_class=PlainTextResponse)
def service_logs(
    ctx: Ctx, name: str, instance: str | None = None, lines: int = Query(200, ge=1, le=10000)
) -> str:
    with ctx.store.session() as s:
        svc = manager.get(s, name)
        rows = list(
            s.scalars(select(Instance).where(Instance.service_id == svc.id).order_by(Instance.created_at))
        )
        if instance is not None:
            rows = [i for i in rows if i.id == instance]
            if not rows:
                raise not_found("instance", instance, f"list them with GET /api/v1/services/{name}/instances")
        parts = [f"==> instance {i.id} ({i.state}) <==\n{log_tail(i.log_path, lines)}" for i in rows]
        return "\n".join(parts) + "\n"


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
