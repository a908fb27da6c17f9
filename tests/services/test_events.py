"""The audit trail's parts: recording and listing on a real (SQLite) store, the trim that bounds it,
which events an update records, and the words the controller uses for drains and exits."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tideserve.services import events
from tideserve.services.controller import _exit_details
from tideserve.services.manager import _record_update
from tideserve.services.rollout import Desired, drain_cause
from tideserve.store.db import Store, migrate
from tideserve.store.models import Event, Service


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'events.db'}")
    migrate(st.engine)
    yield st
    st.close()


def _count(s, service: str | None) -> int:
    same = Event.service.is_(None) if service is None else Event.service == service
    return s.scalar(select(func.count()).select_from(Event).where(same))


def test_listing_is_newest_first_filtered_by_time_and_limited(store: Store) -> None:
    with store.session() as s:
        for i in range(5):
            events.record(s, service="chat", reason="Scaled", message=f"m{i}", details={"i": i})
        events.record(s, service="other", reason="Created", message="not chat's")
    with store.session() as s:
        rows = events.list_events(s, "chat", None, 100)
        assert [e.message for e in rows] == ["m4", "m3", "m2", "m1", "m0"]
        assert rows[0].details == {"i": 4} and rows[0].kind == "service" and rows[0].instance is None
        assert rows[0].at.tzinfo is not None
        assert [e.message for e in events.list_events(s, "chat", None, 2)] == ["m4", "m3"]
        assert [e.message for e in events.list_events(s, "chat", rows[1].at, 100)] == ["m4", "m3"]
        assert events.list_events(s, "chat", datetime.now(UTC) + timedelta(hours=1), 100) == []


def test_an_event_lands_with_its_transaction_or_not_at_all(store: Store) -> None:
    with pytest.raises(RuntimeError), store.session() as s:
        events.record(s, service="chat", reason="Created", message="rolled back")
        raise RuntimeError("the state change failed")
    with store.session() as s:
        assert _count(s, "chat") == 0
        assert not events.known(s, "chat")


def test_known_is_a_service_or_a_trail(store: Store) -> None:
    with store.session() as s:
        s.add(Service(name="live", spec={}))
        events.record(s, service="gone", reason="Deleted", message="every instance stopped")
    with store.session() as s:
        assert events.known(s, "live") and events.known(s, "gone") and not events.known(s, "never")


def test_each_service_keeps_only_its_newest_events(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEP", 4)
    with store.session() as s:
        events.record(s, service="quiet", reason="Created", message="q")
        for i in range(10):
            events.record(s, service="busy", reason="InstanceFailed", message=f"b{i}")
            events.record(s, service=None, kind="instance", reason="OrphanStopped", message=f"n{i}")
    with store.session() as s:
        assert [e.message for e in events.list_events(s, "busy", None, 100)] == ["b9", "b8", "b7", "b6"]
        assert _count(s, None) == 4
        assert _count(s, "quiet") == 1  # another service's trim leaves it alone


def test_the_real_bound_is_a_thousand(store: Store) -> None:
    assert events.KEEP == 1000
    with store.session() as s:
        for i in range(events.KEEP + 3):
            events.record(s, service="chat", reason="Updated", message=str(i))
    with store.session() as s:
        assert _count(s, "chat") == events.KEEP
        assert events.list_events(s, "chat", None, events.KEEP)[-1].message == "3"


def _doc(replicas: int = 1, description: str = "") -> dict:
    return {
        "metadata": {"name": "chat", "description": description},
        "spec": {"model": "m", "replicas": replicas},
    }


@pytest.mark.parametrize(
    ("new", "rolls", "restart", "expected"),
    [
        (_doc(replicas=3), False, False, [("Scaled", "replicas 1 → 3")]),
        (_doc(description="x"), False, False, [("Updated", "spec changed in place (revision 2)")]),
        (
            _doc(replicas=0, description="x"),
            False,
            False,
            [("Scaled", "replicas 1 → 0"), ("Updated", "spec changed in place (revision 2)")],
        ),
        (_doc(), True, False, [("Updated", "spec changed: rolling out revision 3")]),
        (
            _doc(replicas=2),
            True,
            False,
            [("Scaled", "replicas 1 → 2"), ("Updated", "rolling out revision 3")],
        ),
        (_doc(), True, True, [("Restarted", "restart requested: revision 3 replaces every instance")]),
    ],
)
def test_an_update_records_what_changed(store: Store, new, rolls, restart, expected) -> None:
    with store.session() as s:
        svc = Service(name="chat", spec=_doc(), revision=2)
        _record_update(s, svc, copy.deepcopy(new), rolls, restart)
    with store.session() as s:
        got = [(e.reason, e.message) for e in reversed(events.list_events(s, "chat", None, 10))]
    assert [r for r, _ in got] == [r for r, _ in expected]
    for (_, message), (_, part) in zip(got, expected, strict=True):
        assert part in message


@pytest.mark.parametrize(
    ("desired", "revision", "cause"),
    [
        (Desired(3, 1, deleting=True), 3, "the service is being deleted"),
        (Desired(3, 1), 3, "scaled down"),
        (Desired(3, 1, keep_revision=1, keep_replicas=1), 1, "scaled down"),
        (Desired(3, 1), 2, "replaced by revision 3"),
        (Desired(3, 1, keep_revision=1, keep_replicas=1), 2, "replaced by revision 3"),
    ],
)
def test_drain_cause(desired: Desired, revision: int, cause: str) -> None:
    assert drain_cause(desired, revision) == cause


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (0, {"exitCode": 0}),
        (1, {"exitCode": 1}),
        (-9, {"exitCode": -9, "signal": "SIGKILL"}),
        (-15, {"exitCode": -15, "signal": "SIGTERM"}),
        (-1, {"exitCode": -1}),  # also "not our child": no signal is claimed
        (-200, {"exitCode": -200}),
    ],
)
def test_exit_details(code: int, details: dict) -> None:
    assert _exit_details(code) == details
