"""Elasticity under a tidal trace, on a real `tideserve up` with built-in engine replicas of the bundled
model: a ramp, a 10x burst, a trough long enough to scale to zero, and a request from zero. Not a
test: run it and read the report.

    .venv/bin/python bench/elastic.py [--scale 1.0] [--slo-ttft 2.0]

Requests are open-loop (Poisson arrivals at the trace's rate, so a slow platform does not slow the
load), streamed, max_tokens 48, sent only to 127.0.0.1. Reported: time from the burst's start to a new
replica serving its first request, TTFT p99 during the burst, failed requests, SLO attainment (share of
10 s windows whose TTFT p99 is within the SLO), and replica-seconds against static provisioning for the
peak (the most replicas the run needed, for the whole run). The trace is compressed to minutes, so the
policy's windows are too (scale-down 10 s, idle 20 s), which the report states.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

NAME = "tide"
# (seconds, requests/s): ramp, a 10x burst, back down, a trough to zero, then one request from zero.
TRACE = [(30, 0.1), (30, 0.2), (25, 2.0), (20, 0.2), (45, 0.0)]


def policy(min_replicas: int) -> dict[str, Any]:
    scale_to_zero = {"idleToZeroSeconds": 20} if min_replicas == 0 else {}  # only with a floor of 0
    return {
        "minReplicas": min_replicas,
        "maxReplicas": 2,
        "targets": [{"metric": "waitingPerReplica", "value": 1}],
        **scale_to_zero,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
    }


def service(autoscaling: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": NAME},
        "spec": {
            "model": "smollm2-135m-instruct",
            "replicas": 1,
            "resources": {"cpu": 1, "memory": "1Gi", "gpus": 0},
            "parameters": {"maxModelLen": 2048, "maxBatchSize": 2},
            "autoscaling": autoscaling,
        },
    }


PROMPT = "Write a short poem about the sea, in four lines."


@dataclass
class Result:
    sent_at: float
    status: int = 0
    ttft: float | None = None
    error: str = ""


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    replicas: list[tuple[float, int, int]] = field(default_factory=list)  # (t, desired, instances)
    wall0: float = 0.0  # time.time() at the trace's start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(c: httpx.AsyncClient, run: Run, t0: float) -> None:
    r = Result(time.monotonic() - t0)
    run.results.append(r)
    start = time.monotonic()
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 48,
        "stream": True,
    }
    try:
        async with c.stream("POST", "/v1/chat/completions", json=body, timeout=120) as resp:
            r.status = resp.status_code
            async for line in resp.aiter_lines():
                compact = line.replace(" ", "")
                if r.ttft is None and '"content":"' in compact and '"content":""' not in compact:
                    r.ttft = time.monotonic() - start
                if '"error"' in line:
                    r.error = line[:200]
    except httpx.HTTPError as e:
        r.error = repr(e)


async def load(c: httpx.AsyncClient, run: Run, scale: float, t0: float) -> None:
    rng = random.Random(7)
    tasks = []
    at = 0.0
    for duration, rps in TRACE:
        end = at + duration * scale
        while rps > 0:
            at += rng.expovariate(rps)
            if at >= end:
                break
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            tasks.append(asyncio.create_task(one_request(c, run, t0)))
        at = end
        await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
    tasks.append(asyncio.create_task(one_request(c, run, t0)))  # from zero
    await asyncio.gather(*tasks)


async def watch(c: httpx.AsyncClient, run: Run, t0: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        r = await c.get(f"/api/v1/services/{NAME}")
        if r.status_code == 200:
            svc = r.json()
            running = sum(i["state"] in ("Starting", "Running", "Draining") for i in svc["instances"])
            run.replicas.append((time.monotonic() - t0, svc["replicas"]["desired"], running))
        await asyncio.sleep(0.5)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(run: Run, home: Path, scale: float, slo: float, autoscaling: dict[str, Any]) -> None:
    burst_start = sum(d for d, _ in TRACE[:2]) * scale
    burst_end = burst_start + TRACE[2][0] * scale
    # The first request a second instance served after the burst began, from the gateway's access log.
    first_instance, second_at = None, None
    for line in (home / "logs" / "gateway.log").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("service") != NAME:
            continue
        first_instance = first_instance or rec["instance"]
        if rec["instance"] != first_instance and second_at is None:
            second_at = rec["ts"]
    failed = [r for r in run.results if r.status != 200 or r.error]
    burst = [r.ttft for r in run.results if burst_start <= r.sent_at < burst_end and r.ttft is not None]
    windows: dict[int, list[float]] = {}
    for r in run.results:
        if r.ttft is not None:
            windows.setdefault(int(r.sent_at // 10), []).append(r.ttft)
    within = sum(1 for w in windows.values() if (percentile(w, 0.99) or 0) <= slo)
    # Replica-seconds: instances placed (starting, serving or draining), sampled every 0.5 s.
    spans = list(zip(run.replicas, run.replicas[1:], strict=False))
    used = sum((b[0] - a[0]) * a[2] for a, b in spans)
    peak = max(n for _, _, n in run.replicas)
    duration = run.replicas[-1][0] - run.replicas[0][0]
    static = peak * duration
    print(f"\ntrace: {TRACE} (x{scale}); policy: {json.dumps(autoscaling)}")
    print(f"requests: {len(run.results)}, failed: {len(failed)}")
    for r in failed[:5]:
        print(f"  failed at {r.sent_at:.1f} s: {r.status} {r.error}")
    p50, p99 = percentile(burst, 0.5), percentile(burst, 0.99)
    print(f"burst: starts at {burst_start:.0f} s; TTFT p50 {p50:.2f} s, p99 {p99:.2f} s")
    if second_at is not None:
        serving = datetime.fromisoformat(second_at).timestamp() - (run.wall0 + burst_start)
        print(f"burst start to a new replica serving: {serving:.1f} s")
    share = within / len(windows)
    print(f"SLO (TTFT p99 <= {slo} s per 10 s window): {within}/{len(windows)} windows = {share:.0%}")
    ratio = used / static
    print(f"replica-seconds: {used:.0f}; static peak, {peak} x {duration:.0f} s: {static:.0f}; {ratio:.0%}")
    tail = [r for r in run.results if r.sent_at >= burst_end + TRACE[3][0] * scale]
    if tail:
        print(f"from zero: last request TTFT {tail[-1].ttft or float('nan'):.2f} s, status {tail[-1].status}")


async def main_async(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tideserve-bench-elastic-"))
    autoscaling = policy(args.min_replicas)
    port = free_port()
    env = {**os.environ, "TIDESERVE_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "tideserve",
        "up",
        "--port",
        str(port),
        "--no-default",
        "--metrics-interval",
        "1",
    ]
    with open(home / "up.log", "wb") as log:
        up = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
        key = (home / "admin.key").read_text().strip()
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, trust_env=False
        ) as c:
            r = await c.post("/api/v1/services", json=service(autoscaling))
            r.raise_for_status()
            while (await c.get(f"/api/v1/services/{NAME}")).json()["status"] != "Running":
                await asyncio.sleep(0.5)
            run, stop = Run(wall0=time.time()), asyncio.Event()
            t0 = time.monotonic()
            watcher = asyncio.create_task(watch(c, run, t0, stop))
            await load(c, run, args.scale, t0)
            stop.set()
            await watcher
            events = (await c.get(f"/api/v1/services/{NAME}/events", params={"limit": 200})).json()["items"]
        print("autoscaler decisions:")
        for e in reversed(events):
            if e["reason"] == "Autoscaled":
                print(f"  {e['at'][11:19]} {e['message']}")
        report(run, home, args.scale, args.slo_ttft, autoscaling)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="stretch the trace's durations")
    ap.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT p99 objective per 10 s window (s)")
    ap.add_argument("--min-replicas", type=int, default=0, help="the policy's floor: 0 scales to zero")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
