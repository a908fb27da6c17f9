"""A service's `model` (catalog card or custom model name) -> what the engine is started with."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.catalog.plaza import get_card
from tideserve.store.models import CustomModel


class ModelUnavailable(ValueError):
    pass


def resolve_model_ref(s: Session, name: str) -> str:
    custom = s.scalar(select(CustomModel).where(CustomModel.name == name))
    if custom is not None:
        return custom.local_path
    card = get_card(name)
    if card is None:
        raise ModelUnavailable(f"model {name!r} is neither in the model plaza nor a registered custom model")
    if card.source == "bundled":
        return card.name  # the built-in engine ships it
    raise ModelUnavailable(
        f"model {name!r} is fetched from {card.source}, which this machine cannot reach offline: "
        "download it elsewhere and register it as a custom model (a local path or an s3:// copy)"
    )
