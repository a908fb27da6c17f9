"""Elasticity and chaos under steady load, on a real platform with real engine processes: a rolling
update and a scale-down drop no request; a SIGKILLed instance fails only what it was generating (each
with an error that says so) and comes back; a SIGKILLed control plane loses no state, re-adopts its
instances and serves again (and a separate `tideserve gateway` replica keeps serving meanwhile); a cron
window holds a replica floor and lets go of it when it closes.

Load is a closed loop: a few client threads, each sending its next short request when the last one
ended. Every request is recorded with when it was sent and ended, what came back and which instance
served it (the gateway's X-Tideserve-Instance header), and the tests assert on those records, on the
service's events and on the engines' own request logs."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controlplane.conftest import Platform, _cleanup, engine_processes, free_port
from tests.controlplane.test_events import _events, _wait_events
from tests.controlplane.test_lifecycle import _service
from tideserve.gateway import proxy
from tideserve.gateway.balancing import RequestInfo
from tideserve.gateway.endpoints import Endpoint, EndpointTable, RouteConfig, ServiceRoute
from tideserve.gateway.keys import KeyCache
from tideserve.gateway.openai_api import parse_request
from tideserve.gateway.proxy import Gateway, _Plan

MAX_BATCH = 4
# Spread over every instance by in-flight count: prefix-aware routing would keep these short, alike
# prompts on one instance, and a test about "the other instance" needs both to take traffic.
SPREAD = {"policy": "least_requests"}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """SQLite: these tests are about processes and traffic, which do not depend on the store (the
    control-plane crash test, where the store is what survives, runs on both through make_platform)."""
    p = Platform(tmp_path / "home", free_port(), None)
    yield p
    _cleanup(p)


# --- load -------------------------------------------------------------------------------------------


@dataclass
class Result:
    sent: float  # time.time()
    ended: float
    stream: bool
    status: int  # 0: no HTTP response at all (connection refused or broken)
    instance: str  # the X-Tideserve-Instance header ("" when none came)
    complete: bool  # 200 and a whole answer: one that finished, or an event stream ending with [DONE]
    error: str  # what the client got instead of a whole answer

    def in_flight_at(self, t: float) -> bool:
        return self.sent <= t < self.ended


class Load:
    """`clients` threads in a closed loop against `model`; every `stream_every`-th request streams.
    With `retry_after`, a connection error (no gateway listening) is recorded and retried after that
    many seconds, as a client with a short backoff would."""

    def __init__(
        self,
        url: str,
        key: str,
        model: str,
        clients: int = 3,
        stream_every: int = 0,
        max_tokens: int = 12,
        retry_after: float = 0.2,
    ) -> None:
        self.url, self.key, self.model = url, key, model
        self.clients, self.stream_every, self.max_tokens = clients, stream_every, max_tokens
        self.retry_after = retry_after
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._seq = itertools.count()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Result]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return sorted(self.results, key=lambda r: r.sent)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        """Until n more requests completed than now (the load is really flowing)."""
        goal = sum(r.complete for r in self.results) + n
        deadline = time.monotonic() + timeout
        while sum(r.complete for r in self.results) < goal:
            assert time.monotonic() < deadline, f"load stalled: {self.results[-5:]}"
            time.sleep(0.05)

    def _loop(self) -> None:
        with httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(30, connect=2),
            trust_env=False,
        ) as c:
            while not self._stop.is_set():
                n = next(self._seq)
                stream = self.stream_every > 0 and n % self.stream_every == 0
                result = self._one(c, n, stream)
                self.results.append(result)
                if result.status == 0:
                    self._stop.wait(self.retry_after)

    def _one(self, c: httpx.Client, n: int, stream: bool) -> Result:
        body = {
            "model": self.model,
            # Distinct prompts: no prefix cache turns a request into a no-op.
            "messages": [{"role": "user", "content": f"Name a colour, then count from {n}."}],
            "max_tokens": self.max_tokens,
            "stream": stream,
        }
        sent = time.time()
        status, instance, complete, error = 0, "", False, ""
        try:
            if stream:
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    status, instance = r.status_code, r.headers.get("x-tideserve-instance", "")
                    lines = [line for line in r.iter_lines() if line]
                errors = [x for x in lines if x.startswith("data: {") and '"error"' in x[:20]]
                complete = status == 200 and lines[-1:] == ["data: [DONE]"] and not errors
                if not complete:
                    error = "\n".join(errors or lines[-3:])
            else:
                r = c.post("/v1/chat/completions", json=body)
                status, instance = r.status_code, r.headers.get("x-tideserve-instance", "")
                # A whole answer may be empty (the model can end at once): the finish reason says it ended.
                complete = status == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
                error = "" if complete else r.text
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        return Result(sent, time.time(), stream, status, instance, complete, error)


def _failed(results: list[Result]) -> list[Result]:
    return [r for r in results if not r.complete]


# --- helpers ----------------------------------------------------------------------------------------


def _at(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(e["at"]).timestamp()


def _engine_arrivals(home: Path, service: str, instance: str) -> list[float]:
    """When each request reached an engine, from its own request log (one JSON line per request,
    written at the end with its duration)."""
    arrivals = []
    for line in (home / "logs" / service / f"{instance}.log").read_text().splitlines():
        if line.startswith('{"ts"') and '"request_id"' in line:
            rec = json.loads(line)
            arrivals.append(datetime.fromisoformat(rec["ts"]).timestamp() - rec["e2e_s"])
    return arrivals


def _gateway_lines(home: Path, service: str) -> list[dict[str, Any]]:
    time.sleep(0.5)  # the access log is written in batches, at most 0.2 s late
    lines = []
    for path in sorted((home / "logs").glob("gateway*.log")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("service") == service:
                lines.append(rec)
    return lines


def _wait(c: httpx.Client, name: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    svc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        svc = c.get(f"/api/v1/services/{name}").json()
        if done(svc):
            return svc
        time.sleep(0.2)
    raise AssertionError(f"service {name} never got there: {svc}")


def _running(n: int, revision: int | None = None) -> Any:
    def done(svc: dict[str, Any]) -> bool:
        insts = svc["instances"]
        return (
            len(insts) == n
            and all(i["state"] == "Running" for i in insts)
            and (revision is None or all(i["revision"] == revision for i in insts))
        )

    return done


def _drains(c: httpx.Client, name: str) -> dict[str, float]:
    """When each instance of the service began draining, by instance id."""
    return {e["instance"]: _at(e) for e in _events(c, name, limit=1000) if e["reason"] == "InstanceDraining"}


# From the gateway choosing an instance to the engine's handler starting: a request the gateway sent
# just before the drain began may reach the engine a moment after it.
TRANSIT_S = 0.05


def _assert_no_request_after_drain(p: Platform, name: str, drains: dict[str, float]) -> None:
    """No request that came to the gateway after an instance began draining was sent to it, and the
    engine's own log agrees (within the transit time). Without Gateway.unroute both fail: the table
    learns of a drain only at its next read of the store, up to a second later."""
    for line in _gateway_lines(p.home, name):
        if line.get("instance") in drains:
            came = datetime.fromisoformat(line["ts"]).timestamp() - line["e2e_s"]
            assert came < drains[line["instance"]], (line, drains)
    for instance, at in drains.items():
        late = [t - at for t in _engine_arrivals(p.home, name, instance) if t >= at + TRANSIT_S]
        assert not late, f"{instance} got {len(late)} request(s) after it began draining: {late}"


# --- 1. rolling update ------------------------------------------------------------------------------


def test_rolling_update_under_steady_load_fails_no_request(platform):
    """test_lifecycle proves one sequential client is answered during a 1-replica rollout; this is
    concurrent clients, streaming and not, through a 2-replica rollout (two surge-and-drain steps)."""
    p = platform
    p.start("--no-default")
    name = "roll-load"
    spec = {"parameters": {"maxModelLen": 2048, "maxBatchSize": MAX_BATCH}, "routing": SPREAD}
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service(name, replicas=2, **spec)).status_code == 201
        old = {i["id"] for i in _wait(c, name, _running(2))["instances"]}
        with Load(p.url, p.key, name, clients=3, stream_every=3) as load:
            load.wait_for(6)
            r = c.put(f"/api/v1/services/{name}", json=_service(name, replicas=2, env={"ROLL": "2"}, **spec))
            assert r.status_code == 200 and r.json()["result"] == "rolled out", r.text
            rolled_at = time.time()
            svc = _wait(c, name, _running(2, revision=2), timeout=60)
            items = _wait_events(c, name, lambda items: any(e["reason"] == "RolledOut" for e in items), 30)
            load.wait_for(6)
        results = load.stop()
        new = {i["id"] for i in svc["instances"]}
        assert new.isdisjoint(old)
        assert not _failed(results), _failed(results)
        # Both revisions served under this load, and the rollout is recorded as finished.
        assert {r.instance for r in results} >= old | new, {r.instance for r in results}
        rolled = next(e for e in items if e["reason"] == "RolledOut")
        assert rolled["details"] == {"revision": 2}
        drains = _drains(c, name)
        assert set(drains) == old
        _wait_events(
            c, name, lambda items: sum(e["reason"] == "InstanceStopped" for e in items) >= 2, timeout=30
        )
    _assert_no_request_after_drain(p, name, drains)
    took = _at(rolled) - rolled_at
    print(f"rollout of 2 replicas under load: {len(results)} requests, 0 failed, {took:.1f} s")


# --- 2. scale-down ----------------------------------------------------------------------------------


def test_scale_down_under_steady_load_drains_without_failing_a_request(platform):
    p = platform
    p.start("--no-default")
    name = "shrink"
    spec = {"parameters": {"maxModelLen": 2048, "maxBatchSize": MAX_BATCH}, "routing": SPREAD}
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service(name, replicas=2, **spec)).status_code == 201
        both = {i["id"] for i in _wait(c, name, _running(2))["instances"]}
        with Load(p.url, p.key, name, clients=3, stream_every=3) as load:
            load.wait_for(9)
            r = c.put(f"/api/v1/services/{name}", json=_service(name, replicas=1, **spec))
            assert r.status_code == 200 and r.json()["result"] == "updated", r.text
            svc = _wait(c, name, _running(1), timeout=30)
            stopped = _wait_events(
                c, name, lambda items: any(e["reason"] == "InstanceStopped" for e in items), timeout=30
            )
            load.wait_for(6)
        results = load.stop()
        (kept,) = {i["id"] for i in svc["instances"]}
        (drained,) = both - {kept}
        drains = _drains(c, name)
    assert set(drains) == {drained}
    assert not _failed(results), _failed(results)
    stop = next(e for e in stopped if e["reason"] == "InstanceStopped")
    assert stop["instance"] == drained and stop["message"] == "stopped after draining"
    # The drained instance took its share until the drain, then nothing more.
    before = [r for r in results if r.instance == drained]
    assert before and all(r.sent < drains[drained] for r in before)
    in_drain = [r for r in before if r.ended > drains[drained]]
    _assert_no_request_after_drain(p, name, drains)
    print(
        f"scale-down under load: {len(results)} requests, 0 failed; {len(in_drain)} finished on the "
        f"draining instance; it stopped {_at(stop) - drains[drained]:.1f} s after draining began"
    )


# --- 3. an instance SIGKILLed -----------------------------------------------------------------------


def test_sigkilled_instance_fails_only_its_in_flight_requests_and_comes_back(platform):
    p = platform
    p.start("--no-default")
    name = "chaos"
    spec = {"parameters": {"maxModelLen": 2048, "maxBatchSize": MAX_BATCH}, "routing": SPREAD}
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service(name, replicas=2, **spec)).status_code == 201
        victim = _wait(c, name, _running(2))["instances"][0]
        with Load(p.url, p.key, name, clients=4, stream_every=2, max_tokens=16) as load:
            load.wait_for(12)
            killed_at = time.time()
            os.kill(victim["pid"], signal.SIGKILL)
            items = _wait_events(
                c,
                name,
                lambda items: any(e["reason"] == "InstanceReady" and _at(e) > killed_at for e in items),
                timeout=30,
            )
            ready = next(e for e in items if e["reason"] == "InstanceReady")
            # Until the restarted instance has served a few requests of the same load again.
            deadline = time.monotonic() + 30
            while sum(r.instance == victim["id"] and r.sent > _at(ready) for r in load.results) < 3:
                assert time.monotonic() < deadline, "the restarted instance gets no traffic"
                time.sleep(0.1)
        results = load.stop()
        after = c.get(f"/api/v1/services/{name}").json()
        items = _events(c, name, limit=1000)
    back = next(i for i in after["instances"] if i["id"] == victim["id"])
    assert back["pid"] != victim["pid"] and back["restarts"] == 1 and back["state"] == "Running"

    # Only requests in flight at the kill failed, no more than one engine batch, each saying why.
    failed = _failed(results)
    in_flight = [r for r in results if r.in_flight_at(killed_at)]
    assert in_flight, "no request was in flight at the kill: the load did not run"
    assert all(r.in_flight_at(killed_at) for r in failed), failed
    assert len(failed) <= min(len(in_flight), MAX_BATCH), failed
    for r in failed:
        _assert_clear_failure(r, victim["id"])
    # Requests sent after the kill all got an answer: the gateway retried the dead instance's refusals.
    assert all(r.complete for r in results if r.sent > killed_at), [r for r in failed if r.sent > killed_at]

    # The controller saw the crash, waited out its backoff, restarted the instance in place.
    # (An InstanceUnready may come first: a /health probe can fail before the exit is seen.)
    mine = [
        e
        for e in reversed(items)
        if e["instance"] == victim["id"] and _at(e) > killed_at and e["reason"] != "InstanceUnready"
    ]
    reasons = [e["reason"] for e in mine]
    assert reasons[:3] == ["InstanceFailed", "InstanceRestarted", "InstanceReady"], reasons
    failed_event, restarted, ready = mine[:3]
    assert failed_event["details"]["signal"] == "SIGKILL" and failed_event["details"]["retryInSeconds"] == 2
    assert _at(restarted) - _at(failed_event) >= 2 - 0.05  # rollout.backoff(1)
    retried = [x for x in _gateway_lines(p.home, name) if x.get("attempts", 1) > 1]
    print(
        f"SIGKILL under load: {len(results)} requests, {len(in_flight)} in flight at the kill, "
        f"{len(failed)} failed ({sum(r.stream for r in failed)} streams), {len(retried)} retried "
        f"elsewhere; crash seen after {_at(failed_event) - killed_at:.2f} s, restarted after "
        f"{_at(restarted) - _at(failed_event):.2f} s of backoff, ready {_at(ready) - killed_at:.1f} s "
        "after the kill"
    )


def _assert_clear_failure(r: Result, instance: str) -> None:
    """An OpenAI error body, or for a stream already under way an SSE error event, naming the instance
    that broke off: never a bare reset or a stream that just stops."""
    if r.stream and r.status == 200:
        event = json.loads(r.error.splitlines()[0].removeprefix("data: "))
    else:
        assert r.status in (502, 504), r
        event = json.loads(r.error)
    assert event["error"]["code"] in ("upstream_failed", "upstream_timeout"), r
    assert instance in event["error"]["message"], r


@contextmanager
def _gateway_replica(p: Platform) -> Iterator[str]:
    """A `tideserve gateway` replica reading the platform's store, as production runs them."""
    port = free_port()
    with open(p.home / "replica.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tideserve", "gateway", "--port", str(port), "--home", str(p.home)],
            env=p.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (p.home / "replica.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, (p.home / "replica.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_stream_cut_off_by_a_dying_instance_ends_with_an_error_event(platform):
    """Through `up`'s gateway (ASGI) and a gateway replica (its own server): the stream already sent
    its head and some tokens, so it cannot become an error status; it ends with an OpenAI error event
    naming the instance, then [DONE] (as engines end theirs), instead of just stopping."""
    p = platform
    p.start("--no-default")
    name = "cut"
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service(name)).status_code == 201
        inst = _wait(c, name, _running(1))["instances"][0]
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with (
        _gateway_replica(p) as replica,
        p.client() as via_up,
        httpx.Client(
            base_url=replica, headers=dict(via_up.headers), timeout=60, trust_env=False
        ) as via_replica,
        via_up.stream("POST", "/v1/chat/completions", json=body) as up_stream,
        via_replica.stream("POST", "/v1/chat/completions", json=body) as replica_stream,
    ):
        streams = [up_stream.iter_lines(), replica_stream.iter_lines()]
        heads = [[next(lines) for _ in range(6)] for lines in streams]  # a few tokens each
        os.kill(inst["pid"], signal.SIGKILL)
        tails = [[line for line in lines if line] for lines in streams]
    for head, tail in zip(heads, tails, strict=True):
        assert any('"content"' in line for line in head)
        assert tail[-1] == "data: [DONE]", tail[-3:]
        error = json.loads(tail[-2].removeprefix("data: "))["error"]
        assert error["code"] == "upstream_failed" and error["type"] == "server_error", error
        assert f"instance {inst['id']} broke off mid-response" in error["message"], error


def test_a_draining_instance_is_skipped_at_once_and_the_skip_expires():
    """Gateway.unroute, which the reconciler calls as it drains: no wait for the table's next read."""
    endpoints = [Endpoint("a", "http://127.0.0.1:1", 1), Endpoint("b", "http://127.0.0.1:2", 1)]
    route = ServiceRoute("svc", model="m", config=RouteConfig(policy="round_robin"), endpoints=endpoints)
    gw = Gateway(EndpointTable(None, static={"svc": route}), KeyCache(None, {}))
    raw = json.dumps({"model": "svc", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = parse_request("chat", raw)
    plan = _Plan(route, req, raw, RequestInfo(req.prompt_text, None), 1, None, 1)

    def picks() -> set[str]:
        return {e.instance_id for _ in range(8) if (e := gw._pick(plan, set())) is not None}

    assert picks() == {"a", "b"}
    gw.unroute("a")
    assert picks() == {"b"}
    gw.unroute("b")
    assert picks() == set()  # requests wait in the queue for the table's next instance
    gw.unrouted = {i: t - proxy.UNROUTE_S for i, t in gw.unrouted.items()}  # that much later
    assert picks() == {"a", "b"}
    gw.unroute("c")  # expired skips are dropped as another one comes
    assert set(gw.unrouted) == {"c"}


# --- 4. the control plane SIGKILLed -----------------------------------------------------------------


def _state(c: httpx.Client, name: str) -> dict[str, Any]:
    """What must survive a control-plane crash, as the API shows it."""
    svc = c.get(f"/api/v1/services/{name}").json()
    return {
        "services": [(s["name"], s["revision"]) for s in c.get("/api/v1/services").json()],
        "spec": c.get(f"/api/v1/services/{name}/yaml").text,
        "instances": sorted((i["id"], i["pid"], i["revision"], i["restarts"]) for i in svc["instances"]),
        "keys": [(k["name"], k["scope"], k["prefix"]) for k in c.get("/api/v1/keys").json()],
    }


def test_control_plane_crash_under_load_loses_nothing_and_a_gateway_replica_keeps_serving(make_platform):
    """On both stores: the store is what carries everything across the crash. `up`'s own gateway dies
    with it (one process), so its clients see connection errors until it is back; a `tideserve
    gateway` replica reads routes and keys from the store and keeps serving through the outage."""
    p = make_platform()
    p.start("--no-default")
    name = "steady"
    spec = {"parameters": {"maxModelLen": 2048, "maxBatchSize": MAX_BATCH}, "routing": SPREAD}
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service(name, replicas=2, **spec)).status_code == 201
        _wait(c, name, _running(2))
        # A second revision, so there is a history to lose, and a key of a tenant.
        r = c.put(f"/api/v1/services/{name}", json=_service(name, replicas=2, env={"V": "2"}, **spec))
        assert r.json()["revision"] == 2
        _wait(c, name, lambda svc: _running(2, revision=2)(svc) and svc["status"] == "Running")
        tenant = c.post("/api/v1/keys", json={"name": "tenant", "services": [name]}).json()["key"]
        before = _state(c, name)
        launches = [e["reason"] for e in _events(c, name, limit=1000)]
    pids = {pid for _, pid, _, _ in before["instances"]}

    with (
        _gateway_replica(p) as replica,
        Load(p.url, tenant, name, clients=2, stream_every=2) as through_up,
        Load(replica, tenant, name, clients=2, stream_every=2) as through_replica,
    ):
        through_up.wait_for(6)
        through_replica.wait_for(6)
        crashed_at = time.time()
        p.crash()
        # Down: the instances run on, nothing new starts, nothing is stopped.
        assert {e.pid for e in engine_processes(p.home)} == pids
        through_replica.wait_for(10)
        time.sleep(max(0.0, crashed_at + 3 - time.time()))  # an outage of a few seconds at least
        assert {e.pid for e in engine_processes(p.home)} == pids
        restarted_at = time.time()
        p.start("--no-default")
        up_at = time.time()
        through_up.wait_for(6)
        time.sleep(2.5)  # a few reconcile passes of the new control plane
        via_up, via_replica = through_up.stop(), through_replica.stop()

    with p.client() as c:
        after = _state(c, name)
        assert after == before  # same services, revision, spec, keys; same instance ids and pids
        events = _events(c, name, limit=1000)
    # No orphan, no duplicate: the engine processes of this home are exactly the two adopted ones.
    assert {e.pid for e in engine_processes(p.home)} == pids
    for reason in ("InstanceStarted", "InstanceRestarted", "InstanceDraining"):
        assert [e["reason"] for e in events].count(reason) == launches.count(reason), reason

    # The replica served through the whole outage.
    outage = [r for r in via_replica if crashed_at < r.sent < up_at]
    assert outage and not _failed(via_replica), _failed(via_replica)
    # Through `up`: connection errors while it was down (and its requests in flight at the crash),
    # then every request answered.
    for r in _failed(via_up):
        assert r.in_flight_at(crashed_at) or (crashed_at <= r.sent < up_at), r
        assert r.status in (0, 200), r  # no response, or a stream cut when the process died
    assert all(r.complete for r in via_up if r.sent >= up_at)
    first = min(r.ended for r in via_up if r.complete and r.sent >= restarted_at)
    print(
        f"control-plane crash: down {restarted_at - crashed_at:.1f} s, `up` healthy "
        f"{up_at - restarted_at:.1f} s after its restart, first answer through it "
        f"{first - restarted_at:.1f} s after the restart; through up {len(_failed(via_up))} of "
        f"{len(via_up)} failed; through the replica 0 of {len(via_replica)} failed "
        f"({len(outage)} while up was down)"
    )


# --- 5. a cron window -------------------------------------------------------------------------------


def _cron(t: datetime) -> str:
    return f"{t.minute} {t.hour} * * *"


def test_a_cron_window_holds_a_floor_without_traffic_and_lets_go_when_it_closes(platform):
    p = platform
    p.start("--no-default")
    name = "peak"
    now = datetime.now(UTC)
    # Opened at the top of the last minute; closes at the first minute boundary at least 15 s away
    # (time for the second instance to start and be seen holding).
    closes = (now + timedelta(seconds=75)).replace(second=0, microsecond=0)
    if closes - now > timedelta(seconds=75):
        closes -= timedelta(minutes=1)
    window = {
        "start": _cron(now - timedelta(minutes=1)),
        "end": _cron(closes),
        "timezone": "UTC",
        "minReplicas": 2,
    }
    policy = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targets": [{"metric": "waitingPerReplica", "value": 4}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 2}},
        "schedules": [window],
    }
    with p.client() as c:
        r = c.post("/api/v1/services", json=_service(name, replicas=1, autoscaling=policy))
        assert r.status_code == 201, r.text
        held = _wait(c, name, _running(2), timeout=30)
        items = _wait_events(c, name, lambda items: any(e["reason"] == "Autoscaled" for e in items), 5)
        scaled = next(e for e in items if e["reason"] == "Autoscaled")
        assert scaled["message"] == f"1→2: schedule {window['start']} (UTC) keeps at least 2", scaled
        # No traffic at all, and still 2 until the window closes.
        while datetime.now(UTC) < closes - timedelta(seconds=1):
            svc = c.get(f"/api/v1/services/{name}").json()
            assert svc["replicas"]["desired"] == 2 and len(svc["instances"]) == 2, svc
            time.sleep(0.5)
        svc = _wait(c, name, _running(1), timeout=30)
        down = next(e for e in _events(c, name, limit=1000) if e["reason"] == "Autoscaled")
    assert down["message"].startswith("2→1"), down
    assert _at(down) >= closes.timestamp()
    assert svc["instances"][0]["id"] in {i["id"] for i in held["instances"]}
    assert svc["replicas"]["desired"] == 1
    print(
        f"cron window: held 2 for {closes.timestamp() - _at(scaled):.0f} s without traffic; 2→1 "
        f"{_at(down) - closes.timestamp():.1f} s after it closed ({down['message']})"
    )
