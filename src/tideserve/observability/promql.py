"""The views read from a Prometheus that scrapes the platform's `/metrics` (`tideserve up
--prometheus-url`), through its HTTP API, instead of from the embedded store.

Labels: the scrape should keep ours (`honor_labels: true`, as examples/prometheus.yml does). Then an
instance-level series keeps our `instance` (the instance id); series without one (service, node,
cluster) get the scrape target's address as `instance`, which no view keys by, so it is left alone.
With honor_labels off, Prometheus renames ours `exported_instance`; it is renamed back so the views
still see instance ids. `job` is Prometheus's alone and is dropped.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from tideserve.observability.views import MAX_POINTS

TIMEOUT_S = 3.0  # per query: a view makes dozens, and a stuck Prometheus must not hold a page for long
SAMPLE_MARK = "tideserve_sample"  # marks the sample-time half of a latest() answer (see latest_query)
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = dict[str, str]


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or refused a query: the views cannot be read right now."""


def check_url(text: str) -> str:
    """The base URL without a trailing slash (a route prefix such as /prometheus is kept); ValueError
    naming what is wrong otherwise."""
    try:
        url = httpx.URL(text.strip())
    except httpx.InvalidURL as e:
        raise ValueError(f"{text!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{text!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:9090")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"{text!r}: port {url.port} is out of range")
    if url.query or url.fragment:
        raise ValueError(f"{text!r}: give the base URL, without a query or fragment")
    return str(url).rstrip("/")


def quote(value: str) -> str:
    """A PromQL string literal. PromQL unquotes like Go, whose escapes include all of JSON's; with
    ensure_ascii off, JSON never writes surrogate pairs (\\ud83d...), which Go rejects."""
    return json.dumps(value, ensure_ascii=False)


def selector(name: str, match: Mapping[str, str] | None) -> str:
    if not _METRIC.fullmatch(name):
        raise ValueError(f"not a metric name: {name!r}")
    for key in match or {}:
        if not _LABEL.fullmatch(key):
            raise ValueError(f"not a label name: {key!r}")
    pairs = ",".join(f"{k}={quote(v)}" for k, v in sorted((match or {}).items()))
    return f"{name}{{{pairs}}}"


def latest_query(name: str, match: Mapping[str, str] | None, cutoff: float | None) -> str:
    """Each series' value and, marked by SAMPLE_MARK, its sample time (if not before cutoff), in one
    instant query. A plain instant selector, not last_over_time: /metrics leaves out a figure once the
    collector stops writing it, Prometheus marks it stale at that scrape and the selector drops it, as
    the embedded store's latest() does. It answers with the evaluation time; timestamp() gives the
    sample's, which a series needs to be returned at all (parse_latest)."""
    sel = selector(name, match)
    times = f"timestamp({sel})" if cutoff is None else f"timestamp({sel}) >= {cutoff!r}"
    return f'{sel} or label_replace({times}, "{SAMPLE_MARK}", "time", "", "")'


def range_query(name: str, match: Mapping[str, str] | None, step: float) -> str:
    """At each step, the mean of the samples in the step before it, as a slot of the embedded store
    holds the mean of its points (a one-round spike stays visible); where that window holds none (a
    step finer than the scrape interval), the sample an instant query sees then, none once stale.
    `* 1` drops the metric name as avg_over_time does, so both make one series."""
    sel = selector(name, match)
    return f"avg_over_time({sel}[{round(step * 1000)}ms]) or {sel} * 1"


def step_s(start: float, end: float, min_step_s: float) -> float:
    """A range query's step: no finer than min_step_s (the collector's interval: a figure changes once
    a round), else the whole seconds that keep [start, end] to MAX_POINTS points."""
    return max(min_step_s, float(math.ceil((end - start) / (MAX_POINTS - 1))))


def aligned_start(start: float, step: float) -> float:
    """The first multiple of step at or after start, so a refreshed chart keeps its point times."""
    return math.ceil(start / step) * step


def own_labels(metric: Mapping[str, str]) -> Labels:
    labels = {k: v for k, v in metric.items() if k not in ("__name__", "job", SAMPLE_MARK)}
    if "exported_instance" in labels:  # honor_labels off: Prometheus's instance label took ours
        labels["instance"] = labels.pop("exported_instance")
    return labels


def result(body: Any, kind: str) -> list[dict[str, Any]]:
    """The result list of an API answer of resultType `kind`; ValueError with Prometheus's reason when
    the query failed or the answer is not Prometheus's."""
    if not isinstance(body, dict) or "status" not in body:
        raise ValueError("the answer is not a Prometheus API response")
    if body["status"] != "success":
        raise ValueError(f"{body.get('errorType', 'error')}: {body.get('error', 'no reason given')}")
    data = body.get("data") or {}
    if data.get("resultType") != kind:
        raise ValueError(f"expected a {kind}, got {data.get('resultType')!r}")
    return data["result"]


def parse_latest(rows: list[dict[str, Any]]) -> list[tuple[Labels, float, float]]:
    """(labels, sample time, value) of each series of a latest_query result that has its sample time
    (one without was older than the cutoff)."""
    times = {_key(r["metric"]): float(r["value"][1]) for r in rows if SAMPLE_MARK in r["metric"]}
    out = []
    for r in rows:
        t = times.get(_key(r["metric"]))
        if SAMPLE_MARK not in r["metric"] and t is not None:
            out.append((own_labels(r["metric"]), t, float(r["value"][1])))
    return out


def parse_range(rows: list[dict[str, Any]]) -> list[tuple[Labels, list[tuple[float, float]]]]:
    return [
        (own_labels(r["metric"]), [(float(t), float(v)) for t, v in r["values"]]) for r in rows if r["values"]
    ]


def _key(metric: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in metric.items() if k not in ("__name__", SAMPLE_MARK)))


class PrometheusSource:
    """views.MetricSource over Prometheus's /api/v1/query and /api/v1/query_range.

    Sync on purpose: the monitoring endpoints are plain `def` handlers, run in a threadpool, and one
    httpx.Client (thread-safe, keeping connections alive) serves them all. Queries go one at a time:
    a service view's ~43 take ~60 ms against a local Prometheus, so neither batching them by
    `__name__` nor threads pay for themselves."""

    def __init__(self, url: str, min_step_s: float, timeout_s: float = TIMEOUT_S) -> None:
        self.url = check_url(url)
        self.min_step_s = min_step_s
        self._timeout = f"{round(timeout_s * 1000)}ms"  # PromQL durations take no decimals
        # A proxy set for the internet must not capture a Prometheus on the local network.
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, trust_env=False)
        shown = httpx.URL(self.url)
        self._shown = (
            str(shown.copy_with(username=shown.username, password="***")) if shown.password else self.url
        )

    def snapshot(self) -> contextlib.nullcontext[None]:
        """Nothing to hold: a view passes one `now` to every read and each query is evaluated at that
        time, over samples Prometheus no longer changes (but for a scrape being written meanwhile)."""
        return contextlib.nullcontext()

    def latest(
        self,
        name: str,
        match: Mapping[str, str] | None = None,
        max_age_s: float | None = None,
        now: float | None = None,
    ) -> list[tuple[Labels, float, float]]:
        """Series present on the latest scrape (within Prometheus's lookback, 5 m by default), with
        their sample times; max_age_s drops those whose sample is older."""
        now = time.time() if now is None else now
        cutoff = None if max_age_s is None else now - max_age_s
        query = latest_query(name, match, cutoff)
        return parse_latest(self._result("/api/v1/query", {"query": query, "time": now}, "vector"))

    def query(
        self, name: str, match: Mapping[str, str] | None, start: float, end: float
    ) -> list[tuple[Labels, list[tuple[float, float]]]]:
        """Each series' value at every step from start to end (range_query says which)."""
        step = step_s(start, end, self.min_step_s)
        params = {
            "query": range_query(name, match, step),
            "start": aligned_start(start, step),
            "end": end,
            "step": step,
        }
        return parse_range(self._result("/api/v1/query_range", params, "matrix"))

    def _result(self, path: str, params: dict[str, str | float], kind: str) -> list[dict[str, Any]]:
        try:
            r = self._http.get(path, params={**params, "timeout": self._timeout})
        except httpx.HTTPError as e:
            raise PrometheusUnavailable(
                f"Prometheus at {self._shown} (--prometheus-url) did not answer: {str(e) or type(e).__name__}"
            ) from None
        try:
            body = r.json()
        except ValueError:
            body = None
        try:
            return result(body, kind)
        except ValueError as e:
            raise PrometheusUnavailable(
                f"Prometheus at {self._shown} (--prometheus-url) answered {path} with HTTP "
                f"{r.status_code}: {e}"
            ) from None
