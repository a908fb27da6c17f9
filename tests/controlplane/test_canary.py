"""Canary end to end, with real engine processes: a stable revision keeps serving beside the current
one, is launched from its own revision's spec, and drains when the canary block is removed; a canary
naming a revision the service does not have is rejected without touching the store."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psutil

from tests.controlplane.test_lifecycle import _service

STABLE = "spec.routing.canary.stableRevision"


def _canary(name: str, stable: int, *, replicas: int = 1, stable_replicas: int = 1, **spec: Any) -> dict:
    doc = _service(name, **spec)
    canary = {"stableRevision": stable, "stableReplicas": stable_replicas, "weight": 50}
    doc["spec"]["routing"] = {"canary": canary}
    doc["spec"]["replicas"] = replicas
    return doc


def _wait_revisions(p, name: str, revisions: list[int], timeout: float = 120) -> dict:
    """The service once it is Running with exactly one Running instance per entry of `revisions`."""
    deadline = time.monotonic() + timeout
    svc: dict = {}
    with p.client() as c:
        while time.monotonic() < deadline:
            svc = c.get(f"/api/v1/services/{name}").json()
            states = sorted((i["revision"], i["state"]) for i in svc["instances"])
            if svc["status"] == "Running" and states == [(r, "Running") for r in sorted(revisions)]:
                return svc
            time.sleep(0.25)
    raise AssertionError(f"{name} not Running on revisions {revisions} after {timeout} s: {svc}")


def _greeting(pid: int) -> str | None:
    return psutil.Process(pid).environ().get("GREETING")


def test_canary_keeps_the_stable_revision_until_removed(make_platform):
    p = make_platform()
    p.start("--no-default")
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service("cny")).status_code == 201
        first = _wait_revisions(p, "cny", [1])["instances"][0]
        # A changed spec rolls revision 2; the canary keeps revision 1's instance instead of draining it.
        r = c.put("/api/v1/services/cny", json=_canary("cny", 1, env={"GREETING": "hi"}))
        assert r.status_code == 200, r.text
        assert (r.json()["result"], r.json()["revision"]) == ("rolled out", 2)
        svc = _wait_revisions(p, "cny", [1, 2])
        by_rev = {i["revision"]: i for i in svc["instances"]}
        assert by_rev[1]["id"] == first["id"] and by_rev[1]["restarts"] == 0
        # The gateway splits traffic 50/50 between the revisions; X-Model-Version pins one.
        time.sleep(1.0)  # one refresh of the gateway's endpoint table
        body = {"model": "cny", "prompt": "Hi", "max_tokens": 1}
        served = Counter(
            c.post("/v1/completions", json=body).headers["x-tideserve-revision"] for _ in range(40)
        )
        assert served["1"] >= 8 and served["2"] >= 8, served  # P(fewer than 8 of 40) < 1e-5
        pinned = {c.post("/v1/completions", json=body, headers={"X-Model-Version": "v1"}).headers[
            "x-tideserve-revision"] for _ in range(5)}  # fmt: skip
        assert pinned == {"1"}
        # A second stable instance is a routing-only edit, launched from revision 1's spec (no GREETING).
        r = c.put("/api/v1/services/cny", json=_canary("cny", 1, stable_replicas=2, env={"GREETING": "hi"}))
        assert (r.json()["result"], r.json()["revision"]) == ("updated", 2)
        svc = _wait_revisions(p, "cny", [1, 1, 2])
        envs = sorted((i["revision"], _greeting(i["pid"]) or "") for i in svc["instances"])
        assert envs == [(1, ""), (1, ""), (2, "hi")]
        current = by_rev[2]["id"]
        # Removing the block promotes revision 2: the stable instances drain, revision 2's stays.
        r = c.put("/api/v1/services/cny", json=_service("cny", env={"GREETING": "hi"}))
        assert (r.json()["result"], r.json()["revision"]) == ("updated", 2)
        svc = _wait_revisions(p, "cny", [2])
        assert [i["id"] for i in svc["instances"]] == [current]


def test_canary_on_a_missing_revision_is_422_and_changes_nothing(shared_platform):
    p = shared_platform
    with p.client() as c:
        # Replicas 0: a service with a revision history but no engine to wait for.
        r = c.post("/api/v1/services", json=_canary("nocny", 1, replicas=0))
        assert r.status_code == 422, r.text
        assert "create the service first" in r.json()["error"]["message"]
        assert [d["loc"] for d in r.json()["error"]["details"]] == [STABLE]
        assert c.get("/api/v1/services/nocny").status_code == 404

        plain = _service("nocny", replicas=0)
        assert c.post("/api/v1/services", json=plain).status_code == 201
        before = c.get("/api/v1/services/nocny").json()
        for body, says in [
            (_canary("nocny", 7, replicas=0, env={"GREETING": "hi"}), "no revision 7"),
            (_canary("nocny", 2, replicas=0, env={"GREETING": "hi"}), "the one this apply creates"),
            (_canary("nocny", 1, replicas=0), "already the current revision"),
        ]:
            r = c.put("/api/v1/services/nocny", json=body)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["message"].startswith(f"{STABLE}: ") and says in err["message"], err
            assert [d["loc"] for d in err["details"]] == [STABLE]
        after = c.get("/api/v1/services/nocny").json()
        assert (after["revision"], after["spec"], after["updatedAt"]) == (
            before["revision"],
            before["spec"],
            before["updatedAt"],
        )
        assert c.delete("/api/v1/services/nocny").status_code == 202
