"""The model plaza (built-in cards) and custom models (registered from a path, s3:// or hf://)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from tideserve.api.deps import Admin, Ctx
from tideserve.catalog.estimator import precision_table
from tideserve.catalog.plaza import Card, filter_cards, get_card, load_cards
from tideserve.errors import conflict, invalid, not_found
from tideserve.store.models import CustomModel, Service

router = APIRouter(prefix="/api/v1/models", dependencies=[Admin], tags=["models"])


def camel(obj: Any) -> Any:
    """snake_case keys (cards, metadata) -> the camelCase the API speaks."""
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k): camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


def human_count(n: int | None) -> str:
    if not n:
        return ""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def card_view(card: Card, detail: bool = False) -> dict[str, Any]:
    data = camel(card.model_dump(mode="json"))
    data["kind"] = "plaza"
    data["maxContext"] = card.architecture.max_context
    data["parametersHuman"] = human_count(card.parameters)
    if detail:
        data["memory"] = precision_table(card)
    else:
        data.pop("usage", None)
    return data


def custom_view(m: CustomModel) -> dict[str, Any]:
    meta = m.meta
    return {
        "name": m.name,
        "kind": "custom",
        "family": meta.get("architecture", ""),
        "source": m.source,
        "path": m.local_path,
        "sha256": m.sha256,
        "parameters": meta.get("parameters"),
        "parametersHuman": human_count(meta.get("parameters")),
        "maxContext": meta.get("max_context"),
        "taskTypes": ["chat"],
        "tags": ["custom"],
        "recommendedEngines": ["builtin"],
        "metadata": camel(meta),
        "createdAt": m.created_at.isoformat(),
    }


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    endpoint_url: str | None = Field(None, alias="endpointUrl")
    region: str | None = None
    access_key_id: str | None = Field(None, alias="accessKeyId")
    secret_access_key: str | None = Field(None, alias="secretAccessKey")


class CustomModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z]([-a-z0-9.]{0,61}[a-z0-9])?$", description="a DNS-label-like name")
    source: str = Field(min_length=1, description="a local path, s3://bucket/prefix or hf://org/name")
    s3: S3Options | None = None


@router.get("")
def list_models(
    ctx: Ctx, task: str | None = None, family: str | None = None, tag: str | None = None, q: str | None = None
) -> list[dict[str, Any]]:
    """Plaza cards (filtered by task type, family, tag or free text), then custom models."""
    out = [card_view(c) for c in filter_cards(load_cards(), task=task, family=family, tag=tag, q=q)]
    with ctx.store.session() as s:
        for m in s.scalars(select(CustomModel).order_by(CustomModel.id)):
            view = custom_view(m)
            wanted = (task in (None, "chat"), tag in (None, "custom"), family in (None, view["family"]))
            if all(wanted) and (q is None or q.lower() in m.name.lower()):
                out.append(view)
    return out


@router.get("/{name}")
def get_model(ctx: Ctx, name: str) -> dict[str, Any]:
    card = get_card(name)
    if card is not None:
        return card_view(card, detail=True)
    with ctx.store.session() as s:
        m = s.scalar(select(CustomModel).where(CustomModel.name == name))
        if m is None:
            raise not_found("model", name, "list models with GET /api/v1/models")
        return custom_view(m)


@router.post("", status_code=201)
async def register_model(ctx: Ctx, body: CustomModelIn) -> dict[str, Any]:
    """Fetch (s3://, hf://) or locate (path) the files, read their metadata, record their sha256."""
    from tideserve.catalog import sources  # boto3 and the GGUF reader load only when needed

    if get_card(body.name) is not None:
        raise conflict(f"{body.name!r} is a model plaza card: give the custom model another name")
    with ctx.store.session() as s:
        if s.scalar(select(CustomModel).where(CustomModel.name == body.name)) is not None:
            raise conflict(f"custom model {body.name!r} already exists: pick another name or delete it first")
    s3 = sources.S3Options(**body.s3.model_dump()) if body.s3 else None
    try:
        path = await run_in_threadpool(sources.materialize, body.source, ctx.home / "models", s3)
        meta = await run_in_threadpool(sources.inspect_model, path)
    except sources.ModelSourceError as e:
        raise invalid(f"source: {e}", [{"loc": "source", "msg": str(e)}]) from e
    meta_dict = dataclasses.asdict(meta)
    with ctx.store.session() as s:
        if s.scalar(select(CustomModel).where(CustomModel.name == body.name)) is not None:
            raise conflict(f"custom model {body.name!r} already exists: pick another name or delete it first")
        m = CustomModel(
            name=body.name, source=body.source, local_path=str(path), sha256=meta.sha256, meta=meta_dict
        )
        s.add(m)
        s.flush()
        return custom_view(m)


@router.delete("/{name}", status_code=204)
def delete_model(ctx: Ctx, name: str) -> None:
    if get_card(name) is not None:
        raise conflict(f"{name!r} is a built-in model plaza card and cannot be deleted")
    with ctx.store.session() as s:
        m = s.scalar(select(CustomModel).where(CustomModel.name == name))
        if m is None:
            raise not_found("model", name)
        users = [svc.name for svc in s.scalars(select(Service)) if svc.spec["spec"]["model"] == name]
        if users:
            raise conflict(f"model {name!r} is used by services {', '.join(users)}: delete them first")
        s.delete(m)
