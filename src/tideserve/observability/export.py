"""The collector's figures on `/metrics` as `tideserve_*` gauges, labelled by service, instance, node
and cluster, so a user's own Prometheus can scrape the platform instead of every engine."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tideserve.observability.tsdb import TimeSeriesStore
from tideserve.observability.views import FRESH_S


class TsdbExport(Collector):
    """A prometheus_client collector: each scrape yields every series' newest point if it is fresh (a
    gone instance disappears from `/metrics` rather than repeating its last value)."""

    def __init__(self, tsdb: TimeSeriesStore) -> None:
        self.tsdb = tsdb

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        for name in sorted(self.tsdb.names()):
            rows = self.tsdb.latest(name, None, max_age_s=FRESH_S, now=now)
            if not rows:
                continue
            keys = sorted({k for labels, _, _ in rows for k in labels})
            family = GaugeMetricFamily(name, f"tideserve collector: {name}", labels=keys)
            for labels, _t, value in rows:
                family.add_metric([labels.get(k, "") for k in keys], value)
            yield family
