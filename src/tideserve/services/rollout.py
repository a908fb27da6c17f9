"""What to do next for one service: a pure function of desired state and observed instances.

Like a Kubernetes Deployment controller: new instances come up on the current revision, an old one
drains only once the ready count allows it (maxSurge / maxUnavailable), failed instances restart
after an exponential backoff, and the service status is derived, never stored as intent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# Instance states (DESIGN.md).
PENDING, STARTING, RUNNING, DRAINING, FAILED, STOPPED = (
    "Pending",
    "Starting",
    "Running",
    "Draining",
    "Failed",
    "Stopped",
)
ABNORMAL_AFTER = 3  # consecutive failures of one instance before the service shows Abnormal
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True)
class Desired:
    revision: int
    replicas: int
    deleting: bool = False
    max_surge: int = 1
    max_unavailable: int = 0


@dataclass(frozen=True)
class Observed:
    id: str
    revision: int
    state: str
    failures: int = 0
    retry_at: datetime | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Start:
    revision: int


@dataclass(frozen=True)
class Restart:
    id: str


@dataclass(frozen=True)
class Drain:
    id: str


Action = Start | Restart | Drain


def backoff(failures: int) -> timedelta:
    """2 s, 4 s, 8 s ... capped at 5 minutes: a crash loop must not spin the machine."""
    return timedelta(seconds=min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, failures - 1)))


def _drain_order(inst: Observed) -> tuple[int, float]:
    # Not-ready instances go first (they serve nothing), then the newest (least warm cache).
    ready = 1 if inst.state == RUNNING else 0
    created = inst.created_at.timestamp() if inst.created_at else 0.0
    return (ready, -created)


def plan(desired: Desired, instances: list[Observed], now: datetime) -> list[Action]:
    live = [i for i in instances if i.state not in (DRAINING, STOPPED)]
    if desired.deleting:
        return [Drain(i.id) for i in live]
    current = sorted((i for i in live if i.revision == desired.revision), key=_drain_order)
    old = sorted((i for i in live if i.revision != desired.revision), key=_drain_order)
    actions: list[Action] = []

    surplus = max(0, len(current) - desired.replicas)
    actions += [Drain(i.id) for i in current[:surplus]]
    current = current[surplus:]
    actions += [
        Restart(i.id) for i in current if i.state == FAILED and (i.retry_at is None or i.retry_at <= now)
    ]

    # Old instances that serve nothing go at once; ready ones only while enough others stay ready.
    ready = sum(i.state == RUNNING for i in current + old)
    removable = ready - (desired.replicas - desired.max_unavailable)
    kept_old = 0
    for inst in old:
        if inst.state != RUNNING:
            actions.append(Drain(inst.id))
        elif removable > 0:
            actions.append(Drain(inst.id))
            removable -= 1
        else:
            kept_old += 1

    surge = desired.max_surge if kept_old else 0
    room = desired.replicas + surge - len(current) - kept_old
    missing = desired.replicas - len(current)
    actions += [Start(desired.revision) for _ in range(max(0, min(missing, room)))]
    return actions


def service_status(desired: Desired, instances: list[Observed]) -> str:
    live = [i for i in instances if i.state != STOPPED]
    if desired.deleting:
        return "Deleting"
    if any(i.failures >= ABNORMAL_AFTER for i in live if i.state != DRAINING):
        return "Abnormal"
    if any(i.revision != desired.revision for i in live):
        return "Updating"
    if sum(i.state == RUNNING for i in live) >= desired.replicas:
        return "Running"
    return "Pending"
