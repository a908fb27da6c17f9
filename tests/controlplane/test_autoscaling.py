"""The autoscaler on a real platform with real engine processes: a burst of requests queues in the
engine and scales the service out; when it ends the service scales in and, idle, to zero; the next
request starts an instance and is served from zero. Every step is an event with its reason."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.controlplane.test_events import _events, _wait_events
from tests.controlplane.test_lifecycle import _service

NAME = "elastic"
POLICY = {
    "minReplicas": 0,
    "maxReplicas": 2,
    "targets": [{"metric": "waitingPerReplica", "value": 1}],
    "idleToZeroSeconds": 6,
    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 3}},
}


def _autoscaled(items: list[dict[str, Any]]) -> list[str]:
    """The autoscaler's messages, oldest first."""
    return [e["message"] for e in reversed(items) if e["reason"] == "Autoscaled"]


def _chat(p, results: list[int], max_tokens: int = 128) -> None:
    with p.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": NAME,
                "messages": [{"role": "user", "content": "Count to fifty."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
            timeout=120,
        )
        results.append(r.status_code)


def _replicas(c: httpx.Client) -> dict[str, int]:
    return c.get(f"/api/v1/services/{NAME}").json()["replicas"]


def test_burst_scales_out_then_in_then_to_zero_and_back(make_platform):
    p = make_platform()
    p.start("--no-default", "--metrics-interval", "1")
    # One sequence at a time per engine: of a burst of 8 (about 10 s of work for one engine), the rest
    # wait in the engine or at the gateway, far above the target of 1 per replica.
    spec = _service(NAME, replicas=1, autoscaling=POLICY, parameters={"maxModelLen": 2048, "maxBatchSize": 1})
    with p.client() as c:
        r = c.post("/api/v1/services", json=spec)
        assert r.status_code == 201, r.text
        assert r.json()["replicas"] == {"ready": 0, "desired": 1, "min": 0, "max": 2}
        p.wait_service(NAME)

        results: list[int] = []
        burst = [threading.Thread(target=_chat, args=(p, results)) for _ in range(8)]
        for t in burst:
            t.start()
        items = _wait_events(c, NAME, lambda items: any(m.startswith("1→2") for m in _autoscaled(items)))
        assert "waiting/replica" in _autoscaled(items)[0], _autoscaled(items)
        svc = p.wait_service(NAME)  # the second instance serves
        assert len(svc["instances"]) == 2
        for t in burst:
            t.join()
        assert results == [200] * 8  # nothing failed while scaling

        # Idle: to zero after 6 s without requests (in one step, or through 1 after the 3 s window).
        _wait_events(c, NAME, lambda items: any("→0: idle" in m for m in _autoscaled(items)), timeout=90)
        deadline = time.monotonic() + 60
        while c.get(f"/api/v1/services/{NAME}/instances").json() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert c.get(f"/api/v1/services/{NAME}/instances").json() == []
        assert _replicas(c)["desired"] == 0

        # From zero: the request waits at the gateway while an instance starts, then is served.
        started = time.monotonic()
        after: list[int] = []
        _chat(p, after, max_tokens=8)
        assert after == [200]
        from_zero = time.monotonic() - started
        messages = _autoscaled(_events(c, NAME, limit=1000))
        assert any(m.startswith("0→1") and "waiting at the gateway" in m for m in messages), messages
        assert from_zero < 30  # within the gateway's queue timeout

    # Every decision shows in the CLI's audit trail, and the count on /metrics.
    assert "0→1" in p.cli("services", "events", NAME).stdout
    exported = httpx.get(p.url + "/metrics").text
    assert f'tideserve_service_desired_replicas{{service="{NAME}"}} 1.0' in exported
