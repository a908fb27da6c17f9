"""The audit trail end to end, with real engine processes: a service's life (create, crash, restart,
control-plane crash, scale, delete) reads back from the API and the CLI as events, newest first."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
import yaml

from tests.controlplane.test_lifecycle import _service
from tideserve.cli.main import since_time

Event = dict[str, Any]


def _events(c, name: str, **params: Any) -> list[Event]:
    r = c.get(f"/api/v1/services/{name}/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _wait_events(c, name: str, done: Callable[[list[Event]], bool], timeout: float = 120) -> list[Event]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = _events(c, name, limit=1000)
        if done(items):
            return items
        time.sleep(0.25)
    raise AssertionError(f"events of {name} never got there: {json.dumps(items, indent=1)}")


def _at(e: Event) -> datetime:
    return datetime.fromisoformat(e["at"])


def _reasons(items: list[Event]) -> list[str]:
    return [e["reason"] for e in items]


def _has(reason: str, n: int = 1) -> Callable[[list[Event]], bool]:
    return lambda items: _reasons(items).count(reason) >= n


def test_a_services_life_reads_back_as_events(make_platform):
    p = make_platform()
    p.start("--no-default")
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service("audit")).status_code == 201
        first = p.wait_service("audit")["instances"][0]

        # An engine crash: the failure names the signal, then the instance restarts in place.
        os.kill(first["pid"], signal.SIGKILL)
        _wait_events(
            c, "audit", lambda items: _has("InstanceReady", 2)(items) and _has("InstanceRestarted")(items)
        )

        # A rolling restart: a new instance on revision 2, the old one drained and stopped.
        assert c.post("/api/v1/services/audit/restart").json()["revision"] == 2
        _wait_events(c, "audit", _has("RolledOut"))

        # A control-plane crash re-adopts the running instance: nothing new is started.
        launches = _reasons(_events(c, "audit", limit=1000))
        p.crash()
    p.start("--no-default")
    p.wait_service("audit")
    time.sleep(2.5)  # a few reconcile passes of the new control plane
    with p.client() as c:
        after = _reasons(_events(c, "audit", limit=1000))
        for reason in ("InstanceStarted", "InstanceRestarted"):
            assert after.count(reason) == launches.count(reason), (reason, after)

        out = p.cli("services", "scale", "audit", "0")
        assert "scaled to 0" in out.stdout
        items = _wait_events(c, "audit", _has("InstanceStopped", 2))

        # The whole story, newest first.
        reasons = _reasons(items)
        assert reasons[-1] == "Created"
        times = [_at(e) for e in items]
        assert times == sorted(times, reverse=True)
        for reason in (
            "Created",
            "InstanceStarted",
            "InstanceReady",
            "StatusChanged",
            "InstanceFailed",
            "InstanceRestarted",
            "Restarted",
            "RolledOut",
            "InstanceDraining",
            "InstanceStopped",
            "Scaled",
        ):
            assert reason in reasons, (reason, reasons)
        assert reasons.count("InstanceStarted") == 2  # the first instance and revision 2's
        by = {e["reason"]: e for e in items}  # the oldest of each reason (items are newest first)
        failed = by["InstanceFailed"]
        assert failed["kind"] == "instance" and failed["instance"] == first["id"]
        assert failed["details"]["exitCode"] == -signal.SIGKILL and failed["details"]["signal"] == "SIGKILL"
        assert "exited with code -9" in failed["message"]
        restarted = by["InstanceRestarted"]
        assert restarted["instance"] == first["id"] and restarted["details"]["restarts"] == 1
        assert by["InstanceStarted"]["details"]["pid"] == first["pid"]
        assert by["Restarted"]["details"] == {"revision": 2} and by["RolledOut"]["details"] == {"revision": 2}
        assert "replaced by revision 2" in by["InstanceDraining"]["message"]
        assert by["Scaled"]["details"] == {"from": 1, "to": 0} and "1 → 0" in by["Scaled"]["message"]
        newest_drain = next(e for e in items if e["reason"] == "InstanceDraining")
        assert "scaled down" in newest_drain["message"]
        assert any(
            e["message"].startswith("Pending → Running") for e in items if e["reason"] == "StatusChanged"
        )
        assert all(e["kind"] == "service" and e["instance"] is None for e in items if e["reason"] == "Scaled")

        # limit and since
        assert _events(c, "audit", limit=2) == items[:2]
        recent = _events(c, "audit", since=items[2]["at"])
        assert len(recent) >= 3 and all(_at(e) >= _at(items[2]) for e in recent)
        assert _events(c, "audit", since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []

        # Errors in the shape of every other endpoint.
        r = c.get("/api/v1/services/nope/events")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == c.get("/api/v1/services/nope").json()["error"]["code"]
        assert "service 'nope' not found" in r.json()["error"]["message"]
        for params, field in (
            ({"since": "yesterday"}, "since"),
            ({"since": "2030-01-31T12:00:00"}, "since"),  # no zone: ambiguous
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
        ):
            r = c.get("/api/v1/services/audit/events", params=params)
            assert r.status_code == 422, (params, r.text)
            err = r.json()["error"]
            assert err["code"] == "validation_error" and err["message"].startswith(f"{field}:")
            assert err["details"][0]["loc"] == field

        # The CLI.
        listed = json.loads(p.cli("services", "events", "audit", "-o", "json").stdout)
        assert _reasons(listed) == reasons[: len(listed)] and len(listed) == min(100, len(reasons))
        table = p.cli("services", "events", "audit").stdout
        assert "REASON" in table and "InstanceFailed" in table and first["id"] in table
        assert len(json.loads(p.cli("services", "events", "audit", "--limit", "2", "-o", "json").stdout)) == 2
        assert "Created" in _reasons(
            yaml.safe_load(p.cli("services", "events", "audit", "--since", "1h", "-o", "yaml").stdout)
        )
        future = p.cli("services", "events", "audit", "--since", "2099-01-01T00:00:00Z", "-o", "json")
        assert json.loads(future.stdout) == []
        out = p.cli("services", "events", "audit", "--since", "soon", check=False)
        assert out.returncode == 1 and "--since 'soon'" in out.stderr
        out = p.cli("services", "events", "nope", check=False)
        assert out.returncode == 1 and "not found" in out.stderr

        # A deleted service's trail stays readable and says how it went.
        assert c.delete("/api/v1/services/audit").status_code == 202
        gone = _wait_events(c, "audit", _has("Deleted"))
        assert c.get("/api/v1/services/audit").status_code == 404
        assert _reasons(gone)[:2] == ["Deleted", "Deleting"]


def test_since_accepts_a_time_ago_or_an_iso_time():
    ago = datetime.fromisoformat(since_time("1h"))
    assert abs(datetime.now(UTC) - timedelta(hours=1) - ago) < timedelta(seconds=5)
    assert datetime.fromisoformat(since_time("90s")) > ago
    assert since_time("2030-01-31T12:00:00Z") == "2030-01-31T12:00:00+00:00"
    local = datetime.fromisoformat(since_time("2030-01-31 12:00"))
    assert local.tzinfo is not None and local.replace(tzinfo=None) == datetime(2030, 1, 31, 12)
    for bad in ("soon", "1w", "-1h", "99999999d"):
        with pytest.raises(typer.Exit):
            since_time(bad)
