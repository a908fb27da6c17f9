"""Before deploying: does one replica fit the memory of a node in the service's resource group?
GPU instances are checked against each node's free GPUs, CPU instances against the instance's
memory (and the node's). The numbers come from the pure estimator in tideserve.catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.catalog import estimator
from tideserve.catalog.plaza import get_card
from tideserve.services.spec import parse_quantity
from tideserve.store.models import CustomModel, Instance, Node, Revision


@dataclass
class FitReport:
    fits: bool
    message: str
    node: str | None = None
    estimate: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shape(s: Session, model: str) -> tuple[estimator.ModelShape, str] | None:
    """Architecture figures and weight dtype of a card or custom model (None: unknown)."""
    card = get_card(model)
    if card is not None:
        return estimator.shape_of(card), card.dtype
    custom = s.scalar(select(CustomModel).where(CustomModel.name == model))
    if custom is None:
        return None
    m = custom.meta
    shape = estimator.ModelShape(
        layers=m["layers"],
        hidden_size=m["hidden_size"],
        heads=m["heads"],
        kv_heads=m["kv_heads"],
        head_dim=m["head_dim"],
        vocab_size=m["vocab_size"],
        parameters=m["parameters"],
        tied_embeddings=bool(m.get("tie_word_embeddings")),
    )
    return shape, m.get("dtype") or "bfloat16"


def _free_gpus(s: Session, node: Node) -> list[int]:
    used = {
        g
        for inst in s.scalars(select(Instance).where(Instance.node_id == node.id))
        if inst.state != "Stopped"
        for g in inst.gpu_indices
    }
    return [int(g["memory_bytes"]) for g in node.gpus if g["index"] not in used]


def instance_resources(s: Session, inst: Instance) -> dict[str, Any]:
    """What an instance asked for: its own revision's resources, which an update may have changed."""
    spec = s.scalar(
        select(Revision.spec).where(Revision.service_id == inst.service_id, Revision.number == inst.revision)
    )
    return spec["spec"]["resources"] if spec else {"cpu": 0, "memory": 0, "gpus": 0}


def _free_ram(s: Session, node: Node) -> int:
    instances = s.scalars(select(Instance).where(Instance.node_id == node.id))
    return node.memory_bytes - sum(parse_quantity(instance_resources(s, i)["memory"]) for i in instances)


def fit_report(s: Session, doc: dict[str, Any], nodes: list[Node]) -> FitReport:
    spec = doc["spec"]
    found = _shape(s, spec["model"])
    if found is None:
        return FitReport(False, f"model {spec['model']!r} is unknown")
    shape, dtype = found
    engine = spec["engine"]["name"]
    gpus = int(spec["resources"]["gpus"])
    params = spec["parameters"]
    if (engine == "builtin" or not gpus) and dtype not in estimator.FLOAT_DTYPES:
        dtype = "bfloat16"  # the built-in engine dequantizes on load; a CPU instance computes in it
    config = estimator.ServingConfig.from_parameters(
        params, weight_dtype=dtype, default_max_model_len=int(params["maxModelLen"])
    )
    if not nodes:
        return FitReport(False, "the resource group has no nodes: add a node to it")
    best: tuple[estimator.FitResult, Node] | None = None
    for node in nodes:
        if gpus:
            est = estimator.estimate_memory(shape, config)
            result = estimator.check_fit(
                est, _free_gpus(s, node), gpus, float(params["gpuMemoryUtilization"])
            )
        else:
            est = estimator.estimate_ram(shape, config)
            limit = min(parse_quantity(spec["resources"]["memory"]), max(0, _free_ram(s, node)))
            result = estimator.check_ram_fit(est, limit)
        if best is None or (result.fits, result.available_bytes) > (best[0].fits, best[0].available_bytes):
            best = (result, node)
    assert best is not None
    result, node = best
    estimate = {
        "weightsBytes": est.weights_bytes,
        "kvBytesPerToken": est.kv_bytes_per_token,
        "kvMinBytes": est.kv_min_bytes,
        "kvFullBytes": est.kv_full_bytes,
        "overheadBytes": est.overhead_bytes,
        "neededBytes": result.needed_bytes,
        "availableBytes": result.available_bytes,
        "concurrentSequences": result.concurrent_sequences,
        "perGpu": bool(gpus),
        "suggestion": result.suggestion,
        "suggestedTpSize": result.suggested_tp_size,
    }
    message = result.message
    if not gpus and not result.fits:
        message += f" (resources.memory is {spec['resources']['memory']}: raise it if the node has room)"
    return FitReport(result.fits, message, node.name, estimate)
