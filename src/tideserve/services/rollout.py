"""What to do next for one service: a pure function of desired state and observed instances.

Like a Kubernetes Deployment controller: new instances come up on the current revision, an old one
drains only once the ready count allows it (maxSurge / maxUnavailable), failed instances restart
after an exponential backoff, and the service status is derived, never stored as intent.

A canary (spec.routing.canary) keeps a second managed set beside the current revision: the stable
revision's instances are held at their own count and are not part of the rolling update, so the
gateway can split traffic between the two. Removing the canary makes them old instances again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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
    # The canary's stable revision and how many of its instances to keep (0 and None: no canary).
    keep_revision: int | None = None
    keep_replicas: int = 0

    @property
    def kept(self) -> int | None:
        """The revision kept beside the current one; the current revision itself is never 'kept'."""
        return self.keep_revision if self.keep_revision != self.revision else None


def desired_of(
    revision: int, body: dict[str, Any], deleting: bool = False, autoscaled: int | None = None
) -> Desired:
    """Desired state from a service document's `spec` body (camelCase, as stored) and, when the service
    autoscales, the autoscaler's latest count (until its first decision, `replicas` stands)."""
    canary = (body.get("routing") or {}).get("canary")
    replicas = int(body.get("replicas", 1))
    if body.get("autoscaling") and autoscaled is not None:
        replicas = autoscaled
    return Desired(
        revision,
        replicas,
        deleting=deleting,
        keep_revision=int(canary["stableRevision"]) if canary else None,
        keep_replicas=int(canary.get("stableReplicas", 1)) if canary else 0,
    )


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


def _hold(instances: list[Observed], replicas: int, now: datetime) -> tuple[list[Observed], list[Action]]:
    """Keep a managed set at `replicas`: drain the surplus (in _drain_order), restart failed ones whose
    backoff passed. Returns the instances that stay and the actions; starts are the caller's."""
    ordered = sorted(instances, key=_drain_order)
    surplus = max(0, len(ordered) - replicas)
    stay = ordered[surplus:]
    actions: list[Action] = [Drain(i.id) for i in ordered[:surplus]]
    actions += [
        Restart(i.id) for i in stay if i.state == FAILED and (i.retry_at is None or i.retry_at <= now)
    ]
    return stay, actions


def plan(desired: Desired, instances: list[Observed], now: datetime) -> list[Action]:
    live = [i for i in instances if i.state not in (DRAINING, STOPPED)]
    if desired.deleting:
        return [Drain(i.id) for i in live]
    kept_rev = desired.kept
    current, actions = _hold([i for i in live if i.revision == desired.revision], desired.replicas, now)
    stable, stable_actions = _hold(
        [i for i in live if kept_rev is not None and i.revision == kept_rev], desired.keep_replicas, now
    )
    actions += stable_actions
    old = sorted(
        (i for i in live if i.revision not in (desired.revision, kept_rev)),
        key=_drain_order,
    )

    # Old instances that serve nothing go at once; ready ones only while enough others stay ready.
    # Stable instances are not counted: they serve the canary's other share, not the current revision's.
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
    if kept_rev is not None:
        # No surge arithmetic: the stable set is a fixed count, brought back if a rollout drained it.
        actions += [Start(kept_rev) for _ in range(max(0, desired.keep_replicas - len(stable)))]
    return actions


def drain_cause(desired: Desired, revision: int) -> str:
    """Why plan() drains an instance of `revision`, in words for the service's events."""
    if desired.deleting:
        return "the service is being deleted"
    if revision in (desired.revision, desired.kept):
        return "scaled down"
    return f"replaced by revision {desired.revision}"


def service_status(desired: Desired, instances: list[Observed]) -> str:
    live = [i for i in instances if i.state != STOPPED]
    if desired.deleting:
        return "Deleting"
    if any(i.failures >= ABNORMAL_AFTER for i in live if i.state != DRAINING):
        return "Abnormal"
    kept_rev = desired.kept
    if any(i.revision not in (desired.revision, kept_rev) for i in live):
        return "Updating"
    ready_current = sum(i.state == RUNNING and i.revision == desired.revision for i in live)
    ready_stable = sum(i.state == RUNNING and i.revision == kept_rev for i in live)
    keep = desired.keep_replicas if kept_rev is not None else 0
    if ready_current >= desired.replicas and ready_stable >= keep:
        return "Running"
    return "Pending"
