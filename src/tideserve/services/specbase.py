"""The base every part of the service document is built on, and its error types; its own module so
the autoscaling policy (mounted under `spec.autoscaling`) and the service spec can share them."""

from __future__ import annotations

from typing import TypedDict

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class FieldError(TypedDict):
    loc: str
    msg: str


class SpecError(ValueError):
    """A document that cannot become a ServiceSpec; `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in errors))


class _Violations(ValueError):
    """Raised by cross-field validators so each problem keeps its own location (relative to the model
    that raised it) through pydantic, which otherwise reports them all at the model's path."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        super().__init__("; ".join(msg for _, msg in items))


class _Model(BaseModel):
    # strict: "2" is not a replica count and `yes` (YAML for true) is not a name; users get the type
    # error instead of a silent conversion.
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        strict=True,
        allow_inf_nan=False,
    )
