"""The views read back through a real Prometheus (Debian's `prometheus`) scraping a real `tideserve
up --prometheus-url` serving the bundled model: service, node and cluster figures and the overview agree
with the embedded store (what `/metrics` exports), every Grafana dashboard query runs, and a stopped
Prometheus makes the views answer 503 naming it.

SQLite only: the store is not on this path (the collector and its store queries are the ones
test_monitoring runs on both databases); a PostgreSQL run would double the time and cover nothing new."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tideserve.observability import promql
from tideserve.resources.bootstrap import DEFAULT_SERVICE

from ..observability.test_grafana import metric_names
from .conftest import free_port
from .test_monitoring import CHAT, poll

PROMETHEUS = "/usr/bin/prometheus"
DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana" / "tideserve.json"

pytestmark = [
    pytest.mark.skipif(shutil.which(PROMETHEUS) is None, reason=f"{PROMETHEUS} is not installed"),
    pytest.mark.parametrize("databases", ["sqlite"], indirect=True),
]


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: tideserve\n"
            "    honor_labels: true\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after 30 s:\n{self.log.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, trust_env=False)
        assert r.status_code == 200 and r.json()["status"] == "success", f"{expr}: {r.text}"
        return r.json()["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target_port: int) -> Prometheus:
        workdir = tmp_path / f"prometheus{len(started)}"
        workdir.mkdir()
        started.append(Prometheus(workdir, target_port))
        return started[-1]

    yield start
    for prom in started:
        prom.stop()


def exported(c: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The embedded store's current figures, as the platform's /metrics publishes them."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(c.get("/metrics").text)
        for s in family.samples
        if s.name.startswith("tideserve_") and not s.name.startswith("tideserve_gateway_")
    }


def figure(figures: dict, name: str, **labels: str) -> float | None:
    return figures.get((name, tuple(sorted(labels.items()))))


def test_views_read_back_through_prometheus(make_platform, prometheus_for):
    p = make_platform()
    prom = prometheus_for(p.port)
    p.start("--metrics-interval", "1", "--prometheus-url", prom.url)
    svc = p.wait_service(DEFAULT_SERVICE, timeout=300)
    instance = svc["instances"][0]["id"]
    with p.client() as c:

        def service() -> tuple[dict[str, Any], dict]:
            before = exported(c)
            v = c.get(f"/api/v1/services/{DEFAULT_SERVICE}/metrics", params={"window": "15m"}).json()
            return v, before

        # A per-round rate is a gauge Prometheus samples: a round overwritten before the next scrape is
        # never seen, so traffic goes on until a scraped round has some.
        def traffic() -> dict[str, Any]:
            for stream in (False, True):
                r = c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
                assert r.status_code == 200, r.text
            return service()[0]

        def seen(v: dict[str, Any]) -> bool:
            keys = ("requests_per_s", "gateway_requests_per_s", "generation_tokens_per_s")
            return all(any(val > 0 for _, val in v["series"].get(k, [])) for k in keys)

        assert seen(poll(traffic, seen, timeout=60))

        # The quantiles stay as the last round with traffic left them until they go stale (20 s), so
        # Prometheus soon agrees with the store exactly; a few steps of history make a series.
        def agrees(got: tuple[dict[str, Any], dict]) -> bool:
            v, store = got
            if len(v["series"].get("instances", [])) < 3:
                return False
            for key, q in (("ttft_p50", "0.5"), ("ttft_p90", "0.9"), ("ttft_p99", "0.99")):
                want = figure(store, "tideserve_service_ttft_seconds", service=DEFAULT_SERVICE, quantile=q)
                if want is None or v["current"][key] != want:
                    return False
            return True

        v, store = poll(service, agrees, timeout=30)
        assert agrees((v, store)), (v["current"], store)
        now = v["current"]
        assert 0 < now["ttft_p50"] <= now["ttft_p90"] <= now["ttft_p99"] < 60
        assert now["e2e_p99"] is not None and now["tpot_p50"] is not None
        assert now["instances"] == 1 and now["ready_instances"] == 1
        assert now["memory_bytes_per_instance"] > 50 * 2**20
        times = [t for t, _ in v["series"]["instances"]]
        step = times[1] - times[0]
        assert step >= 1 and all(t % step == 0 for t in times)  # aligned steps, at most MAX_POINTS
        assert v["instances"][instance]["up"] == 1  # honor_labels: our instance id, not the target's address

        node = c.get("/api/v1/nodes").json()[0]["name"]
        n = c.get(f"/api/v1/nodes/{node}/metrics").json()
        store = exported(c)
        assert n["current"]["cpu_cores"] == figure(
            store, "tideserve_node_cpu_cores", node=node, cluster="local"
        )
        total = figure(store, "tideserve_node_memory_bytes", node=node, cluster="local")
        assert n["current"]["memory_bytes"] == total
        assert 0 < n["current"]["memory_used_bytes"] <= total
        assert n["current"]["cpu_used_cores"] is not None and n["current"]["instances"] == 1
        assert instance in n["instances"]

        cl = c.get("/api/v1/clusters/local/metrics", params={"window": "15m"}).json()
        store = exported(c)
        for key, (part, whole) in (
            ("cpu_allocated", ("cpu_allocated_cores", "cpu_cores")),
            ("memory_allocated", ("memory_allocated_bytes", "memory_bytes")),
        ):
            want = figure(store, f"tideserve_cluster_{part}", cluster="local") / figure(
                store, f"tideserve_cluster_{whole}", cluster="local"
            )
            assert cl["water_levels"][key] == pytest.approx(want)
        assert 0 < cl["water_levels"]["memory_used"] <= 1
        assert cl["current"]["instances"] == 1 and cl["current"]["services"] == 1
        assert len(cl["series"]["nodes"]) >= 3

        o = c.get("/api/v1/monitoring/overview").json()
        assert o["services"][DEFAULT_SERVICE]["instances"] == 1
        assert o["nodes"][node]["cpu_cores"] == n["current"]["cpu_cores"]
        assert o["clusters"]["local"]["water_levels"]["cpu_allocated"] == cl["water_levels"]["cpu_allocated"]

    top = json.loads(p.cli("top", "-o", "json").stdout)
    assert top["services"][DEFAULT_SERVICE]["ready_instances"] == 1

    # Every dashboard query is valid PromQL, and every metric it asks for, but those of GPUs this
    # machine may not have, is on the real /metrics.
    dashboard = json.loads(DASHBOARD.read_text())
    asked: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            asked |= metric_names(target["expr"])
            prom.query(re.sub(r"\$(service|node|cluster)\b", ".*", target["expr"]))
    r = httpx.get(
        f"{prom.url}/api/v1/label/__name__/values", params={"match[]": '{job="tideserve"}'}, trust_env=False
    )
    scraped = set(r.json()["data"])  # every name scraped so far, fresh or stale
    gpu_only = re.compile(r"(instance|node)_gpu_|gpu_utilization")
    assert {n for n in asked if not gpu_only.search(n)} - scraped == set()

    # label values round-trip through PromQL string literals
    for value in ('say "hi"', "back\\slash", "two\nlines", "é😀"):
        got = prom.query(f'label_replace(vector(1), "v", {promql.quote(value)}, "", "")')
        assert got[0]["metric"]["v"] == value

    prom.stop()
    with p.client() as c:
        for path in (f"/api/v1/services/{DEFAULT_SERVICE}/metrics", "/api/v1/monitoring/overview"):
            r = c.get(path)
            assert r.status_code == 503, r.text
            assert prom.url in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200
    out = p.cli("top", check=False)
    assert out.returncode == 1 and prom.url in out.stderr
