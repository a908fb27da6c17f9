"""The engine's OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions,
/v1/models, /health (200 only when ready) and /metrics (vLLM names).

The port opens at once and the model loads in the background, so an orchestrator can tell
"starting" (503 on /health) from "dead" (connection refused).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tideserve.engine.async_engine import AsyncEngine, EngineDeadError
from tideserve.engine.core import EngineCore, RequestOutput, TokenLogprob
from tideserve.engine.protocol import ChatCompletionRequest, CompletionRequest
from tideserve.engine.tokenizer import ChatTemplateError, Tokenizer

log = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


@dataclass
class ServerState:
    model_name: str
    core: EngineCore | None = None
    engine: AsyncEngine | None = None
    started: float = 0.0

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive


def build_app(model_name: str, load: Callable[[], EngineCore]) -> Starlette:
    """`load` builds the engine (slow); it runs on a thread after the server starts listening."""
    state = ServerState(model_name=model_name, started=time.time())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def load_in_background() -> None:
            try:
                core = load()
            except BaseException:
                # A process that can never serve must say so by exiting, so a supervisor (the
                # platform, Kubernetes) restarts it with backoff instead of waiting on /health.
                log.exception("model failed to load; exiting")
                logging.shutdown()
                os._exit(EXIT_LOAD_FAILED)
            state.core = core

            def attach() -> None:
                state.engine = AsyncEngine(core, loop)
                log.info("ready: serving %s", model_name)

            loop.call_soon_threadsafe(attach)

        threading.Thread(target=load_in_background, name="loader", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop()

    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    async def _not_found(request: Request, _: Exception) -> JSONResponse:
        return APIError(
            404, f"no route {request.method} {request.url.path}", "invalid_request_error"
        ).response()

    async def _bad_method(request: Request, _: Exception) -> JSONResponse:
        return APIError(
            405, f"method {request.method} not allowed on {request.url.path}", "invalid_request_error"
        ).response()

    async def health(_: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "ok"})
        if state.engine is not None:
            return JSONResponse({"status": "failed", "error": str(state.engine.error)}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def metrics(_: Request) -> Response:
        core = state.core
        if core is None or core.metrics is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(core.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(_: Request) -> JSONResponse:
        max_len = state.core.config.max_model_len if state.core else None
        card = {
            "id": model_name,
            "object": "model",
            "created": int(state.started),
            "owned_by": "tideserve",
            "max_model_len": max_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def chat(request: Request) -> Response:
        arrived = time.monotonic()
        req = await _parse(request, ChatCompletionRequest)
        engine, core = _engine(state, req.model)
        try:
            prompt = core.tokenizer.apply_chat_template(
                [m.as_template_dict() for m in req.messages], add_generation_prompt=req.add_generation_prompt
            )
        except ChatTemplateError as e:
            raise bad_request(f"messages: {e}", "messages") from e
        ids = core.tokenizer.encode(prompt, add_special_tokens=False)
        params = _params(core, req, ids, None)
        rid = _request_id(request, "chatcmpl")
        gen = _logged(engine.generate(rid, ids, params, req.priority), request, rid, arrived)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = _chat_stream(gen, rid, model_name, core.tokenizer, include_usage, req.logprobs)
            return _sse(stream, _echo_id(request, rid))
        return await _until_done(
            request,
            _chat_response(gen, rid, model_name, core.tokenizer, req.logprobs),
            _echo_id(request, rid),
        )

    async def completions(request: Request) -> Response:
        arrived = time.monotonic()
        req = await _parse(request, CompletionRequest)
        engine, core = _engine(state, req.model)
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            ids = list(p)  # type: ignore[arg-type]
            if max(ids) >= core.runner.cfg.vocab_size:
                raise bad_request(
                    f"prompt: token id {max(ids)} >= vocab size {core.runner.cfg.vocab_size}", "prompt"
                )
        else:
            text = p if isinstance(p, str) else p[0]
            ids = core.tokenizer.encode(text)  # type: ignore[arg-type]
        params = _params(core, req, ids, COMPLETIONS_DEFAULT_MAX_TOKENS)
        rid = _request_id(request, "cmpl")
        gen = _logged(engine.generate(rid, ids, params, req.priority), request, rid, arrived)
        lp = req.logprobs is not None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = _completion_stream(gen, rid, model_name, core.tokenizer, include_usage, lp)
            return _sse(stream, _echo_id(request, rid))
        work = _completion_response(gen, rid, model_name, core.tokenizer, lp)
        return await _until_done(request, work, _echo_id(request, rid))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    handlers = {APIError: _api_error, 404: _not_found, 405: _bad_method}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.server = state
    return app


async def _parse(request: Request, model: type[Any]) -> Any:
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            raise bad_request(f"the body is not valid JSON: {err['msg']}") from e
        loc = [
            str(x) for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x.startswith("function-")))
        ]
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        raise bad_request(f"{where}{err['msg']}", param) from e


def _engine(state: ServerState, model: str) -> tuple[AsyncEngine, EngineCore]:
    if model != state.model_name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {state.model_name!r}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    if not state.ready or state.core is None or state.engine is None:
        raise APIError(503, "the model is still loading; retry shortly", "service_unavailable")
    return state.engine, state.core


def _params(core: EngineCore, req: Any, ids: list[int], default_max: int | None) -> Any:
    vocab = core.runner.cfg.vocab_size
    if req.stop_token_ids and max(req.stop_token_ids) >= vocab:
        raise bad_request(
            f"stop_token_ids: {max(req.stop_token_ids)} is not below the vocab size {vocab}", "stop_token_ids"
        )
    limit = min(core.config.max_model_len, core.capacity_tokens)
    asked = req.requested_max_tokens
    max_tokens = asked or default_max or (limit - len(ids))
    if len(ids) + max_tokens > limit or len(ids) >= limit:
        raise bad_request(
            f"this model's maximum context length is {limit} tokens; the request has {len(ids)} prompt tokens"
            f" and asks for {max_tokens} completion tokens: shorten the prompt or lower max_tokens",
            "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            "context_length_exceeded",
        )
    return req.sampling_params(max_tokens, req.num_logprobs)


def _request_id(request: Request, prefix: str) -> str:
    """The engine's id for a request: unique even when a client repeats its X-Request-Id, and
    containing that id so logs of the gateway and the engine can be joined on it."""
    given = request.headers.get("x-request-id")
    unique = uuid.uuid4().hex
    return f"{prefix}-{given}-{unique[:8]}" if given else f"{prefix}-{unique}"


def _echo_id(request: Request, rid: str) -> str:
    return request.headers.get("x-request-id") or rid


async def _logged(
    gen: AsyncIterator[RequestOutput], request: Request, rid: str, arrived: float
) -> AsyncIterator[RequestOutput]:
    """Passes the outputs on; when the request ends (finished, failed or abandoned by its client)
    prints one JSON line to stdout, keyed like the gateway's access log (request_id, session_id),
    so `tideserve logs --request-id` finds both sides."""
    first: float | None = None
    last: RequestOutput | None = None
    outcome = "abort"  # unless the engine finishes it: the client left or the handler failed
    try:
        async for out in gen:
            if first is None and out.new_token_ids:
                first = time.monotonic()
            last = out
            if out.finished and out.finish_reason is not None:
                outcome = out.finish_reason.value
            yield out
    except EngineDeadError:
        outcome = "error"
        raise
    finally:
        line: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": _echo_id(request, rid),
        }
        if session := request.headers.get("x-session-id"):
            line["session_id"] = session
        line["path"] = request.url.path
        if last is not None:
            line.update(
                prompt_tokens=last.num_prompt_tokens,
                cached_tokens=last.num_cached_tokens,
                completion_tokens=last.num_output_tokens,
            )
        if first is not None:
            line["ttft_s"] = round(first - arrived, 4)
        line.update(e2e_s=round(time.monotonic() - arrived, 4), finish_reason=outcome)
        # One short write per request, flushed: the log is a file, and a follower wants it now.
        print(json.dumps(line, separators=(",", ":")), flush=True)


def _usage(out: RequestOutput) -> dict[str, Any]:
    return {
        "prompt_tokens": out.num_prompt_tokens,
        "completion_tokens": out.num_output_tokens,
        "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
        "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens},
    }


def _token_text(tok: Tokenizer, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def _chat_logprobs(tok: Tokenizer, items: list[TokenLogprob]) -> list[dict[str, Any]]:
    def entry(tid: int, lp: float) -> dict[str, Any]:
        text = _token_text(tok, tid)
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return [{**entry(i.token_id, i.logprob), "top_logprobs": [entry(t, v) for t, v in i.top]} for i in items]


def _completion_logprobs(tok: Tokenizer, items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens = [_token_text(tok, i.token_id) for i in items]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [{_token_text(tok, t): v for t, v in i.top} for i in items],
        "text_offset": offsets,
    }


def _sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _sse(events: AsyncIterator[str], rid: str) -> StreamingResponse:
    headers = {"X-Request-Id": rid, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _stream_error(e: Exception) -> str:
    return _sse_event({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})


async def _chat_stream(
    gen: AsyncIterator[RequestOutput],
    rid: str,
    model: str,
    tok: Tokenizer,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    yield _sse_event(
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
    )
    last: RequestOutput | None = None
    try:
        async for out in gen:
            last = out
            if out.new_text or out.logprobs:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": out.new_text},
                    "finish_reason": None,
                    "logprobs": {"content": _chat_logprobs(tok, out.logprobs)} if logprobs else None,
                }
                yield _sse_event({**base, "choices": [choice]})
            if out.finished:
                reason = out.finish_reason.value if out.finish_reason else None
                yield _sse_event(
                    {
                        **base,
                        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}],
                    }
                )
    except EngineDeadError as e:
        yield _stream_error(e)
    if include_usage and last is not None:
        yield _sse_event({**base, "choices": [], "usage": _usage(last)})
    yield "data: [DONE]\n\n"


async def _completion_stream(
    gen: AsyncIterator[RequestOutput],
    rid: str,
    model: str,
    tok: Tokenizer,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[str]:
    base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    last: RequestOutput | None = None
    offset = 0
    try:
        async for out in gen:
            last = out
            reason = out.finish_reason.value if out.finish_reason else None
            if out.new_text or out.finished or out.logprobs:
                lp = _completion_logprobs(tok, out.logprobs, offset) if logprobs else None
                offset += len(out.new_text)
                choice = {"index": 0, "text": out.new_text, "logprobs": lp, "finish_reason": reason}
                yield _sse_event({**base, "choices": [choice]})
    except EngineDeadError as e:
        yield _stream_error(e)
    if include_usage and last is not None:
        yield _sse_event({**base, "choices": [], "usage": _usage(last)})
    yield "data: [DONE]\n\n"


async def _collect(gen: AsyncIterator[RequestOutput]) -> tuple[str, list[TokenLogprob], RequestOutput]:
    parts: list[str] = []
    lps: list[TokenLogprob] = []
    last: RequestOutput | None = None
    async for out in gen:
        parts.append(out.new_text)
        lps.extend(out.logprobs)
        last = out
    assert last is not None
    return "".join(parts), lps, last


async def _chat_response(
    gen: AsyncIterator[RequestOutput], rid: str, model: str, tok: Tokenizer, logprobs: bool
) -> dict[str, Any]:
    text, lps, last = await _collect(gen)
    reason = last.finish_reason.value if last.finish_reason else None
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": _chat_logprobs(tok, lps)} if logprobs else None,
                "finish_reason": reason,
            }
        ],
        "usage": _usage(last),
    }


async def _completion_response(
    gen: AsyncIterator[RequestOutput], rid: str, model: str, tok: Tokenizer, logprobs: bool
) -> dict[str, Any]:
    text, lps, last = await _collect(gen)
    reason = last.finish_reason.value if last.finish_reason else None
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": _completion_logprobs(tok, lps, 0) if logprobs else None,
                "finish_reason": reason,
            }
        ],
        "usage": _usage(last),
    }


async def _until_done(request: Request, work: Any, rid: str) -> JSONResponse:
    """Await a non-streamed result, aborting the generation if the client disconnects."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            break
        if await request.is_disconnected():
            task.cancel()
            return JSONResponse({}, status_code=499)
    try:
        body = task.result()
    except EngineDeadError as e:
        raise APIError(500, str(e), "server_error") from e
    return JSONResponse(body, headers={"X-Request-Id": rid})
