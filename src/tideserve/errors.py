"""Errors a client can cause, each with the HTTP status it maps to and a message naming the fix."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ApiError(Exception):
    status: int
    message: str
    code: str = "invalid_request"
    details: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


def not_found(kind: str, name: str, hint: str = "") -> ApiError:
    return ApiError(404, f"{kind} {name!r} not found" + (f": {hint}" if hint else ""), "not_found")


def conflict(message: str) -> ApiError:
    return ApiError(409, message, "conflict")


def invalid(message: str, details: list[dict[str, str]] | None = None) -> ApiError:
    return ApiError(422, message, "validation_error", details or [])
