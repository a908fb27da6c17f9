"""API keys: create (the secret is shown once), list, get, update access and limits, revoke."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.api.auth import create_key, expired, revoke
from tideserve.api.deps import Admin, Ctx
from tideserve.durations import duration_seconds
from tideserve.errors import conflict, invalid, not_found
from tideserve.store.models import ApiKey

router = APIRouter(prefix="/api/v1/keys", dependencies=[Admin], tags=["keys"])

# The service name rule of services.spec (a DNS label). A key may name a service that does not exist
# yet, so only the form is checked.
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Far enough for any real key; bounded so `now + duration` cannot overflow a datetime.
MAX_LIFETIME = timedelta(days=3650)
_INT32_MAX = 2**31 - 1  # the limits are INTEGER columns on PostgreSQL


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '3600s' -> a timedelta; ValueError naming the fix otherwise."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError(f"{text!r} is not a duration: write a whole number and s, m, h or d, e.g. '30d'")
    if seconds < 1:
        raise ValueError(f"{text!r} is zero: a key must live at least '1s'")
    if seconds > MAX_LIFETIME.total_seconds():
        raise ValueError(f"{text!r} is longer than '{MAX_LIFETIME.days}d': shorten it, or set no expiry")
    return timedelta(seconds=seconds)


def _error(kind: str, message: str) -> PydanticCustomError:
    # Without a context the message is not treated as a template, so user text with braces is safe.
    return PydanticCustomError(kind, message)


def _service_name(name: str) -> str:
    if len(name) <= 63 and _SERVICE_NAME.fullmatch(name):
        return name
    raise _error(
        "service_name",
        f"{name!r} is not a valid service name: use 1-63 lowercase letters, digits and '-', "
        "starting with a letter",
    )


def _service_list(names: list[str]) -> list[str]:
    if not names:
        raise _error("services_empty", "an empty list allows no service: name services, or null for all")
    return list(dict.fromkeys(names))


def _future(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise _error("naive_datetime", "give a time zone, e.g. '2030-01-31T12:00:00Z'")
    if when <= datetime.now(UTC):
        raise _error(
            "past_expiry",
            f"{when.isoformat()} is not in the future: give a later time, or expiresIn such as '30d'",
        )
    return when.astimezone(UTC)


def _duration(value: Any) -> timedelta:
    if not isinstance(value, str):
        raise _error("duration_type", "give a duration string such as '30d', '12h', '90m' or '3600s'")
    try:
        return parse_duration(value)
    except ValueError as e:
        raise _error("duration", str(e)) from None


ServiceName = Annotated[str, AfterValidator(_service_name)]
Limit = Annotated[int, Field(strict=True, ge=1, le=_INT32_MAX)]


class KeyAccess(BaseModel):
    """What a key may call and how much. PATCH changes only the fields given; null clears one."""

    model_config = ConfigDict(extra="forbid")
    services: Annotated[list[ServiceName], AfterValidator(_service_list)] | None = Field(
        None, description="service names the key may call; null: every service"
    )
    expires_at: Annotated[datetime, AfterValidator(_future)] | None = Field(
        None, alias="expiresAt", description="ISO time with a zone; null: never"
    )
    expires_in: Annotated[timedelta, BeforeValidator(_duration)] | None = Field(
        None, alias="expiresIn", description="lifetime from now: '30d', '12h', '90m', '3600s'"
    )
    priority: Literal["high", "normal", "low"] = "normal"
    requests_per_minute: Limit | None = Field(None, alias="requestsPerMinute")
    tokens_per_minute: Limit | None = Field(None, alias="tokensPerMinute")
    max_concurrent: Limit | None = Field(None, alias="maxConcurrent")


class KeyIn(KeyAccess):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")
    scope: Literal["admin", "inference"] = "inference"


def key_view(k: ApiKey) -> dict[str, Any]:
    return {
        "name": k.name,
        "scope": k.scope,
        "prefix": k.prefix,
        "createdAt": k.created_at.isoformat(),
        "revoked": k.revoked_at is not None,
        "services": k.services,
        "expiresAt": k.expires_at.isoformat() if k.expires_at is not None else None,
        "expired": expired(k.expires_at),
        "priority": k.priority,
        "requestsPerMinute": k.requests_per_minute,
        "tokensPerMinute": k.tokens_per_minute,
        "maxConcurrent": k.max_concurrent,
    }


def _apply(key: ApiKey, body: KeyAccess) -> None:
    """Copy the fields the caller gave onto the key (absent ones stay as they are)."""
    given = body.model_fields_set
    if {"expires_at", "expires_in"} <= given:
        msg = "set one of expiresAt or expiresIn, not both"
        raise invalid(msg, [{"loc": "expiresIn", "msg": msg}])
    if "expires_in" in given:
        key.expires_at = None if body.expires_in is None else datetime.now(UTC) + body.expires_in
    elif "expires_at" in given:
        key.expires_at = body.expires_at
    if key.name == "admin" and key.expires_at is not None:
        raise conflict(
            "the admin key cannot expire: the CLI and console use it; rotate it by replacing "
            "$TIDESERVE_HOME/admin.key and restarting"
        )
    for field in ("services", "priority", "requests_per_minute", "tokens_per_minute", "max_concurrent"):
        if field in given:
            setattr(key, field, getattr(body, field))


def _find(s: Session, name: str) -> ApiKey:
    key = s.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is None:
        raise not_found("key", name, "list keys with GET /api/v1/keys")
    return key


@router.get("")
def list_keys(ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.store.session() as s:
        return [key_view(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.id))]


@router.get("/{name}")
def get_key(ctx: Ctx, name: str) -> dict[str, Any]:
    with ctx.store.session() as s:
        return key_view(_find(s, name))


@router.post("", status_code=201)
def new_key(ctx: Ctx, body: KeyIn) -> dict[str, Any]:
    with ctx.store.session() as s:
        if s.scalar(select(ApiKey).where(ApiKey.name == body.name)) is not None:
            raise conflict(f"a key named {body.name!r} exists: pick another name")
        secret = create_key(s, body.name, body.scope)
        key = _find(s, body.name)
        _apply(key, body)
        s.flush()
        return {**key_view(key), "key": secret}


@router.patch("/{name}")
def update_key(ctx: Ctx, name: str, body: KeyAccess) -> dict[str, Any]:
    with ctx.store.session() as s:
        key = _find(s, name)
        if key.revoked_at is not None:
            raise conflict(f"key {name!r} is revoked and stays so: create a new key instead")
        _apply(key, body)
        s.flush()
        return key_view(key)


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
