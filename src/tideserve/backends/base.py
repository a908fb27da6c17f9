"""What every engine adapter says: how an instance of a service is started (the program and its flags,
from the framework parameters of the spec), where its health is probed, and what its Prometheus
metrics are called, so the gateway, the collector and the autoscaler see one vocabulary
(DESIGN.md, "Contracts"). Adapters are pure: they compute arguments, they start nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["both", "prefill", "decode"]
Where = Literal["local", "container"]


@dataclass(frozen=True)
class Topology:
    """Where one process sits in a multi-node instance (a LeaderWorkerSet group on Kubernetes)."""

    nodes: int = 1
    rank: int | str = 0  # 0: the leader, which serves HTTP; a "$(VAR)" of the pod for workers
    leader_address: str = ""  # host the workers reach the leader on; may be a $(VAR) of the pod
    dist_port: int = 29500  # the port of the engines' distributed rendezvous on the leader


@dataclass(frozen=True)
class LaunchContext:
    service: str  # also the served model name: clients ask the gateway for the service
    model_ref: str  # a local path, a bundled model's name, or what the engine pulls itself
    spec: Mapping[str, Any]  # the document's `spec` body (camelCase, defaults applied)
    port: int
    host: str = "127.0.0.1"
    role: Role = "both"
    topology: Topology = field(default_factory=Topology)


class EngineAdapter(Protocol):
    name: str  # builtin | vllm | sglang
    targets: str  # the releases whose flags and metric names this adapter follows
    health_path: str  # 200 only when ready to serve
    # canonical name (engine_metrics.ALIASES / samples.*_ALIASES keys) -> this engine's metric names,
    # most recent release first
    metric_names: Mapping[str, tuple[str, ...]]

    def program(self, where: Where) -> list[str]:
        """The command before the flags: on this machine, or inside the adapter's image."""
        ...

    def image_for(self, version: str = "") -> str:
        """The container image Kubernetes runs it from: the release `version` names (spec.engine.version,
        without a leading v), or the one the adapter targets when empty."""
        ...

    def args(self, ctx: LaunchContext) -> list[str]:
        """The flags for one process of an instance."""
        ...

    def installed(self) -> str | None:
        """The version installed on this machine (None: not installed, so the local platform cannot
        start it)."""
        ...
