"""Where a new instance goes: filters drop nodes that cannot host it, a scorer ranks the rest, the
selector takes the best. Pure: capacities in, a choice (or the reason there is none) out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeCapacity:
    id: int
    name: str
    ready: bool
    cpus: float
    memory_bytes: int
    gpu_indices: tuple[int, ...]
    used_cpus: float = 0.0
    used_memory_bytes: int = 0
    used_gpus: frozenset[int] = field(default_factory=frozenset)

    @property
    def free_gpus(self) -> list[int]:
        return [g for g in self.gpu_indices if g not in self.used_gpus]


@dataclass(frozen=True)
class Request:
    cpus: float
    memory_bytes: int
    gpus: int


@dataclass(frozen=True)
class Placement:
    node_id: int
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class NoFit:
    reason: str


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def ready_filter(node: NodeCapacity, req: Request) -> str | None:
    return None if node.ready else f"node {node.name} is not Ready"


def resource_fit_filter(node: NodeCapacity, req: Request) -> str | None:
    if len(node.free_gpus) < req.gpus:
        return f"node {node.name} has {len(node.free_gpus)} free GPU(s), the instance needs {req.gpus}"
    free_cpus = node.cpus - node.used_cpus
    if free_cpus < req.cpus - 1e-9:
        return f"node {node.name} has {free_cpus:g} free CPUs, the instance needs {req.cpus:g}"
    free_mem = node.memory_bytes - node.used_memory_bytes
    if free_mem < req.memory_bytes:
        need = _gib(req.memory_bytes)
        return f"node {node.name} has {_gib(free_mem)} free memory, the instance needs {need}"
    return None


FILTERS = (ready_filter, resource_fit_filter)


def spread_scorer(node: NodeCapacity, req: Request) -> float:
    """Prefer the least loaded node, so one node's failure takes out as few replicas as possible."""
    gpu_load = len(node.used_gpus) / len(node.gpu_indices) if node.gpu_indices else 0.0
    cpu_load = node.used_cpus / node.cpus if node.cpus else 1.0
    mem_load = node.used_memory_bytes / node.memory_bytes if node.memory_bytes else 1.0
    return -(2 * gpu_load + cpu_load + mem_load)


def select(nodes: list[NodeCapacity], req: Request) -> Placement | NoFit:
    if not nodes:
        return NoFit("the resource group has no nodes: add a node to it")
    reasons: list[str] = []
    fit: list[NodeCapacity] = []
    for node in nodes:
        why = next((r for f in FILTERS if (r := f(node, req)) is not None), None)
        if why is None:
            fit.append(node)
        else:
            reasons.append(why)
    if not fit:
        return NoFit("; ".join(reasons))
    best = max(fit, key=lambda n: (spread_scorer(n, req), -n.id))
    return Placement(best.id, tuple(best.free_gpus[: req.gpus]))
