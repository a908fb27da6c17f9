"""The OpenAI wire format at the gateway: errors in OpenAI's shape, and the checks a request body gets
before it is routed. Only what routing and limits need is checked here; the engine validates the
rest (sampling parameters, context length) and its 4xx passes through unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tideserve.gateway.balancing import prompt_text_of

# Charged at admission when a request does not say how many tokens it wants; usage corrects it.
DEFAULT_MAX_TOKENS = 256
_TYPES = {"chat": "messages", "completions": "prompt", "embeddings": "input"}


class GatewayError(Exception):
    """A refusal with the status, message and code OpenAI clients expect."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.code, self.param)


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_exceeded"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    error = {"message": message, "type": error_type(status), "param": param, "code": code}
    return json.dumps({"error": error}).encode()


@dataclass
class ParsedRequest:
    kind: str  # chat | completions | embeddings
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    prompt_text: str
    wants_usage: bool  # the client asked for the final usage chunk itself


def _bad(message: str, param: str, code: str = "invalid_type") -> GatewayError:
    return GatewayError(400, message, code, param)


def _check_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(
            f"'{name}' must be a positive integer, got {json.dumps(value)[:40]}", name, "invalid_value"
        )
    return value


def parse_request(kind: str, raw: bytes) -> ParsedRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GatewayError(400, f"request body is not valid JSON: {e}", "invalid_json") from e
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(
            "'model' is required: the name of an inference service (GET /v1/models)", "model", "missing_model"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {json.dumps(stream)[:40]}", "stream")
    field = _TYPES[kind]
    value = body.get(field)
    if kind == "chat":
        if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
            raise _bad("'messages' must be a non-empty list of {role, content} objects", "messages")
    elif kind == "completions":
        if not isinstance(value, str | list) or (isinstance(value, list) and not value):
            raise _bad("'prompt' must be a string or a non-empty list", "prompt")
    elif value is None:
        raise _bad("'input' is required: a string or a list of strings", "input", "missing_input")
    max_tokens = _check_int(body, "max_completion_tokens") or _check_int(body, "max_tokens")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object such as {\"include_usage\": true}", "stream_options")
    wants_usage = bool(options and options.get("include_usage"))
    text = prompt_text_of(body) if kind != "embeddings" else (value if isinstance(value, str) else "")
    return ParsedRequest(kind, body, model, stream, max_tokens, text, wants_usage)
