"""The audit trail: what happened to a service and why, one row per event.

An event is added to the caller's session, so it commits with the state change it describes (both
land or neither does), and a rolled-back request leaves no story of something that never happened.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tideserve.store.models import Event, Service

KEEP = 1000  # events kept per service; older ones are trimmed as new ones come


def record(
    s: Session,
    *,
    service: str | None,
    reason: str,
    message: str,
    instance: str | None = None,
    kind: str = "service",
    details: dict[str, Any] | None = None,
) -> None:
    s.add(
        Event(kind=kind, service=service, instance=instance, reason=reason, message=message, details=details)
    )
    _trim(s, service)


def _trim(s: Session, service: str | None) -> None:
    """Drop the service's events older than its KEEP newest, in one statement on every insert.

    The (service, at) index finds the cutoff by walking at most KEEP entries and then the rows below
    it, so the cost does not grow with the table, and no per-process counter is needed (the bound
    holds across restarts). SKIP LOCKED: two transactions recording for the same service leave each
    other's victims alone instead of waiting on them, which could deadlock with the service row they
    also update; whatever one skips, the next insert trims. (SQLite has one writer and ignores it.)
    """
    same = Event.service.is_(None) if service is None else Event.service == service
    cutoff = select(Event.at).where(same).order_by(Event.at.desc()).offset(KEEP - 1).limit(1)
    old = select(Event.id).where(same, Event.at < cutoff.scalar_subquery()).with_for_update(skip_locked=True)
    s.execute(delete(Event).where(Event.id.in_(old)), execution_options={"synchronize_session": False})


def list_events(s: Session, service: str, since: datetime | None, limit: int) -> list[Event]:
    """The service's events, newest first (insertion order breaks ties of the same instant)."""
    q = select(Event).where(Event.service == service)
    if since is not None:
        q = q.where(Event.at >= since)
    return list(s.scalars(q.order_by(Event.at.desc(), Event.id.desc()).limit(limit)))


def known(s: Session, service: str) -> bool:
    """Whether the service exists or left a trail (a deleted service's events outlive it)."""
    if s.scalar(select(Service.id).where(Service.name == service)) is not None:
        return True
    return s.scalar(select(Event.id).where(Event.service == service).limit(1)) is not None
