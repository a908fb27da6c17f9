"""What the gateway measures of each request, as the client sees it: Prometheus series per service,
model and key, and one JSON access-log line per request (the key's name, never the key)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tideserve.observability.logs import KEEP, max_bytes

access_log = logging.getLogger("tideserve.access")

# Seconds. TTFT spans a cached short prompt (ms) to a queued long one (tens of s).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.5, 1)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
LABELS = ("service", "model", "key")


class _BufferedLines(logging.handlers.MemoryHandler):
    """Lines go out in batches, at most FLUSH_S late: one write per batch instead of a system call
    per request, which on a busy gateway costs as much as relaying a dozen tokens."""

    def __init__(self, targets: list[logging.Handler]) -> None:
        super().__init__(capacity=256, flushLevel=logging.WARNING, flushOnClose=True)
        self.targets = targets
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self._timer is None and self.buffer:
            self._timer = threading.Timer(FLUSH_S, self._tick)
            self._timer.daemon = True
            self._timer.start()

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        with self.lock:
            for target in self.targets:
                for record in self.buffer:
                    target.handle(record)
            self.buffer.clear()

    def close(self) -> None:
        # uvicorn's logging setup closes every existing handler; MemoryHandler.close would drop its
        # target and every later line with it. Flushing is all a close needs to do here.
        self.flush()


FLUSH_S = 0.2


def configure_access_log(enabled: bool, file: Path | None = None) -> None:
    """Bare JSON lines on stderr, whatever format the rest of the log uses, so tools can parse them;
    with `file`, also there, rotated by size, where `tideserve logs` searches them."""
    access_log.handlers.clear()
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.WARNING)
    targets: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None and enabled:
        file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            file, maxBytes=max_bytes(), backupCount=KEEP, encoding="utf-8"
        )
        targets.append(rotating)
    for target in targets:
        target.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(_BufferedLines(targets))


@dataclass(frozen=True)
class _Series:
    """One (service, model, key)'s children, looked up once rather than per observation."""

    ttft: Any
    tpot: Any
    e2e: Any
    prompt_tokens: Any
    completion_tokens: Any


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._series: dict[tuple[str, str, str], _Series] = {}
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tideserve_gateway_requests", "Requests by final status", (*LABELS, "status"), registry=r
        )
        self.ttft = Histogram(
            "tideserve_gateway_ttft_seconds",
            "Time to first byte of output",
            LABELS,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "tideserve_gateway_tpot_seconds",
            "Time per output token after the first",
            LABELS,
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "tideserve_gateway_e2e_seconds",
            "Request latency, end to end",
            LABELS,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("tideserve_gateway_prompt_tokens", "Prompt tokens", LABELS, registry=r)
        self.completion_tokens = Counter(
            "tideserve_gateway_completion_tokens", "Completion tokens", LABELS, registry=r
        )
        self.inflight = Gauge(
            "tideserve_gateway_inflight", "Requests sent upstream", ("service",), registry=r
        )
        self.queued = Gauge(
            "tideserve_gateway_queued", "Requests waiting for an instance", ("service",), registry=r
        )
        self.breaker = Gauge(
            "tideserve_gateway_breaker_state",
            "Circuit breaker per instance: 0 closed, 1 open, 2 half-open",
            ("instance",),
            registry=r,
        )
        self.retries = Counter(
            "tideserve_gateway_retries", "Upstream attempts retried", ("service",), registry=r
        )

    def response_counts(self) -> dict[tuple[str, str], float]:
        """Responses so far by (service, status), summed over models and keys, for the collector."""
        counts: dict[tuple[str, str], float] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["service"], sample.labels["status"])
                    counts[key] = counts.get(key, 0.0) + sample.value
        return counts

    def series(self, service: str, model: str, key: str) -> _Series:
        labels = (service, model, key)
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = _Series(
                self.ttft.labels(*labels),
                self.tpot.labels(*labels),
                self.e2e.labels(*labels),
                self.prompt_tokens.labels(*labels),
                self.completion_tokens.labels(*labels),
            )
        return found


@dataclass
class RequestRecord:
    """One request's facts, filled in as it goes; logged and counted once at the end."""

    request_id: str
    path: str
    started: float  # time.perf_counter()
    service: str = ""
    model: str = ""
    key: str = ""
    session_id: str | None = None
    instance: str | None = None
    revision: int | None = None
    priority: str = "normal"
    stream: bool = False
    status: int = 0
    attempts: int = 0
    queued_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    resumed: bool = False

    def finish(self, metrics: GatewayMetrics, now: float) -> None:
        self.e2e_s = now - self.started
        if self.service:
            series = metrics.series(self.service, self.model, self.key)
            metrics.requests.labels(self.service, self.model, self.key, str(self.status)).inc()
            if 200 <= self.status < 300:
                series.e2e.observe(self.e2e_s)
                if self.ttft_s is not None:
                    series.ttft.observe(self.ttft_s)
                    if self.completion_tokens and self.completion_tokens > 1:
                        series.tpot.observe((self.e2e_s - self.ttft_s) / (self.completion_tokens - 1))
                if self.prompt_tokens:
                    series.prompt_tokens.inc(self.prompt_tokens)
                if self.completion_tokens:
                    series.completion_tokens.inc(self.completion_tokens)
        if access_log.isEnabledFor(logging.INFO):
            # The time first: `tideserve logs` reads it there, as it reads the engine's lines.
            line: dict[str, Any] = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds")}
            line.update((k, v) for k in _LOGGED if (v := getattr(self, k)) is not None)
            access_log.info(json.dumps(line, separators=(",", ":")))


_LOGGED = tuple(f.name for f in fields(RequestRecord) if f.name != "started")
