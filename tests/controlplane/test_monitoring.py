"""The collector on a real `tideserve up` with the bundled model served by a real engine process, on
SQLite and PostgreSQL: figures at service, instance, node and cluster level after real requests, the
same figures on `/metrics` and in `tideserve top`, bad parameters refused, history kept across a
restart."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tideserve.resources.bootstrap import DEFAULT_SERVICE

CHAT = {
    "model": DEFAULT_SERVICE,
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 8,
}


def poll(fetch, ready, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_collector_views_metrics_top_and_history(make_platform):
    p = make_platform()
    p.start("--metrics-interval", "1")
    svc = p.wait_service(DEFAULT_SERVICE, timeout=300)
    instance = svc["instances"][0]["id"]
    with p.client() as c:
        for stream in (False, True, False, True):
            r = c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert r.status_code == 200, r.text
        pinned = c.post("/v1/chat/completions", json=CHAT, headers={"X-Model-Version": "99"})
        assert 400 <= pinned.status_code < 500, pinned.text  # refused after routing: a client error

        def service() -> dict[str, Any]:
            return c.get(f"/api/v1/services/{DEFAULT_SERVICE}/metrics", params={"window": "15m"}).json()

        def done(v: dict[str, Any]) -> bool:
            errors = v["series"].get("client_errors_per_s", [])
            return v["current"]["ttft_p50"] is not None and any(val > 0 for _, val in errors)

        v = poll(service, done)
        now = v["current"]
        assert 0 < now["ttft_p50"] <= now["ttft_p99"] < 60
        assert 0 < now["e2e_p50"] <= now["e2e_p99"] < 60
        assert now["tpot_p50"] is not None and now["tpot_p50"] > 0
        assert now["instances"] == 1 and now["ready_instances"] == 1
        assert 0 <= now["kv_cache_usage"] <= 1
        assert now["memory_bytes_per_instance"] > 50 * 2**20  # a loaded model
        assert now["cpu_cores_per_instance"] is not None
        series = v["series"]
        assert max(val for _, val in series["requests_per_s"]) > 0
        assert max(val for _, val in series["generation_tokens_per_s"]) > 0
        assert max(val for _, val in series["gateway_requests_per_s"]) > 0
        assert max(val for _, val in series["client_errors_per_s"]) > 0  # the bad request
        assert v["instances"][instance]["up"] == 1

        node = c.get("/api/v1/nodes").json()[0]
        n = poll(lambda: c.get(f"/api/v1/nodes/{node['name']}/metrics").json(),
                 lambda n: n["current"]["cpu_used_cores"] is not None)  # fmt: skip
        assert n["current"]["cpu_cores"] == node["cpus"]
        assert 0 < n["current"]["memory_used_bytes"] <= n["current"]["memory_bytes"]
        assert n["current"]["instances"] == 1 and instance in n["instances"]

        cl = c.get("/api/v1/clusters/local/metrics").json()
        assert cl["current"]["instances"] == 1 and cl["current"]["services"] == 1
        assert 0 < cl["water_levels"]["cpu_allocated"] <= 1
        assert 0 < cl["water_levels"]["memory_used"] <= 1

        for path, params in (
            (f"/api/v1/services/{DEFAULT_SERVICE}/metrics", {"window": "soon"}),
            (f"/api/v1/services/{DEFAULT_SERVICE}/metrics", {"window": "90d"}),
        ):
            r = c.get(path, params=params)
            assert r.status_code == 422 and "window" in r.json()["error"]["message"], r.text
        for path in (
            "/api/v1/services/nope/metrics",
            "/api/v1/nodes/nope/metrics",
            "/api/v1/clusters/nope/metrics",
        ):
            assert c.get(path).status_code == 404
        assert (
            c.get("/api/v1/monitoring/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )

        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        ttft = {
            (s.labels["service"], s.labels["quantile"])
            for s in families["tideserve_service_ttft_seconds"].samples
        }
        assert (DEFAULT_SERVICE, "0.99") in ttft
        up = families["tideserve_instance_up"].samples[0]
        assert up.value == 1 and up.labels == {
            "service": DEFAULT_SERVICE, "instance": instance, "node": node["name"], "cluster": "local"
        }  # fmt: skip
        assert "tideserve_gateway_requests" in families  # the gateway's own metrics are still there

    top = json.loads(p.cli("top", "-o", "json").stdout)
    assert top["services"][DEFAULT_SERVICE]["ttft_p50"] is not None
    assert top["clusters"]["local"]["water_levels"]["cpu_allocated"] > 0
    table = p.cli("top").stdout
    assert DEFAULT_SERVICE in table and "TTFT P50" in table and node["name"] in table

    before = [t for t, _ in series["ttft_p50"]]
    p.stop()
    assert (p.home / "metrics.tsdb").stat().st_size > 0
    p.start("--metrics-interval", "1")
    with p.client() as c:
        kept = c.get(f"/api/v1/services/{DEFAULT_SERVICE}/metrics", params={"window": "15m"}).json()
    assert set(before) <= {t for t, _ in kept["series"]["ttft_p50"]}
