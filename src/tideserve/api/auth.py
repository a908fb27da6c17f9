"""API keys: random secrets shown once, stored as sha256. `admin` scope manages the platform;
`inference` scope may only call the OpenAI endpoints. A key may also be limited to some services, expire,
and carry a priority and rate limits; the gateway enforces those from the ApiKey columns."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.errors import ApiError
from tideserve.store.models import ApiKey

SCOPES = ("admin", "inference")
PRIORITIES = ("high", "normal", "low")  # served in this order, at the gateway and in the engine
PREFIX = "ts-"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_allows(services: list[str] | None, service: str) -> bool:
    """Whether a key whose `services` column holds `services` may call `service` (None: every service)."""
    return services is None or service in services


def expired(expires_at: datetime | None, now: datetime | None = None) -> bool:
    return expires_at is not None and expires_at <= (now or datetime.now(UTC))


def create_key(s: Session, name: str, scope: str, secret: str | None = None) -> str:
    secret = secret or new_secret()
    s.add(ApiKey(name=name, prefix=secret[:8], sha256=digest(secret), scope=scope))
    return secret


def ensure_admin_key(s: Session, home: Path) -> str:
    """The first start writes admin.key (0600); later starts reuse it and make sure the store knows it."""
    path = home / "admin.key"
    if path.exists():
        secret = path.read_text().strip()
    else:
        secret = new_secret()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    if s.scalar(select(ApiKey).where(ApiKey.sha256 == digest(secret))) is None:
        old = s.scalar(select(ApiKey).where(ApiKey.name == "admin"))
        if old is not None:  # admin.key was replaced by hand: the new file wins
            s.delete(old)
            s.flush()
        create_key(s, "admin", "admin", secret)
    return secret


def bearer_token(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header; 401 for anything else."""
    if not authorization:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "unauthorized")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "malformed Authorization header: use 'Bearer <key>'", "unauthorized")
    return token.strip()


def authenticate(s: Session, authorization: str | None, need: str) -> ApiKey:
    key = s.scalar(select(ApiKey).where(ApiKey.sha256 == digest(bearer_token(authorization))))
    if key is None or key.revoked_at is not None:
        raise ApiError(401, "invalid or revoked API key", "unauthorized")
    if key.expires_at is not None and expired(key.expires_at):
        raise ApiError(
            401,
            f"API key {key.name!r} expired at {key.expires_at.isoformat()}: create a new key or "
            f"extend it with PATCH /api/v1/keys/{key.name}",
            "key_expired",
        )
    if need == "admin" and key.scope != "admin":
        raise ApiError(403, f"key {key.name!r} has scope {key.scope!r}; this call needs 'admin'", "forbidden")
    return key


def revoke(key: ApiKey) -> None:
    key.revoked_at = datetime.now(UTC)
