"""Monitoring views: a service's, a node's and a cluster's figures now and over a window, and the
overview behind `tideserve top`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from tideserve.api.deps import Admin, Context, Ctx
from tideserve.api.resources import find_cluster, find_node
from tideserve.durations import duration_seconds
from tideserve.errors import ApiError, invalid
from tideserve.observability import views
from tideserve.observability.promql import PrometheusUnavailable
from tideserve.services import manager

router = APIRouter(prefix="/api/v1", dependencies=[Admin], tags=["monitoring"])

MAX_WINDOW_S = 30 * 86400


def window_seconds(text: str) -> float:
    """'15m', '6h', '7d' -> seconds; a 422 naming the parameter otherwise."""
    seconds = duration_seconds(text)
    if seconds is None or not 60 <= seconds <= MAX_WINDOW_S:
        message = f"window: {text!r} is not a duration from 1m to 30d; use e.g. 15m, 6h or 7d"
        raise invalid(message, [{"loc": "window", "msg": message}])
    return float(seconds)


Window = Query("1h", description="how far back the series go: 15m, 6h, 7d (1m to 30d)")


def _span(window: str) -> tuple[float, float]:
    now = time.time()
    return now - window_seconds(window), now


@contextmanager
def _reading() -> Iterator[None]:
    """A Prometheus that is down or refuses a query is a dependency failing, not a bug: a 503 naming it."""
    try:
        yield
    except PrometheusUnavailable as e:
        raise ApiError(503, str(e), "metrics_unavailable") from None


def _view(
    ctx: Context,
    find: Callable[[Session, str], object],
    view: Callable[[views.MetricSource, str, float, float], dict[str, Any]],
    name: str,
    window: str,
) -> dict[str, Any]:
    """`find` answers 404 for an unknown name before any figure is read."""
    start, now = _span(window)
    with ctx.store.session() as s:
        find(s, name)
    with _reading():
        return view(ctx.metrics, name, start, now)


@router.get("/services/{name}/metrics")
def service_metrics(ctx: Ctx, name: str, window: str = Window) -> dict[str, Any]:
    return _view(ctx, manager.get, views.service_view, name, window)


@router.get("/nodes/{name}/metrics")
def node_metrics(ctx: Ctx, name: str, window: str = Window) -> dict[str, Any]:
    return _view(ctx, find_node, views.node_view, name, window)


@router.get("/clusters/{name}/metrics")
def cluster_metrics(ctx: Ctx, name: str, window: str = Window) -> dict[str, Any]:
    return _view(ctx, find_cluster, views.cluster_view, name, window)


@router.get("/monitoring/overview")
def overview(ctx: Ctx) -> dict[str, Any]:
    with _reading():
        return views.overview(ctx.metrics, time.time())
