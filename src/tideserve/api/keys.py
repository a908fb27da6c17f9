"""API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from tideserve.api.auth import create_key, revoke
from tideserve.api.deps import Admin, Ctx
from tideserve.errors import conflict, not_found
from tideserve.store.models import ApiKey

router = APIRouter(prefix="/api/v1/keys", dependencies=[Admin], tags=["keys"])


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")
    scope: Literal["admin", "inference"] = "inference"


def key_view(k: ApiKey) -> dict[str, Any]:
    return {
        "name": k.name,
        "scope": k.scope,
        "prefix": k.prefix,
        "createdAt": k.created_at.isoformat(),
        "revoked": k.revoked_at is not None,
    }


@router.get("")
def list_keys(ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        return [key_view(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.id))]


@router.post("", status_code=201)
def new_key(ctx: Ctx, body: KeyIn) -> dict[str, Any]:
    with ctx.store.session() as s:
        if s.scalar(select(ApiKey).where(ApiKey.name == body.name)) is not None:
            raise conflict(f"a key named {body.name!r} exists: pick another name")
        secret = create_key(s, body.name, body.scope)
        s.flush()
        key = s.scalar(select(ApiKey).where(ApiKey.name == body.name))
        assert key is not None
        return {**key_view(key), "key": secret}


@router.delete("/{name}", status_code=204)
def revoke_key(ctx: Ctx, name: str) -> None:
    with ctx.store.session() as s:
        key = s.scalar(select(ApiKey).where(ApiKey.name == name))
        if key is None:
            raise not_found("key", name)
        if key.name == "admin":
            raise conflict(
                "the admin key lives in $TIDESERVE_HOME/admin.key: replace that file and restart to rotate it"
            )
        revoke(key)
