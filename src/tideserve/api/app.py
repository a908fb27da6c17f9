"""One ASGI app on one port: `/api/v1/*` control plane, `/v1/*` OpenAI entry (the gateway),
`/metrics` (the gateway's and the collector's), `/health`, and the console at `/`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from tideserve import __version__
from tideserve.api import keys, models, monitoring, resources, services
from tideserve.api.deps import Context
from tideserve.autoscaler.loop import Autoscaler
from tideserve.console import mount as mount_console
from tideserve.errors import ApiError
from tideserve.gateway.openai_api import error_body
from tideserve.gateway.proxy import GATEWAY_PATHS, Gateway
from tideserve.observability.collector import Collector


def _error(status: int, message: str, code: str, details: list[dict[str, str]] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "code": code, "details": details or []}}, status_code=status
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def create_app(
    ctx: Context, gateway: Gateway, collector: Collector | None = None, autoscaler: Autoscaler | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.controller.start()
        await gateway.start()
        if collector is not None:
            await collector.start()
        if autoscaler is not None:
            await autoscaler.start()
        yield
        if autoscaler is not None:
            await autoscaler.close()
        if collector is not None:
            await collector.close()
        await gateway.close()
        ctx.controller.shutdown()

    app = FastAPI(
        title="tideserve",
        version=__version__,
        description="Control plane of tideserve: model plaza, resources, inference services.",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.gateway = gateway

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            return Response(error_body(e.status, e.message, e.code), e.status, media_type="application/json")
        return _error(e.status, e.message, e.code, e.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
        details = [{"loc": _loc(tuple(err["loc"])), "msg": err["msg"]} for err in e.errors()]
        first = details[0] if details else {"loc": "body", "msg": "invalid request"}
        return _error(422, f"{first['loc']}: {first['msg']}", "validation_error", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), "http_error")

    app.include_router(resources.router)
    app.include_router(models.router)
    app.include_router(services.router)
    app.include_router(keys.router)
    app.include_router(monitoring.router)
    # The gateway is a raw ASGI app: its routes take every method and answer 405 themselves.
    app.router.routes.extend(Route(path, gateway) for path in GATEWAY_PATHS)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    mount_console(app)
    return app
