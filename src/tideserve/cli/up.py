"""`tideserve up` (the main job, in the foreground) and `tideserve down`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tideserve.home import clear_running, default_home, read_running, write_running


def _prometheus_url(value: str | None) -> str | None:
    from tideserve.observability.promql import check_url

    try:
        return None if value is None else check_url(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def up(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port for the API, the OpenAI endpoint and the console")] = 8080,
    home: Annotated[Path | None, typer.Option(help="state directory (default: $TIDESERVE_HOME)")] = None,
    no_default: Annotated[bool, typer.Option("--no-default", help="do not deploy the bundled model")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="TIDESERVE_REDIS_URL", help="share rate limits with `tideserve gateway` replicas"
        ),
    ] = None,
    metrics_interval: Annotated[
        float, typer.Option(min=1.0, max=300.0, help="seconds between two rounds of the metrics collector")
    ] = 5.0,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            envvar="TIDESERVE_PROMETHEUS_URL",
            callback=_prometheus_url,
            help="read the monitoring views from this Prometheus (which scrapes /metrics) instead of "
            "the embedded store",
        ),
    ] = None,
    kubernetes_cluster: Annotated[
        str | None,
        typer.Option(
            envvar="TIDESERVE_KUBERNETES_CLUSTER",
            help="running in a pod: register (if absent) a cluster of this name on the kubernetes "
            "platform, reached with the pod's service account",
        ),
    ] = None,
    kubernetes_namespace: Annotated[
        str,
        typer.Option(
            envvar="TIDESERVE_KUBERNETES_NAMESPACE", help="with --kubernetes-cluster: where services go"
        ),
    ] = "tideserve",
) -> None:
    """Run the control plane in the foreground; Ctrl-C stops it and every instance it started."""
    import uvicorn

    from tideserve.controlplane import build, print_banner
    from tideserve.gateway.telemetry import configure_access_log
    from tideserve.observability.logs import Rotator, gateway_log_file

    home = (home or default_home()).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (run := read_running(home)) is not None:
        typer.echo(
            f"tideserve is already running on this home (pid {run.pid}, {run.url}): "
            f"`tideserve down --home {home}` stops it",
            err=True,
        )
        raise typer.Exit(1)
    with socket.socket() as probe:  # fail before first-start work, not after the banner
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            typer.echo(f"cannot listen on {host}:{port}: {e.strerror}: free it or pass --port", err=True)
            raise typer.Exit(1) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_access_log(True, gateway_log_file(home))
    for chatty in ("httpx", "alembic"):  # a line per health probe / migration step drowns the log
        logging.getLogger(chatty).setLevel(logging.WARNING)
    app, summary = build(
        home,
        deploy_default=not no_default,
        redis_url=redis_url,
        metrics_interval=metrics_interval,
        prometheus_url=prometheus_url,
        kubernetes=(kubernetes_cluster, kubernetes_namespace) if kubernetes_cluster else None,
    )
    write_running(home, host, port)
    rotator = Rotator(home)  # engines write their logs straight to files and cannot rotate them
    rotator.start()
    try:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        print_banner(summary, host, port)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the
        # handler it found; a no-op one lets us finish cleanly (pid file removed, exit status 0).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        server.run()
    finally:
        rotator.stop()
        clear_running(home)
    if not server.started:
        raise typer.Exit(1)


def down(
    home: Annotated[Path | None, typer.Option(help="state directory (default: $TIDESERVE_HOME)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for a graceful stop")] = 120.0,
) -> None:
    """Stop the platform running on this home (and its instances), as Ctrl-C would."""
    home = (home or default_home()).expanduser().resolve()
    run = read_running(home)
    if run is None:
        typer.echo(f"tideserve is not running on {home}")
        return
    os.kill(run.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_running(home) is None:
            typer.echo(f"stopped tideserve (pid {run.pid})")
            return
        time.sleep(0.2)
    typer.echo(f"tideserve (pid {run.pid}) did not stop within {timeout:.0f} s", err=True)
    sys.exit(1)
