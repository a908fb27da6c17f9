"""How fast the console's pages render with a big store: 50 services, 500 instances on 10 GPU nodes,
15 minutes of metrics for all of them. Not a test: run it and read the table.

    .venv/bin/python bench/console.py [--runs 5]

The platform is the real app (store, API, gateway, console) served by uvicorn in this process, with
its reconciler paused: the 500 instances are rows written straight into the store (their engines
would need 500 GPUs), and a running reconciler would mark them failed. The metrics are written into
the embedded store with the same names and labels the collector uses. Each page is timed in Debian's
Chromium from navigation to the moment its data is on screen (the page's own selector below), on a
reload, so the API calls and the rendering are both in the figure. Target: < 1 s per page.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import sync_playwright

from tideserve.controlplane import build
from tideserve.observability import views
from tideserve.store.models import Instance, Node, Service

SERVICES = 50
REPLICAS = 10
NODES = 10
GPUS_PER_NODE = 8
HISTORY_S = 15 * 60
STEP_S = 5.0
TARGET_S = 1.0
API_PROBE_S = 25.0  # several collector rounds (5 s) and many endpoint-table rounds (0.5 s)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def seed_api(c: httpx.Client) -> None:
    c.post("/api/v1/clusters", json={"name": "gpu", "description": "bench"}).raise_for_status()
    c.post("/api/v1/clusters/gpu/groups", json={"name": "h100"}).raise_for_status()
    for n in range(NODES):
        gpus = [
            {"index": i, "name": "NVIDIA H100 80GB HBM3", "memoryBytes": 80 * 2**30}
            for i in range(GPUS_PER_NODE)
        ]
        node = {
            "name": f"gpu-{n:02d}",
            "address": f"10.0.0.{n + 10}",
            "cpus": 64,
            "memoryBytes": 512 * 2**30,
            "gpus": gpus,
        }
        c.post("/api/v1/nodes", json=node).raise_for_status()
        c.post("/api/v1/clusters/gpu/groups/h100/nodes", json={"node": node["name"]}).raise_for_status()
    for s in range(SERVICES):
        doc = {
            "metadata": {"name": f"chat-{s:02d}", "description": "bench service"},
            "spec": {"model": "qwen2.5-7b-instruct", "cluster": "gpu", "resourceGroup": "h100",
                     "engine": {"name": "builtin"}, "replicas": REPLICAS,
                     "resources": {"cpu": 4, "memory": "32Gi", "gpus": 1}},
        }  # fmt: skip
        r = c.post("/api/v1/services", json=doc)
        assert r.status_code == 201, r.text


def seed_instances(app) -> list[tuple[str, str, str]]:
    """Running instances written as the reconciler would have: (instance, service, node)."""
    placed = []
    with app.state.ctx.store.session() as s:
        nodes = [n for n in s.query(Node).order_by(Node.id) if n.name.startswith("gpu-")]
        slot = 0
        for svc in s.query(Service).order_by(Service.id):
            for _ in range(REPLICAS):
                node = nodes[slot // GPUS_PER_NODE % len(nodes)]
                # 127.0.0.1 on a closed port: the collector's and gateway's scrapes are refused at once
                inst = Instance(
                    id=uuid.uuid4().hex[:12], service_id=svc.id, revision=1, node_id=node.id, state="Running",
                    address="127.0.0.1", port=61000 + slot, gpu_indices=[slot % GPUS_PER_NODE],
                    started_at=svc.created_at, ready_at=svc.created_at,
                )  # fmt: skip
                s.add(inst)
                placed.append((inst.id, svc.name, node.name))
                slot += 1
    return placed


def seed_metrics(tsdb, placed: list[tuple[str, str, str]], now: float) -> int:
    """Every figure the views read, for every service, instance, node and cluster, every 5 s."""
    rng = random.Random(0)
    services = sorted({svc for _, svc, _ in placed})
    nodes = sorted({node for _, _, node in placed})
    members = [(fig, {"service": s}) for s in services for fig in views.SERVICE.values()]
    members += [
        (fig, {"service": s, "instance": i, "node": n, "cluster": "gpu"})
        for i, s, n in placed
        for fig in views.INSTANCE.values()
    ]
    members += [(fig, {"node": n, "cluster": "gpu"}) for n in nodes for fig in views.NODE.values()]
    members += [
        (fig, {"node": n, "cluster": "gpu", "gpu": str(g)})
        for n in nodes
        for g in range(GPUS_PER_NODE)
        for fig in views.GPU.values()
    ]
    members += [(fig, {"cluster": "gpu"}) for fig in views.CLUSTER.values()]
    points = [(name, {**labels, **extra}) for (name, extra), labels in members]
    t = now - HISTORY_S
    while t <= now:
        tsdb.add_round(t, [(name, labels, rng.random()) for name, labels in points])
        t += STEP_S
    return len(points)


# route → what shows that its data has rendered
PAGES = {
    "services": f"[data-testid=services] tbody tr:nth-child({SERVICES})",
    "services/chat-07/instances": f"[data-testid=instances] tbody tr:nth-child({REPLICAS})",
    "services/chat-07/monitoring": "[data-testid=service-monitoring] [data-chart]:not([data-points='0'])",
    "services/new": "select[name='spec.model'] option:nth-child(10)",
    "plaza": "[data-testid=model-card]:nth-child(20)",
    "resources/gpu/h100": f"[data-testid=group-nodes] tbody tr:nth-child({NODES})",
    "monitoring/gpu": f"[data-testid=services] tbody tr:nth-child({SERVICES})",
    "keys": "[data-testid=keys] tbody tr",
    "playground": "[data-testid=service-select] option:nth-child(10)",
}


def api_latency(c: httpx.Client, seconds: float = API_PROBE_S) -> None:
    """A light API call every 50 ms while the gateway and the collector scrape the 500 instances: if a
    scrape round holds the event loop, it shows here as a stall."""
    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        c.get("/api/v1/clusters").raise_for_status()
        took.append(time.perf_counter() - start)
        time.sleep(0.05)
    took.sort()
    p50, p90 = took[len(took) // 2], took[int(len(took) * 0.9)]
    print(f"API under scraping, {len(took)} calls: p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
          f"max {took[-1] * 1000:.1f} ms")  # fmt: skip


def serve(app) -> tuple[uvicorn.Server, str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed loads per page (after one warm-up)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tideserve-bench-console-"))
    app, _ = build(home, deploy_default=False)
    app.state.ctx.controller.start = lambda: None  # paused: see the module docstring
    server, base = serve(app)
    key = (home / "admin.key").read_text().strip()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        seed_api(c)
    placed = seed_instances(app)
    t0 = time.perf_counter()
    series = seed_metrics(app.state.ctx.metrics, placed, time.time())
    took = time.perf_counter() - t0
    print(f"store: {SERVICES} services, {len(placed)} instances, {NODES} GPU nodes; "
          f"{series} series x {int(HISTORY_S / STEP_S) + 1} points written in {took:.1f} s")  # fmt: skip
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        api_latency(c)

    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.fill("input[name=key]", key)
        page.click("form.login button[type=submit]")
        page.wait_for_selector("aside")
        for route, ready in PAGES.items():
            times = []
            for run in range(args.runs + 1):
                page.goto(f"{base}/#/{route}")
                start = time.perf_counter()
                page.reload()
                page.wait_for_selector(ready, state="attached", timeout=30_000)
                if run:  # the first load warms the browser's module cache, as a user's second visit
                    times.append(time.perf_counter() - start)
            rows.append((route, statistics.median(times), max(times)))
        browser.close()
    server.should_exit = True
    print(f"\n| page | median ms | max ms | < {TARGET_S:.0f} s |\n|---|---|---|---|")
    for route, med, worst in rows:
        ok = "yes" if worst < TARGET_S else "NO"
        print(f"| #/{route} | {med * 1000:.0f} | {worst * 1000:.0f} | {ok} |")
    if errors:
        print("page errors:", *errors, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
