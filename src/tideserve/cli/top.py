"""`tideserve top`: every service's latency, load and resources, then nodes and clusters, now."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tideserve.cli.client import Client
from tideserve.cli.output import Format, emit, gib

Fig = dict[str, Any]


def _ms(key: str) -> Callable[[Fig], str | None]:
    return lambda row: None if row.get(key) is None else f"{row[key] * 1000:.0f}ms"


def _num(key: str, digits: int = 1) -> Callable[[Fig], str | None]:
    return lambda row: None if row.get(key) is None else f"{row[key]:.{digits}f}"


def _pct(key: str) -> Callable[[Fig], str | None]:
    return lambda row: None if row.get(key) is None else f"{row[key] * 100:.0f}%"


def _gib(key: str) -> Callable[[Fig], str | None]:
    return lambda row: None if row.get(key) is None else gib(int(row[key]))


SERVICE_COLUMNS = [
    ("service", lambda row: row["name"]),
    (
        "ready",
        lambda row: (
            None
            if row.get("instances") is None
            else f"{row.get('ready_instances') or 0:.0f}/{row['instances']:.0f}"
        ),
    ),
    ("req/s", _num("requests_per_s", 2)),
    ("ttft p50", _ms("ttft_p50")),
    ("ttft p99", _ms("ttft_p99")),
    ("tpot p50", _ms("tpot_p50")),
    ("e2e p99", _ms("e2e_p99")),
    ("run", _num("running", 0)),
    ("wait", _num("waiting", 0)),
    ("kv", _pct("kv_cache_usage")),
    ("hit", _pct("prefix_cache_hit_rate")),
    ("tok/s", _num("generation_tokens_per_s")),
    ("5xx/s", _num("server_errors_per_s", 2)),
    ("cpu", _num("cpu_cores_per_instance", 2)),
    ("mem", _gib("memory_bytes_per_instance")),
    ("gpu", _pct("gpu_utilization")),
]
NODE_COLUMNS = [
    ("node", lambda row: row["name"]),
    (
        "cpu used",
        lambda row: (
            None
            if row.get("cpu_used_cores") is None
            else f"{row['cpu_used_cores']:.1f}/{row.get('cpu_cores') or 0:.0f}"
        ),
    ),
    (
        "memory used",
        lambda row: (
            None
            if row.get("memory_used_bytes") is None
            else f"{gib(int(row['memory_used_bytes']))}/{gib(int(row.get('memory_bytes') or 0))}"
        ),
    ),
    ("instances", _num("instances", 0)),
]
CLUSTER_COLUMNS = [
    ("cluster", lambda row: row["name"]),
    ("nodes", _num("nodes", 0)),
    ("services", _num("services", 0)),
    ("instances", _num("instances", 0)),
    ("cpu alloc", lambda row: _pct("cpu_allocated")(row["water_levels"])),
    ("cpu used", lambda row: _pct("cpu_used")(row["water_levels"])),
    ("mem alloc", lambda row: _pct("memory_allocated")(row["water_levels"])),
    ("mem used", lambda row: _pct("memory_used")(row["water_levels"])),
    ("gpus alloc", lambda row: _pct("gpus_allocated")(row["water_levels"])),
]


def _rows(figures: dict[str, Fig]) -> list[Fig]:
    return [{"name": name, **fig} for name, fig in sorted(figures.items())]


def top(
    output: Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml")] = Format.table,
    watch: Annotated[float, typer.Option("--watch", "-w", help="refresh every N seconds (0: once)")] = 0.0,
    home: Annotated[
        Path | None, typer.Option("--home", help="state directory (default: $TIDESERVE_HOME)")
    ] = None,
) -> None:
    """Services, nodes and clusters as the collector last saw them (refreshed every 5 s)."""
    client = Client(home)
    while True:
        data = client.get("/api/v1/monitoring/overview")
        if output is not Format.table:
            emit(data, output)
        else:
            if watch:
                typer.echo("\x1b[2J\x1b[H", nl=False)  # clear the screen between refreshes
            emit(_rows(data["services"]), output, SERVICE_COLUMNS)
            typer.echo("")
            emit(_rows(data["nodes"]), output, NODE_COLUMNS)
            typer.echo("")
            emit(_rows(data["clusters"]), output, CLUSTER_COLUMNS)
        if not watch:
            return
        time.sleep(watch)
