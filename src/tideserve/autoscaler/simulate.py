"""A policy simulator: replay a traffic trace through the autoscaler's own decisions (decide.py) against
a queueing model of instances, and count what the policy costs (replica-seconds) and what users get
(TTFT, failed requests), so a policy can be tuned before production.

The model, in simulated seconds (event-driven for requests, rounds for the control plane):

- Arrivals: a trace of rates (`t,rps`, a Poisson process, piecewise constant, seeded) or of requests
  (`t,prompt_tokens,output_tokens`).
- An instance is ready `startup_s` after the decision that made it (placement, process start, weight
  load), then holds `concurrency` requests at once (maxBatchSize). A request in the batch takes
  prompt_tokens / prefill_tokens_per_s to its first token and output_tokens / tokens_per_s more to its
  end, whatever else runs: batching is taken to be free up to maxBatchSize. More requests wait in the
  engine's queue, first come first served.
- The gateway sends a request to the ready instance with the fewest in flight, below its in-flight cap
  (maxInflightPerInstance, else twice maxBatchSize: a batch running and one waiting in the engine, as
  the real gateway does). With none, the request waits at the gateway (at most routing.queue.maxSize of
  them, 256 by default, else 503 at once) and fails after routing.queue.timeoutSeconds (30 s) there.
  Requests held at a service at zero are the from-zero signal, and wake the autoscaler at once.
- Scaling down drains as the reconciler does: instances not ready yet go first (they stop at once),
  then the newest; a draining instance takes no new request and stops when its last one ends.
- The collector publishes every 5 s what the loop reads from the store: the service's TTFT p90 as the
  engines measure it (engine queue + prefill of the requests whose first token came in the window;
  none without one), the gateway's answered requests per second and each instance's GPU use (here:
  its batch occupancy). Figures older than 20 s are missing, as in the loop.
- Every 2 s (and at once when a request has to wait at the gateway) the autoscaler observes as loop.py
  does (engine queues and batch sizes per ready instance, KV use taken as batch occupancy, held requests
  spread over the ready instances' waiting counts), calls `decide` (startup_grace_s=0) and applies it.

Reported: replica-seconds (every instance from its start decision until it stops: starting and
draining ones cost too) against a static deployment sized for the trace's peak, user-facing TTFT (from
arrival at the gateway to the first token, so gateway waits and cold starts count) of served requests,
failures, SLO attainment (the share of minutes with traffic whose TTFT p90, failures counted as
misses, is within the SLO), scale events and an hourly table. The trace starts with the floor
(minReplicas, or a schedule's) ready; after its end the run goes on, without arrivals, until every
request is answered.

Limits: every request of a rate trace has the same size; no prefix cache, preemption, KV-cache
pressure, chunked-prefill interference or slower decode in big batches; quantiles are exact where the
real collector interpolates histogram buckets; no crashes, no rate limits, priorities or retries; one
gateway; requests held at the gateway are answered first come first served.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field, ValidationError

from tideserve.autoscaler.decide import (
    INTERVAL_S,
    METRIC_FRESH_S,
    History,
    InstanceSample,
    Observation,
    decide,
    with_gateway_queue,
)
from tideserve.autoscaler.policy import Autoscaling, Metric, _next_firing, from_spec, holding
from tideserve.gateway.endpoints import DEFAULT_MAX_BATCH
from tideserve.observability.collector import INTERVAL_S as COLLECT_INTERVAL_S
from tideserve.services.spec import _message, parse_service_document
from tideserve.services.specbase import FieldError, SpecError, _Model

SLO_WINDOW_S = 60.0
# Trace time 0 is midnight of a Monday (cron schedules often name weekdays) in the first schedule's
# time zone: a fixed date, so a replay gives the same answer every day it is run.
DEFAULT_START = datetime(2026, 1, 5)


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceModel:
    startup_s: float = 5.0  # decision to ready: place, start the process, load the weights
    concurrency: int = DEFAULT_MAX_BATCH  # maxBatchSize: requests in the running batch
    tokens_per_s: float = 20.0  # decode speed of one request
    output_tokens: int = 128  # of each request of a rate trace
    prompt_tokens: int = 256
    prefill_tokens_per_s: float = 1000.0

    def service_s(self, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
        """(to the first token, from it to the end) of one request once in the batch."""
        return prompt_tokens / self.prefill_tokens_per_s, output_tokens / self.tokens_per_s


@dataclass(frozen=True)
class GatewayModel:
    queue_size: int = 256
    queue_timeout_s: float = 30.0
    max_inflight: int | None = None  # per instance; None: twice the concurrency


# --- traces --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Either `rates`, (from t, requests/s) each holding until the next, or `requests`, (t, prompt
    tokens, output tokens) each; times in seconds from the trace's start."""

    duration_s: float
    rates: tuple[tuple[float, float], ...] = ()
    requests: tuple[tuple[float, int, int], ...] = ()


class TraceError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}")


_RATE_COLUMNS = ("t", "rps")
_REQUEST_COLUMNS = ("t", "prompt_tokens", "output_tokens")
_FORMS = "write `t,rps` (a rate from t on) or `t,prompt_tokens,output_tokens` (one request)"


def parse_trace(text: str) -> Trace:
    """A trace from CSV (an optional header naming the columns, `#` comments) or JSON lines
    (`{"t": 0, "rps": 1.5}` or `{"t": 0.4, "prompt_tokens": 200, "output_tokens": 80}`). A rate
    trace's last rate holds as long as the one before it (a regular grid of rows covers its whole
    span); a request trace ends with the second of its last request. Raises TraceError naming the line."""
    rows: list[tuple[int, tuple[float, ...]]] = []
    columns: tuple[str, ...] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            names, values = _json_row(number, line)
        else:
            names, values = _csv_row(number, line, header_allowed=not rows and columns is None)
            if values is None:
                columns = names
                continue
        if columns is None:
            columns = names
        elif names != columns:
            raise TraceError(number, f"has {', '.join(names)} where the trace has {', '.join(columns)}")
        rows.append((number, values))
    if not rows:
        raise TraceError(1, f"no rows: {_FORMS}")
    return _rate_trace(rows) if columns == _RATE_COLUMNS else _request_trace(rows)


def _csv_row(
    number: int, line: str, header_allowed: bool
) -> tuple[tuple[str, ...], tuple[float, ...] | None]:
    """The row's columns and values; values None for the header."""
    cells = tuple(c.strip() for c in line.split(","))
    names = _RATE_COLUMNS if len(cells) == 2 else _REQUEST_COLUMNS if len(cells) == 3 else None
    try:
        values = tuple(float(c) for c in cells)
    except ValueError:
        if header_allowed and cells in (_RATE_COLUMNS, _REQUEST_COLUMNS):
            return cells, None
        what = (
            "numbers nor a header (t,rps or t,prompt_tokens,output_tokens)" if header_allowed else "numbers"
        )
        raise TraceError(number, f"{line!r} is not {what}: {_FORMS}") from None
    if names is None:
        raise TraceError(number, f"has {len(cells)} columns: {_FORMS}")
    return names, values


def _json_row(number: int, line: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise TraceError(number, f"malformed JSON at column {e.colno}: {e.msg}") from None
    keys = tuple(row) if isinstance(row, dict) else ()
    for names in (_RATE_COLUMNS, _REQUEST_COLUMNS):
        if sorted(keys) == sorted(names):
            values = [row[n] for n in names]
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                return names, tuple(float(v) for v in values)
            raise TraceError(number, f"{line!r} has a value that is not a number")
    raise TraceError(number, f'{line!r}: write {{"t", "rps"}} or {{"t", "prompt_tokens", "output_tokens"}}')


def _rate_trace(rows: list[tuple[int, tuple[float, ...]]]) -> Trace:
    rates: list[tuple[float, float]] = []
    for number, (t, rps) in rows:
        if not (math.isfinite(t) and t >= 0):
            raise TraceError(number, f"t={t:g}: write seconds from the trace's start, 0 or more")
        if rates and t <= rates[-1][0]:
            raise TraceError(number, f"t={t:g} is not after the row before (t={rates[-1][0]:g})")
        if not (math.isfinite(rps) and rps >= 0):
            raise TraceError(number, f"rps={rps:g}: write requests per second, 0 or more")
        rates.append((t, rps))
    if len(rates) < 2:
        raise TraceError(
            rows[0][0], "a rate trace needs two rows or more: the last holds as long as the one before"
        )
    return Trace(duration_s=2 * rates[-1][0] - rates[-2][0], rates=tuple(rates))


def _request_trace(rows: list[tuple[int, tuple[float, ...]]]) -> Trace:
    requests: list[tuple[float, int, int]] = []
    for number, (t, prompt, output) in rows:
        if not (math.isfinite(t) and t >= 0):
            raise TraceError(number, f"t={t:g}: write seconds from the trace's start, 0 or more")
        if requests and t < requests[-1][0]:
            raise TraceError(number, f"t={t:g} is before the row before (t={requests[-1][0]:g}): sort by t")
        if not (prompt.is_integer() and prompt >= 1 and output.is_integer() and output >= 1):
            raise TraceError(number, "prompt_tokens and output_tokens must be whole numbers, 1 or more")
        requests.append((t, int(prompt), int(output)))
    # The second of the last request is the trace's last.
    return Trace(duration_s=math.floor(requests[-1][0]) + 1.0, requests=tuple(requests))


def _arrivals(trace: Trace, model: InstanceModel, rng: random.Random) -> Iterator[tuple[float, int, int]]:
    if trace.requests:
        yield from trace.requests
        return
    for i, (start, rps) in enumerate(trace.rates):
        end = trace.rates[i + 1][0] if i + 1 < len(trace.rates) else trace.duration_s
        # Memoryless: restarting the Poisson process at each change of rate is exact.
        t = start
        while rps > 0:
            t += rng.expovariate(rps)
            if t >= end:
                break
            yield t, model.prompt_tokens, model.output_tokens


def peak_rps(trace: Trace) -> float:
    """The highest rate: a rate trace's top row, a request trace's busiest minute."""
    if trace.rates:
        return max(rps for _, rps in trace.rates)
    per_minute: dict[int, int] = {}
    for t, _, _ in trace.requests:
        per_minute[int(t // 60)] = per_minute.get(int(t // 60), 0) + 1
    return max(per_minute.values()) / min(60.0, trace.duration_s)


def capacity_rps(trace: Trace, model: InstanceModel) -> float:
    """Requests per second one replica serves with its batch full, at the trace's mean request."""
    if trace.requests:
        spans = [sum(model.service_s(p, o)) for _, p, o in trace.requests]
        mean = sum(spans) / len(spans)
    else:
        mean = sum(model.service_s(model.prompt_tokens, model.output_tokens))
    return model.concurrency / mean


# --- the policy file -----------------------------------------------------------------------------


class SimulationSpec(_Model):
    """The optional top-level `simulation:` mapping of a policy file: the instance model's numbers."""

    startup_seconds: float | None = Field(None, ge=0)
    concurrency: int | None = Field(None, ge=1)
    tokens_per_second: float | None = Field(None, gt=0)
    output_tokens: int | None = Field(None, ge=1)
    prompt_tokens: int | None = Field(None, ge=1)
    prefill_tokens_per_second: float | None = Field(None, gt=0)


_SIMULATION_FIELDS = {
    "startup_seconds": "startup_s",
    "concurrency": "concurrency",
    "tokens_per_second": "tokens_per_s",
    "output_tokens": "output_tokens",
    "prompt_tokens": "prompt_tokens",
    "prefill_tokens_per_second": "prefill_tokens_per_s",
}
_DOCUMENT_KEYS = {"apiVersion", "kind", "metadata", "spec"}


@dataclass(frozen=True)
class PolicyFile:
    policy: Autoscaling
    model: InstanceModel  # the defaults, with what the file says
    gateway: GatewayModel
    time_zone: str  # of trace time 0: the first schedule's, else UTC


def read_policy_file(data: Any) -> PolicyFile:
    """The policy, instance model and gateway settings of a parsed policy file: a service document
    (its spec.autoscaling, spec.parameters.maxBatchSize, spec.routing's queue and in-flight cap) or the
    autoscaling mapping alone; either with an optional top-level `simulation:` mapping. Raises
    SpecError with every problem, located as in the file."""
    if not isinstance(data, Mapping):
        raise SpecError(
            [
                {
                    "loc": "",
                    "msg": "the policy file must be a mapping: a service document with spec.autoscaling, "
                    "or the autoscaling mapping itself (minReplicas, maxReplicas, targets, ...)",
                }
            ]
        )
    body = dict(data)
    errors: list[FieldError] = []
    model, gateway = InstanceModel(), GatewayModel()
    policy: Autoscaling | None = None
    overrides: dict[str, Any] = {}
    try:
        sim = SimulationSpec.model_validate(body.pop("simulation", None) or {})
        overrides = {_SIMULATION_FIELDS[k]: v for k, v in sim.model_dump().items() if v is not None}
    except ValidationError as e:
        errors += _simulation_errors(e)
    try:
        if _DOCUMENT_KEYS & body.keys():
            doc = parse_service_document(body).spec
            if doc.autoscaling is None:
                raise SpecError(
                    [
                        {
                            "loc": "spec.autoscaling",
                            "msg": "is required: the simulator replays an autoscaling policy, e.g. "
                            "autoscaling: {maxReplicas: 4, targets: [{metric: waitingPerReplica, value: 4}]}",
                        }
                    ]
                )
            policy = doc.autoscaling.to_policy()
            model = replace(model, concurrency=doc.parameters.max_batch_size)
            queue = doc.routing.queue
            gateway = GatewayModel(
                queue.max_size, queue.timeout_seconds, doc.routing.max_inflight_per_instance
            )
        else:
            policy = from_spec(body, loc="")
    except SpecError as e:
        errors += e.errors
    if errors or policy is None:
        raise SpecError(errors)
    zone = policy.schedules[0].timezone if policy.schedules else "UTC"
    return PolicyFile(policy, replace(model, **overrides), gateway, zone)


def _simulation_errors(error: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for item in error.errors():
        loc = ".".join(["simulation", *(str(p) for p in item["loc"])])
        if item["type"] == "extra_forbidden":
            known = ", ".join(f.alias or n for n, f in SimulationSpec.model_fields.items())
            msg = f"unknown field {item['loc'][-1]!r} in simulation: known fields are {known}"
        else:
            msg = _message(item, loc)
        out.append({"loc": loc, "msg": msg})
    return out


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleChange:
    t: float  # seconds from the trace's start
    from_replicas: int
    to_replicas: int


@dataclass(frozen=True)
class Hour:
    hour: int
    replicas: float  # mean instances paid for (starting, ready, draining)
    rps: float  # arrivals
    ttft_p90_s: float | None  # of served requests whose first token came in the hour
    failed: int


@dataclass(frozen=True)
class Result:
    duration_s: float  # the trace's
    end_s: float  # when the last request was answered, if after the trace's end
    requests: int
    served: int
    failed: int
    replica_seconds: float
    static_replicas: int  # what serves the trace's peak with every batch full
    static_replica_seconds: float
    peak_rps: float
    capacity_rps: float  # of one replica
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    slo_ttft_s: float | None
    slo_windows: int  # minutes with traffic
    slo_met: int
    decisions: int
    start_replicas: int  # the floor at time 0, ready from the start
    changes: tuple[ScaleChange, ...]
    hours: tuple[Hour, ...]
    events: int  # requests' events and control rounds processed: the simulation's work

    @property
    def cost_ratio(self) -> float:
        return self.replica_seconds / self.static_replica_seconds

    @property
    def slo_attainment(self) -> float | None:
        return self.slo_met / self.slo_windows if self.slo_ttft_s is not None and self.slo_windows else None

    @property
    def scale_ups(self) -> int:
        return sum(1 for c in self.changes if c.to_replicas > c.from_replicas)

    @property
    def scale_downs(self) -> int:
        return sum(1 for c in self.changes if c.to_replicas < c.from_replicas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "durationSeconds": self.duration_s,
            "endSeconds": round(self.end_s, 3),
            "requests": self.requests,
            "served": self.served,
            "failed": self.failed,
            "replicaSeconds": round(self.replica_seconds, 1),
            "staticReplicas": self.static_replicas,
            "staticReplicaSeconds": round(self.static_replica_seconds, 1),
            "costRatio": round(self.cost_ratio, 4),
            "peakRequestsPerSecond": round(self.peak_rps, 4),
            "replicaRequestsPerSecond": round(self.capacity_rps, 4),
            "ttftSeconds": {
                "p50": _round(self.ttft_p50_s),
                "p90": _round(self.ttft_p90_s),
                "p99": _round(self.ttft_p99_s),
            },
            "slo": {
                "ttftP90Seconds": self.slo_ttft_s,
                "windowSeconds": SLO_WINDOW_S,
                "windows": self.slo_windows,
                "met": self.slo_met,
                "attainment": _round(self.slo_attainment, 4),
            },
            "decisions": self.decisions,
            "scaleUps": self.scale_ups,
            "scaleDowns": self.scale_downs,
            "startReplicas": self.start_replicas,
            "changes": [
                {"t": round(c.t, 3), "from": c.from_replicas, "to": c.to_replicas} for c in self.changes
            ],
            "hours": [
                {
                    "hour": h.hour,
                    "replicas": round(h.replicas, 2),
                    "requestsPerSecond": round(h.rps, 3),
                    "ttftP90Seconds": _round(h.ttft_p90_s),
                    "failed": h.failed,
                }
                for h in self.hours
            ],
        }


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- schedules, fast -----------------------------------------------------------------------------


class _Floors:
    """decide() works out the schedules' floor on every call from their cron expressions, which is
    most of the time of a day's replay. A schedule's hold changes only at its firings (a start, an end,
    a start less prewarmSeconds), so the floor is worked out once per stretch between them, and decide
    gets the policy with that floor as minReplicas and no schedules: the same counts (only the reason's
    wording differs), from the same function."""

    def __init__(self, policy: Autoscaling, start: float, end: float) -> None:
        points = {start}
        for s in policy.schedules:
            zone = ZoneInfo(s.timezone)
            for expr, until, lead in ((s.start, end + s.prewarm_s, s.prewarm_s), (s.end, end, 0.0)):
                fire = _next_firing(expr, zone, start)
                while fire is not None and fire <= until:
                    points |= {p for p in (fire, fire - lead) if start <= p <= end}
                    fire = _next_firing(expr, zone, fire)
        self.at = sorted(points)
        self.policies = [self._policy(policy, t) for t in self.at]

    @staticmethod
    def _policy(policy: Autoscaling, now: float) -> Autoscaling:
        hold = holding(policy.schedules, now)
        floor = max(policy.min_replicas, hold.schedule.min_replicas) if hold else policy.min_replicas
        return replace(policy, min_replicas=floor, schedules=())

    def policy(self, now: float) -> Autoscaling:
        return self.policies[max(0, bisect_right(self.at, now) - 1)]


# --- the simulation ------------------------------------------------------------------------------

# Event kinds, in the order they apply at one instant: slots free before a new request looks for one,
# and the control plane sees the state after everything else at its time.
_FIRST_TOKEN, _FINISH, _READY, _ARRIVAL, _COLLECT, _DECIDE = range(6)


@dataclass(slots=True, eq=False)
class _Request:
    arrival: float
    prefill_s: float
    decode_s: float
    dispatched: float = 0.0


@dataclass(slots=True, eq=False)
class _Instance:
    created: float
    ready: bool = False
    draining: bool = False
    stopped: bool = False
    running: int = 0
    queue: deque[_Request] = field(default_factory=deque)
    gpu: tuple[float, float] | None = None  # (published at, batch occupancy)

    @property
    def in_flight(self) -> int:
        return self.running + len(self.queue)


class _Simulation:
    def __init__(
        self,
        trace: Trace,
        policy: Autoscaling,
        model: InstanceModel,
        gateway: GatewayModel,
        seed: int,
        start: float,
        slo_ttft_s: float | None,
    ) -> None:
        self.trace, self.model, self.gateway, self.start = trace, model, gateway, start
        self.slo = slo_ttft_s
        self.cap = gateway.max_inflight or 2 * model.concurrency
        self.floors = _Floors(policy, start, start + trace.duration_s + 86400)
        self.arrivals = _arrivals(trace, model, random.Random(seed))
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.instances: list[_Instance] = []  # placed: starting or ready, oldest first
        self.draining: list[_Instance] = []
        self.held: deque[_Request] = deque()  # at the gateway
        self.history = History()
        self.desired = 0
        self.last_request_at: float | None = None
        self.last_decision: float | None = None
        self.decide_gen = 0
        self.outstanding = 0
        self.last_answer = 0.0
        # the collector's window and what it published
        self.window_ttfts: list[float] = []
        self.window_answered = 0
        self.ttft_fig: tuple[float, float] | None = None
        self.rps_fig: tuple[float, float] | None = None
        # results
        self.requests = self.served = self.failed = self.decisions = self.events = 0
        self.ttfts: list[float] = []
        self.minutes: dict[int, list[float]] = {}
        self.hour_count = max(1, math.ceil(trace.duration_s / 3600))
        self.hour_ttfts: list[list[float]] = [[] for _ in range(self.hour_count)]
        self.hour_failed = [0] * self.hour_count
        self.hour_arrivals = [0] * self.hour_count
        self.hour_seconds = [0.0] * self.hour_count
        self.replica_seconds = 0.0
        self.changes: list[ScaleChange] = []

    # --- the run ---

    def run(self) -> Result:
        first = self.floors.policy(self.start)
        floor = min(first.min_replicas, first.max_replicas)
        self.instances = [_Instance(created=0.0, ready=True) for _ in range(floor)]
        self.desired = floor
        self._next_arrival()
        self._push(0.0, _COLLECT, None)
        self._push(0.0, _DECIDE, self.decide_gen)
        while self.heap:
            t, kind, _, obj = heapq.heappop(self.heap)
            self._expire(t)
            if t >= self.trace.duration_s and self.outstanding == 0:
                break
            self.events += 1
            if kind == _ARRIVAL:
                self._arrive(t, obj)
            elif kind == _FIRST_TOKEN:
                self._first_token(t, obj)
            elif kind == _FINISH:
                self._finish(t, *obj)
            elif kind == _READY:
                self._ready(t, obj)
            elif kind == _COLLECT:
                self._collect(t)
                self._push(t + COLLECT_INTERVAL_S, _COLLECT, None)
            elif obj == self.decide_gen:
                self._decide(t)
        end = max(self.trace.duration_s, self.last_answer)
        for inst in self.instances + self.draining:
            self._bill(inst.created, end)
        return self._result(end, floor)

    def _push(self, t: float, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, obj))

    def _next_arrival(self) -> None:
        arrival = next(self.arrivals, None)
        if arrival is not None and arrival[0] < self.trace.duration_s:
            t, prompt, output = arrival
            prefill, decode = self.model.service_s(prompt, output)
            self._push(t, _ARRIVAL, _Request(t, prefill, decode))

    # --- requests ---

    def _arrive(self, t: float, req: _Request) -> None:
        self._next_arrival()
        self.requests += 1
        self.outstanding += 1
        self.hour_arrivals[self._hour(t)] += 1
        self.last_request_at = t
        # Nobody overtakes a request already held at the gateway.
        inst = None if self.held else self._pick()
        if inst is not None:
            self._dispatch(t, req, inst)
        elif len(self.held) >= self.gateway.queue_size or self.gateway.queue_timeout_s <= 0:
            self._fail(t)
        else:
            self.held.append(req)
            self._wake(t)

    def _pick(self) -> _Instance | None:
        best: _Instance | None = None
        for inst in self.instances:
            if inst.ready and inst.in_flight < self.cap and (best is None or inst.in_flight < best.in_flight):
                best = inst
        return best

    def _dispatch(self, t: float, req: _Request, inst: _Instance) -> None:
        req.dispatched = t
        if inst.running < self.model.concurrency:
            self._run(t, req, inst)
        else:
            inst.queue.append(req)

    def _run(self, t: float, req: _Request, inst: _Instance) -> None:
        inst.running += 1
        self._push(t + req.prefill_s, _FIRST_TOKEN, req)
        self._push(t + req.prefill_s + req.decode_s, _FINISH, (req, inst))

    def _first_token(self, t: float, req: _Request) -> None:
        self.window_ttfts.append(t - req.dispatched)  # what the engine measures
        ttft = t - req.arrival  # what the user waits
        self.ttfts.append(ttft)
        self.minutes.setdefault(int(t // SLO_WINDOW_S), []).append(ttft)
        self.hour_ttfts[self._hour(t)].append(ttft)

    def _finish(self, t: float, req: _Request, inst: _Instance) -> None:
        inst.running -= 1
        self.served += 1
        self._answered(t)
        if inst.queue:
            self._run(t, inst.queue.popleft(), inst)
        if inst.draining and inst.in_flight == 0:
            self._stop(t, inst)
        self._release(t)

    def _release(self, t: float) -> None:
        """Requests held at the gateway take the room an instance has now, first come first."""
        while self.held and (inst := self._pick()) is not None:
            self._dispatch(t, self.held.popleft(), inst)

    def _expire(self, t: float) -> None:
        # One timeout for all, first come first served: the oldest is always first to go.
        while self.held and self.held[0].arrival + self.gateway.queue_timeout_s <= t:
            req = self.held.popleft()
            self._fail(req.arrival + self.gateway.queue_timeout_s)

    def _fail(self, t: float) -> None:
        self.failed += 1
        self._answered(t)
        self.minutes.setdefault(int(t // SLO_WINDOW_S), []).append(math.inf)
        self.hour_failed[self._hour(t)] += 1

    def _answered(self, t: float) -> None:
        self.outstanding -= 1
        self.window_answered += 1
        self.last_answer = max(self.last_answer, t)

    # --- instances ---

    def _ready(self, t: float, inst: _Instance) -> None:
        if not inst.stopped:
            inst.ready = True
            self._release(t)

    def _stop(self, t: float, inst: _Instance) -> None:
        inst.stopped = True
        self._bill(inst.created, t)
        if inst.draining:
            self.draining.remove(inst)
        else:
            self.instances.remove(inst)

    def _bill(self, a: float, b: float) -> None:
        self.replica_seconds += b - a
        while a < b:
            hour = self._hour(a)
            until = b if hour == self.hour_count - 1 else min(b, (hour + 1) * 3600.0)
            self.hour_seconds[hour] += until - a
            a = until

    def _hour(self, t: float) -> int:
        return min(int(t // 3600), self.hour_count - 1)

    # --- the control plane ---

    def _collect(self, t: float) -> None:
        if self.window_ttfts:
            self.ttft_fig = (t, percentile(self.window_ttfts, 0.9) or 0.0)
        self.rps_fig = (t, self.window_answered / COLLECT_INTERVAL_S)
        for inst in self.instances:
            if inst.ready:
                inst.gpu = (t, inst.running / self.model.concurrency)
        self.window_ttfts, self.window_answered = [], 0

    def _wake(self, t: float) -> None:
        """A request held at the gateway wakes the autoscaler, as the gateway's on_wait does."""
        if self.last_decision != t:
            self.decide_gen += 1
            self._push(t, _DECIDE, self.decide_gen)

    def _decide(self, t: float) -> None:
        now = self.start + t
        obs = self._observe(t, now)
        decision, self.history = decide(obs, self.floors.policy(now), self.history, startup_grace_s=0)
        self.decisions += 1
        self.last_decision = t
        self.decide_gen += 1
        self._push(t + INTERVAL_S, _DECIDE, self.decide_gen)
        if decision.replicas != self.desired:
            self.changes.append(ScaleChange(t, self.desired, decision.replicas))
            self._scale(t, decision.replicas)

    def _observe(self, t: float, now: float) -> Observation:
        def fresh(fig: tuple[float, float] | None) -> float | None:
            return fig[1] if fig is not None and t - fig[0] <= METRIC_FRESH_S else None

        samples = []
        for inst in self.instances:
            values: dict[Metric, float] = {}
            if inst.ready:
                values["waiting_per_replica"] = float(len(inst.queue))
                values["running_per_replica"] = float(inst.running)
                values["kv_cache_usage"] = inst.running / self.model.concurrency
                if (gpu := fresh(inst.gpu)) is not None:
                    values["gpu_utilization"] = gpu
            samples.append(
                InstanceSample(ready=inst.ready, started_at=self.start + inst.created, values=values)
            )
        service: dict[Metric, float] = {}
        if (ttft := fresh(self.ttft_fig)) is not None:
            service["ttft_p90"] = ttft
        if (rps := fresh(self.rps_fig)) is not None:
            service["requests_per_s"] = rps
        return Observation(
            now=now,
            current=self.desired,
            instances=with_gateway_queue(samples, len(self.held)),
            service=service,
            queued=len(self.held),
            last_request_at=None if self.last_request_at is None else self.start + self.last_request_at,
        )

    def _scale(self, t: float, replicas: int) -> None:
        for _ in range(replicas - self.desired):
            inst = _Instance(created=t)
            self.instances.append(inst)
            self._push(t + self.model.startup_s, _READY, inst)
        # The reconciler's drain order: instances not ready first, then the newest.
        surplus = sorted(self.instances, key=lambda i: (i.ready, -i.created))[
            : max(0, self.desired - replicas)
        ]
        for inst in surplus:
            if inst.in_flight == 0:
                self._stop(t, inst)
            else:
                self.instances.remove(inst)
                inst.draining = True
                self.draining.append(inst)
        self.desired = replicas

    # --- the report ---

    def _result(self, end: float, start_replicas: int) -> Result:
        minutes = list(self.minutes.values())
        slo = self.slo
        met = sum(1 for m in minutes if slo is not None and (percentile(m, 0.9) or 0.0) <= slo)
        peak, capacity = peak_rps(self.trace), capacity_rps(self.trace, self.model)
        static = max(1, math.ceil(round(peak / capacity, 9)))
        hours = tuple(
            Hour(
                hour=h,
                replicas=self.hour_seconds[h] / self._hour_length(h, end),
                rps=self.hour_arrivals[h] / min(3600.0, self.trace.duration_s - h * 3600),
                ttft_p90_s=percentile(self.hour_ttfts[h], 0.9),
                failed=self.hour_failed[h],
            )
            for h in range(self.hour_count)
        )
        return Result(
            duration_s=self.trace.duration_s,
            end_s=end,
            requests=self.requests,
            served=self.served,
            failed=self.failed,
            replica_seconds=self.replica_seconds,
            static_replicas=static,
            static_replica_seconds=static * self.trace.duration_s,
            peak_rps=peak,
            capacity_rps=capacity,
            ttft_p50_s=percentile(self.ttfts, 0.5),
            ttft_p90_s=percentile(self.ttfts, 0.9),
            ttft_p99_s=percentile(self.ttfts, 0.99),
            slo_ttft_s=slo,
            slo_windows=len(minutes),
            slo_met=met,
            decisions=self.decisions,
            start_replicas=start_replicas,
            changes=tuple(self.changes),
            hours=hours,
            events=self.events,
        )

    def _hour_length(self, hour: int, end: float) -> float:
        until = end if hour == self.hour_count - 1 else (hour + 1) * 3600.0
        return until - hour * 3600.0


def trace_start(time_zone: str, when: datetime = DEFAULT_START) -> float:
    """Unix seconds of trace time 0: `when` in `time_zone` unless it carries its own."""
    return (when if when.tzinfo else when.replace(tzinfo=ZoneInfo(time_zone))).timestamp()


def simulate(
    trace: Trace,
    policy: Autoscaling,
    model: InstanceModel = InstanceModel(),
    gateway: GatewayModel = GatewayModel(),
    *,
    seed: int = 0,
    start: float | None = None,
    slo_ttft_s: float | None = None,
) -> Result:
    """Replay `trace` under `policy`. `start`: Unix seconds of trace time 0 (for schedules; default
    DEFAULT_START in the first schedule's time zone). `slo_ttft_s`: the SLO on TTFT p90, default the
    policy's ttftP90 target if it has one. The same arguments give the same result."""
    if start is None:
        start = trace_start(policy.schedules[0].timezone if policy.schedules else "UTC")
    if slo_ttft_s is None:
        slo_ttft_s = next((t.value for t in policy.targets if t.metric == "ttft_p90"), None)
    return _Simulation(trace, policy, model, gateway, seed, start, slo_ttft_s).run()
