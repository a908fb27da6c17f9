"""The OpenAI entry point, minimal: key check, `model` -> service -> a Running instance (fewest
open requests; the next one if the connection fails before any byte is sent), streamed through
unchanged. Routing rules, limits and balancing policies come with the gateway."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tideserve.api.auth import authenticate
from tideserve.errors import ApiError
from tideserve.gateway.endpoints import EndpointTable
from tideserve.store.db import Store
from tideserve.store.models import Service

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "authorization"}


def openai_error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status in (401, 403):
        kind = "authentication_error" if status == 401 else "permission_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class Passthrough:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = EndpointTable(store)
        self.inflight: dict[str, int] = defaultdict(int)
        self._client: httpx.AsyncClient | None = None

    def open_requests(self, instance_id: str) -> int:
        return self.inflight.get(instance_id, 0)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
            timeout = httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=30.0)
            self._client = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
        return self._client

    async def start(self) -> None:
        await self.table.start()

    async def close(self) -> None:
        await self.table.close()
        if self._client is not None:
            await self._client.aclose()

    def _auth(self, request: Request) -> None:
        with self.store.session() as s:
            authenticate(s, request.headers.get("authorization"), need="inference")

    def _endpoints(self, model: str) -> list[tuple[str, str]] | None:
        """(instance id, base URL) of the service's ready instances; None when no such service."""
        route = self.table.route(model)
        return None if route is None else [(e.instance_id, e.url) for e in route.endpoints]

    async def models(self, request: Request) -> Response:
        try:
            self._auth(request)
        except ApiError as e:
            return openai_error(e.status, e.message, e.code)
        with self.store.session() as s:
            services = s.scalars(select(Service).where(Service.deleting.is_(False)).order_by(Service.id))
            data = [
                {
                    "id": svc.name,
                    "object": "model",
                    "created": int(svc.created_at.timestamp()),
                    "owned_by": "tideserve",
                }
                for svc in services
            ]
        return JSONResponse({"object": "list", "data": data})

    async def forward(self, request: Request) -> Response:
        try:
            self._auth(request)
        except ApiError as e:
            return openai_error(e.status, e.message, e.code)
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return openai_error(400, f"request body is not valid JSON: {e}", "invalid_json")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return openai_error(
                400, "'model' is required: the name of an inference service", "missing_model", "model"
            )
        endpoints = self._endpoints(model)
        if not endpoints:
            await self.table.sync()
            endpoints = self._endpoints(model)
        if endpoints is None:
            return openai_error(
                404,
                f"the model {model!r} does not exist: list services with GET /v1/models",
                "model_not_found",
                "model",
            )
        if not endpoints:
            return openai_error(
                503, f"service {model!r} has no ready instance yet: retry shortly", "service_unavailable"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        # Fewest open requests first; a refused connection moves on to the next instance.
        for instance_id, base in sorted(endpoints, key=lambda e: self.inflight.get(e[0], 0)):
            upstream = self.client.build_request(
                "POST", base + request.url.path, content=raw, headers=headers, params=request.query_params
            )
            self.inflight[instance_id] += 1
            try:
                resp = await self.client.send(upstream, stream=True)
            except httpx.TransportError:
                # Nothing reached the client yet, so the next instance may take it: this one was
                # refused, timed out connecting, or closed a kept-alive connection while stopping.
                self.inflight[instance_id] -= 1
                continue
            except BaseException:
                self.inflight[instance_id] -= 1
                raise
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
            lease = _Lease(self.inflight, instance_id, resp)
            return StreamingResponse(
                self._relay(resp, lease),
                status_code=resp.status_code,
                headers=out_headers,
                background=BackgroundTask(lease.release),
            )
        return openai_error(
            503,
            f"no instance of service {model!r} accepted the request: retry shortly",
            "service_unavailable",
        )

    async def _relay(self, resp: httpx.Response, lease: _Lease) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:  # also on client disconnect, when the background task may never run
            await lease.release()


class _Lease:
    """One open request to an instance: released exactly once, however the response ends."""

    def __init__(self, counts: dict[str, int], instance_id: str, resp: httpx.Response) -> None:
        self.counts, self.instance_id, self.resp, self.open = counts, instance_id, resp, True

    async def release(self) -> None:
        if self.open:
            self.open = False
            self.counts[self.instance_id] -= 1
            await self.resp.aclose()
