import pytest

from tideserve.observability import views
from tideserve.observability.tsdb import TimeSeriesStore

NOW = 1_800_000_000.0


@pytest.fixture
def tsdb():
    db = TimeSeriesStore()
    for i, t in enumerate(range(int(NOW) - 600, int(NOW) + 1, 5)):
        db.add("tideserve_service_ttft_seconds", {"service": "chat", "quantile": "0.5"}, t, 0.1 + i * 0.001)
        db.add("tideserve_service_ttft_seconds", {"service": "chat", "quantile": "0.99"}, t, 0.5)
        db.add("tideserve_service_requests_per_second", {"service": "code"}, t, 3.0)
    db.add("tideserve_service_running_requests", {"service": "chat"}, NOW - 60, 7.0)  # stale by now
    for inst, cpu in (("a", 0.5), ("b", 1.5)):
        labels = {"service": "chat", "instance": inst, "node": "n1", "cluster": "local"}
        db.add("tideserve_instance_cpu_cores", labels, NOW, cpu)
    for name, value in (("tideserve_cluster_cpu_cores", 8.0), ("tideserve_cluster_cpu_allocated_cores", 6.0)):
        db.add(name, {"cluster": "local"}, NOW, value)
    return db


def test_service_view(tsdb):
    v = views.service_view(tsdb, "chat", NOW - 300, NOW)
    assert v["current"]["ttft_p50"] == pytest.approx(0.22)
    assert v["current"]["ttft_p99"] == 0.5
    assert v["current"]["running"] is None  # older than FRESH_S: not "current"
    assert v["current"]["requests_per_s"] is None  # another service's figure
    assert [t for t, _ in v["series"]["ttft_p50"]] == list(range(int(NOW) - 300, int(NOW) + 1, 5))
    assert "requests_per_s" not in v["series"]
    assert {k: f["cpu_cores"] for k, f in v["instances"].items()} == {"a": 0.5, "b": 1.5}


def test_cluster_view_water_levels(tsdb):
    v = views.cluster_view(tsdb, "local", NOW - 300, NOW)
    assert v["water_levels"]["cpu_allocated"] == 0.75
    assert v["water_levels"]["memory_used"] is None  # not measured


def test_overview_lists_every_service_with_current_figures(tsdb):
    o = views.overview(tsdb, NOW)
    assert o["services"]["chat"]["ttft_p99"] == 0.5
    assert o["services"]["code"]["requests_per_s"] == 3.0
    assert o["clusters"]["local"]["water_levels"]["cpu_allocated"] == 0.75


@pytest.mark.parametrize(("n", "limit", "want"), [(5, 10, 5), (100, 10, 10), (101, 10, 10), (1000, 720, 500)])
def test_thin_caps_points_and_keeps_the_newest(n, limit, want):
    points = [[float(i), float(i)] for i in range(n)]
    thinned = views.thin(points, limit)
    assert len(thinned) == want <= limit
    assert thinned[-1] == points[-1]
