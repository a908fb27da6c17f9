"""What every router needs: the store, the controller, and the caller's key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request

from tideserve.api.auth import authenticate
from tideserve.observability.views import MetricSource
from tideserve.services.controller import Controller
from tideserve.store.db import Store
from tideserve.store.models import ApiKey


@dataclass
class Context:
    store: Store
    home: Path
    controller: Controller
    metrics: MetricSource  # the embedded store, or Prometheus with --prometheus-url


def context(request: Request) -> Context:
    return request.app.state.ctx


def admin_key(
    ctx: Annotated[Context, Depends(context)],
    authorization: Annotated[str | None, Header()] = None,
) -> ApiKey:
    with ctx.store.session() as s:
        return authenticate(s, authorization, need="admin")


Ctx = Annotated[Context, Depends(context)]
Admin = Depends(admin_key)
