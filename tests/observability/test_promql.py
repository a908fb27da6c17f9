import http.server
import math
import socket
import threading

import pytest

from tideserve.observability import promql
from tideserve.observability.promql import PrometheusSource, PrometheusUnavailable
from tideserve.observability.views import MAX_POINTS

DAY = 86400.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
        (" http://prom:9090/ ", "http://prom:9090"),
        ("https://mon.example.com/prometheus/", "https://mon.example.com/prometheus"),
        ("http://[::1]:9090", "http://[::1]:9090"),
    ],
)
def test_check_url_accepts_a_base_url(text, want):
    assert promql.check_url(text) == want


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1:9090", "http(s) URL with a host"),
        ("ftp://prom:9090", "http(s) URL with a host"),
        ("http://", "http(s) URL with a host"),
        ("http://prom:99999", "out of range"),
        ("http://prom:port", "not a URL"),
        ("http://prom:9090/?x=1", "without a query"),
    ],
)
def test_check_url_names_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        promql.check_url(text)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("chat", '"chat"'),
        ("", '""'),
        ('say "hi"', r'"say \"hi\""'),
        ("a\\b", r'"a\\b"'),
        ("two\nlines\t", r'"two\nlines\t"'),
        ("\x01", r'"\u0001"'),
        ("é😀", '"é😀"'),  # as is: an escaped astral character would be a surrogate pair, which Go refuses
    ],
)
def test_quote(value, want):
    assert promql.quote(value) == want


@pytest.mark.parametrize(
    ("name", "match", "want"),
    [
        ("tideserve_node_cpu_cores", None, "tideserve_node_cpu_cores{}"),
        (
            "tideserve_service_ttft_seconds",
            {"service": "chat", "quantile": "0.5"},
            'tideserve_service_ttft_seconds{quantile="0.5",service="chat"}',
        ),
        ("vllm:num_requests_running", {"service": 'x"}'}, r'vllm:num_requests_running{service="x\"}"}'),
    ],
)
def test_selector(name, match, want):
    assert promql.selector(name, match) == want


@pytest.mark.parametrize(
    ("name", "match"),
    [("tideserve_x{}", None), ("1up", None), ("up", {"service=~": "x"}), ("up", {"a-b": "x"})],
)
def test_selector_refuses_what_cannot_be_escaped(name, match):
    with pytest.raises(ValueError, match="not a"):
        promql.selector(name, match)


@pytest.mark.parametrize(
    ("cutoff", "want"),
    [
        (
            None,
            'm{service="s"} or label_replace(timestamp(m{service="s"}), "tideserve_sample", "time", "", "")',
        ),
        (
            1800000000.5,
            'm{service="s"} or label_replace(timestamp(m{service="s"}) >= 1800000000.5, '
            '"tideserve_sample", "time", "", "")',
        ),
    ],
)
def test_latest_query(cutoff, want):
    assert promql.latest_query("m", {"service": "s"}, cutoff) == want


@pytest.mark.parametrize(
    ("step", "want"),
    [
        (5, 'avg_over_time(m{node="n"}[5000ms]) or m{node="n"} * 1'),
        (1.5, 'avg_over_time(m{node="n"}[1500ms]) or m{node="n"} * 1'),
    ],
)
def test_range_query(step, want):
    assert promql.range_query("m", {"node": "n"}, step) == want


@pytest.mark.parametrize(
    ("span", "min_step", "want"),
    [
        (900, 5, 5),  # fine enough already
        (3600, 5, 6),  # 3600 / 719 rounded up to whole seconds
        (3600, 1, 6),
        (6 * 3600, 5, 31),
        (30 * DAY, 5, 3606),
        (60, 1.5, 1.5),
    ],
)
def test_step(span, min_step, want):
    assert promql.step_s(1000.0, 1000.0 + span, min_step) == want


@pytest.mark.parametrize("span", [60, 61, 719, 720, 721, 3599, 3600, 86399, 7 * DAY, 30 * DAY])
@pytest.mark.parametrize("start", [0.0, 1_800_000_000.3])
def test_step_keeps_a_range_query_within_max_points(span, start):
    step = promql.step_s(start, start + span, 1.0)
    first = promql.aligned_start(start, step)
    points = math.floor((start + span - first) / step) + 1  # how Prometheus counts a range query's steps
    assert 1 <= points <= MAX_POINTS
    assert start <= first < start + step and first % step == 0


@pytest.mark.parametrize(
    ("metric", "want"),
    [
        (
            {"__name__": "m", "job": "tideserve", "instance": "10.0.0.1:8080", "service": "s"},
            {"instance": "10.0.0.1:8080", "service": "s"},
        ),
        (  # honor_labels: true: ours stays
            {"__name__": "m", "job": "tideserve", "instance": "a1b2", "service": "s"},
            {"instance": "a1b2", "service": "s"},
        ),
        (  # honor_labels off: ours was renamed under Prometheus's target label
            {"__name__": "m", "job": "j", "instance": "10.0.0.1:8080", "exported_instance": "a1b2"},
            {"instance": "a1b2"},
        ),
    ],
)
def test_own_labels(metric, want):
    assert promql.own_labels(metric) == want


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (None, "not a Prometheus API response"),
        ("<html>", "not a Prometheus API response"),
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "bad_data: parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "expected a vector"),
    ],
)
def test_result_refuses_failed_or_foreign_answers(body, why):
    with pytest.raises(ValueError, match=why):
        promql.result(body, "vector")


def _row(value: str, t: float = 1800000000.0, **metric: str) -> dict:
    return {"metric": metric, "value": [t, value]}


def test_parse_latest_pairs_values_with_their_sample_times():
    rows = [
        _row("0.25", __name__="m", job="j", instance="a", service="s", quantile="0.5"),
        _row("0.75", __name__="m", job="j", instance="a", service="s", quantile="0.99"),
        _row("1799999990.5", job="j", instance="a", service="s", quantile="0.5", tideserve_sample="time"),
    ]
    # the p99 has no sample time: its sample was before the cutoff
    assert promql.parse_latest(rows) == [
        ({"instance": "a", "service": "s", "quantile": "0.5"}, 1799999990.5, 0.25)
    ]


def test_parse_range():
    rows = [
        {"metric": {"__name__": "m", "job": "j", "node": "n1"}, "values": [[100, "1"], [105.5, "NaN"]]},
        {"metric": {"__name__": "m", "job": "j", "node": "n2"}, "values": []},
    ]
    got = promql.parse_range(rows)
    assert [labels for labels, _ in got] == [{"node": "n1"}]
    assert got[0][1][0] == (100.0, 1.0) and math.isnan(got[0][1][1][1])


@pytest.fixture
def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_prometheus_is_named_without_its_password(unused_port):
    src = PrometheusSource(f"http://bob:secret@127.0.0.1:{unused_port}", min_step_s=5)
    with pytest.raises(PrometheusUnavailable, match=rf"http://bob:\*\*\*@127.0.0.1:{unused_port}") as e:
        src.latest("tideserve_node_cpu_cores", {"node": "n"}, max_age_s=20)
    assert "secret" not in str(e.value)


def test_a_server_that_is_not_prometheus_is_named():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"<html>no</html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = PrometheusSource(f"http://127.0.0.1:{server.server_port}", min_step_s=5)
        with pytest.raises(PrometheusUnavailable, match="HTTP 404: the answer is not a Prometheus"):
            src.query("tideserve_node_cpu_cores", None, 0, 3600)
    finally:
        server.shutdown()
