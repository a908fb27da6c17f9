"""Assemble the platform for `tideserve up`: store (migrated), first-start bootstrap, reconciler,
gateway, metrics collector and the API app."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from tideserve.api.app import create_app
from tideserve.api.auth import ensure_admin_key
from tideserve.api.deps import Context
from tideserve.autoscaler.loop import Autoscaler
from tideserve.gateway.endpoints import EndpointTable
from tideserve.gateway.keys import KeyCache
from tideserve.gateway.proxy import Gateway
from tideserve.gateway.ratelimit import limiter_for
from tideserve.home import client_url
from tideserve.observability.collector import INTERVAL_S, MAX_SERIES, TSDB_FILE, Collector
from tideserve.observability.export import TsdbExport
from tideserve.observability.promql import PrometheusSource
from tideserve.observability.tsdb import TimeSeriesStore
from tideserve.platforms.kubernetes.reconcile import KubernetesDriver
from tideserve.resources import bootstrap
from tideserve.resources.discovery import discover
from tideserve.services import manager
from tideserve.services.controller import Controller
from tideserve.store.db import Store, database_url, migrate

log = logging.getLogger("tideserve")


@dataclass
class Summary:
    home: Path
    database: str
    first_start: bool
    default_service: str | None


def build(
    home: Path,
    deploy_default: bool = True,
    redis_url: str | None = None,
    metrics_interval: float = INTERVAL_S,
    prometheus_url: str | None = None,
    kubernetes: tuple[str, str] | None = None,
) -> tuple[FastAPI, Summary]:
    """`kubernetes`: (cluster, namespace) of an in-cluster control plane (`--kubernetes-cluster`)."""
    store = Store(database_url(home))
    migrate(store.engine)
    machine = discover()
    with store.session() as s:
        ensure_admin_key(s, home)
        _node, first = bootstrap.register_this_machine(s, machine)
        if kubernetes is not None:
            bootstrap.ensure_kubernetes_cluster(s, *kubernetes)
    default = None
    if first and deploy_default:
        with store.session() as s:
            manager.create(s, bootstrap.default_service_document(machine))
        default = bootstrap.DEFAULT_SERVICE
    elif deploy_default:
        with store.session() as s:
            if bootstrap.has_service(s, bootstrap.DEFAULT_SERVICE):
                default = bootstrap.DEFAULT_SERVICE
    gateway = Gateway(EndpointTable(store), KeyCache(store), limiter_for(redis_url))
    driver = KubernetesDriver(store, home, unroute=gateway.unroute)
    controller = Controller(
        store, home, inflight=gateway.open_requests, unroute=gateway.unroute, kubernetes=driver
    )
    tsdb = TimeSeriesStore.load(home / TSDB_FILE, max_series=MAX_SERIES)
    gateway.metrics.registry.register(TsdbExport(tsdb))
    collector = Collector(
        store, home, tsdb, gateway.metrics.response_counts, metrics_interval, local_node=machine.hostname
    )
    # With a Prometheus the views read from it; the collector still fills the store that /metrics exports.
    metrics = (
        tsdb if prometheus_url is None else PrometheusSource(prometheus_url, min_step_s=metrics_interval)
    )
    autoscaler = Autoscaler(store, tsdb, gateway, controller)
    app = create_app(Context(store, home, controller, metrics), gateway, collector, autoscaler)
    url = (
        store.url if store.url.startswith("sqlite") else store.engine.url.render_as_string(hide_password=True)
    )
    return app, Summary(home, url, first, default)


def print_banner(summary: Summary, host: str, port: int) -> None:
    base = client_url(host, port)
    key = summary.home / "admin.key"
    lines = [
        f"tideserve is up: {base}  (home {summary.home}; store {summary.database})",
        f"  API docs   {base}/api/docs",
        f"  admin key  {key}",
    ]
    if summary.default_service:
        lines += [
            f"  service    {summary.default_service} (starting: `tideserve services list` shows its status)",
            "",
            "Try it:",
            f'  curl -s {base}/v1/chat/completions -H "Authorization: Bearer $(cat {key})" \\',
            "    -H 'content-type: application/json' \\",
            f'    -d \'{{"model": "{summary.default_service}", '
            '"messages": [{"role": "user", "content": "What is the capital of France?"}]}\'',
        ]
    lines.append("Ctrl-C (or `tideserve down`) stops the platform and its instances.")
    print("\n".join(lines), flush=True)
