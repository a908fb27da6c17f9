"""The base every part of the service document is built on, and its error types; its own module so
the autoscaling policy (mounted under `spec.autoscaling`) and the service spec can share them."""

from __future__ import annotations

import typing
from typing import Any, TypedDict

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


def model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model a document path leads to from `root` (for "did you mean" on an unknown field), through
    `M | None` and `list[M]` fields; None where the path leaves the models."""
    model = root
    for part in path:
        if isinstance(part, int):
            continue  # a list index: the item model was found with the list's field
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(part) or model.model_fields.get(part)
        inner = _item_model(field.annotation) if field else None
        if inner is None:
            return None
        model = inner
    return model


def _item_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `M`, `M | None` or `list[M]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _item_model(arg)
        if found is not None:
            return found
    return None
