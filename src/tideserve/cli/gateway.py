"""`tideserve gateway`: the OpenAI gateway as its own process, to run as many replicas as traffic needs.

Routes, instances and keys come from the platform's store (the database `tideserve up` uses); rate
limits are shared through Redis when `--redis-url` is given. `--upstream` instead serves fixed engine
URLs without a store, like a plain router in front of engines started by hand."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from tideserve.gateway.balancing import POLICIES

UPSTREAM_HELP = "MODEL=URL[,URL...]: serve MODEL from these engine URLs (no store); repeatable"


def parse_upstream(value: str) -> tuple[str, list[str]]:
    model, sep, urls = value.partition("=")
    targets = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
    bad = [u for u in targets if not u.startswith(("http://", "https://"))]
    if not sep or not model.strip() or not targets or bad:
        raise typer.BadParameter(
            f"{value!r}: write MODEL=URL[,URL...], e.g. chat=http://127.0.0.1:8001,http://127.0.0.1:8002"
        )
    return model.strip(), targets


def gateway(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port for /v1 and /metrics")] = 8090,
    home: Annotated[Path | None, typer.Option(help="platform home whose store to read")] = None,
    redis_url: Annotated[
        str | None, typer.Option(envvar="TIDESERVE_REDIS_URL", help="share rate limits through this Redis")
    ] = None,
    upstream: Annotated[list[str] | None, typer.Option(help=UPSTREAM_HELP)] = None,
    policy: Annotated[str, typer.Option(help="balancing policy for --upstream models")] = "prefix_aware",
    api_key: Annotated[
        list[str] | None, typer.Option(help="with --upstream: accepted bearer keys (none: open)")
    ] = None,
    request_timeout: Annotated[
        float, typer.Option(help="with --upstream: seconds an engine may stay silent")
    ] = 600.0,
    breaker_failures: Annotated[
        int, typer.Option(min=1, help="consecutive failures that open an instance's circuit breaker")
    ] = 5,
    breaker_cooldown: Annotated[
        float, typer.Option(min=0.1, help="seconds an open breaker waits before a probe")
    ] = 10.0,
    access_log: Annotated[
        bool, typer.Option(help="one JSON line per request on stderr (with a store, also in the home's logs)")
    ] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run an OpenAI gateway replica in the foreground."""
    import uvloop

    from tideserve.gateway.breaker import BreakerConfig
    from tideserve.gateway.endpoints import Endpoint, EndpointTable, RouteConfig, ServiceRoute
    from tideserve.gateway.keys import KeyCache, KeyInfo
    from tideserve.gateway.proxy import Gateway
    from tideserve.gateway.ratelimit import limiter_for
    from tideserve.gateway.server import run
    from tideserve.gateway.telemetry import configure_access_log
    from tideserve.home import default_home
    from tideserve.observability.logs import gateway_log_file
    from tideserve.store.db import Store, database_url

    if policy not in POLICIES:
        raise typer.BadParameter(f"{policy!r}: use one of {', '.join(POLICIES)}", param_hint="--policy")
    if api_key and not upstream:
        raise typer.BadParameter(
            "keys come from the store; --api-key goes with --upstream", param_hint="--api-key"
        )
    logging.basicConfig(level=log_level.upper(), format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if upstream:
        configure_access_log(access_log)
        routes: dict[str, ServiceRoute] = {}
        for value in upstream:
            model, urls = parse_upstream(value)
            endpoints = [Endpoint(f"{model}-{i}", url, 1) for i, url in enumerate(urls)]
            # No engine batch size is known here: queue only when the engines' own queues are the limit.
            config = RouteConfig(policy=policy, max_inflight=None, timeout_s=request_timeout)
            routes[model] = ServiceRoute(model, model=model, config=config, endpoints=endpoints)
        static_keys = {k: KeyInfo(i, f"key-{i}", "inference") for i, k in enumerate(api_key or [], 1)}
        table, keys = EndpointTable(None, static=routes), KeyCache(None, static_keys)
        where = ", ".join(f"{m} -> {len(r.endpoints)} upstream(s)" for m, r in routes.items())
    else:
        home = (home or default_home()).expanduser().resolve()
        # A replica of a platform also logs where that platform's `tideserve logs` searches.
        configure_access_log(access_log, gateway_log_file(home, f"{socket.gethostname()}-{port}"))
        store = Store(database_url(home))
        table, keys = EndpointTable(store), KeyCache(store)
        where = f"store {store.url if store.url.startswith('sqlite') else 'database'}"
    breaker = BreakerConfig(failure_threshold=breaker_failures, cooldown_s=breaker_cooldown)
    app = Gateway(table, keys, limiter_for(redis_url), breaker=breaker)

    async def main() -> None:
        await app.start()
        try:
            print(f"tideserve gateway on http://{host}:{port}/v1 ({where})", flush=True)
            await run(app.serve, host, port, app.max_body_bytes)
        finally:
            await app.close()

    try:
        uvloop.run(main())
    except OSError as e:  # the port is taken or the address is not ours
        typer.echo(f"cannot listen on {host}:{port}: {e.strerror or e}: free it or pass --port", err=True)
        raise typer.Exit(1) from None
