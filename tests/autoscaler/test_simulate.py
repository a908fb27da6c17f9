"""The policy simulator: the behaviour a user tunes a policy by (settling, bursts, zero, schedules), its
inputs (traces, policy files) and the CLI's errors. Every run is seeded, so each row is one exact
replay; rows over several seeds check what must hold whatever the arrivals."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tideserve.autoscaler.decide import INTERVAL_S, History, InstanceSample, Observation, decide
from tideserve.autoscaler.policy import (
    DEFAULT_SCALE_DOWN,
    Autoscaling,
    Schedule,
    Target,
)
from tideserve.autoscaler.simulate import (
    GatewayModel,
    InstanceModel,
    Result,
    Trace,
    TraceError,
    _Floors,
    capacity_rps,
    parse_trace,
    read_policy_file,
    simulate,
    trace_start,
)
from tideserve.cli.main import app
from tideserve.services.specbase import SpecError

EXAMPLES = Path(__file__).parents[2] / "examples"
# 0.256 s to the first token, 6.4 s more to the end: 4 at once serve 0.6 requests/s.
MODEL = InstanceModel(startup_s=5, concurrency=4, tokens_per_s=20, output_tokens=128, prompt_tokens=256)
PREFILL_S = 0.256
CAPACITY = capacity_rps(Trace(1, rates=((0, 1),)), MODEL)
QUEUE = (Target("waiting_per_replica", 1), Target("running_per_replica", 3))


def evenly(rps: float, seconds: float) -> Trace:
    """Requests at a steady pace: without Poisson noise a load has one right count of replicas."""
    return Trace(seconds, requests=tuple((i / rps, 256, 128) for i in range(int(rps * seconds))))


def replicas_at(result: Result, t: float) -> int:
    count = result.start_replicas
    for change in result.changes:
        if change.t > t:
            break
        count = change.to_replicas
    return count


def test_a_replica_serves_its_batch_per_request_time():
    assert capacity_rps(Trace(1, rates=((0, 1),)), MODEL) == pytest.approx(4 / (PREFILL_S + 6.4))
    requests = Trace(2, requests=((0, 100, 10), (1, 300, 30)))  # 0.1 + 0.5 s and 0.3 + 1.5 s
    assert capacity_rps(requests, MODEL) == pytest.approx(4 / 1.2)


# --- behaviour -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_a_constant_load_settles_at_the_replicas_it_needs(k):
    # 95% of k replicas' batches: k-1 replicas queue (waiting scales out), k+1 run their batches
    # under 3/4 full (running proposes k), k run them 95% full (within tolerance of a full batch).
    policy = Autoscaling(1, 10, (Target("waiting_per_replica", 1), Target("running_per_replica", 4)))
    result = simulate(evenly(0.95 * k * CAPACITY, 3600), policy, MODEL)
    assert replicas_at(result, 3600) == k
    assert all(c.t < 1800 for c in result.changes), "still changing in the second half hour"
    assert result.failed == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_burst_scales_out_at_once_and_back_after_the_scale_down_window(seed):
    base = 0.5 * CAPACITY
    trace = Trace(2400, rates=((0, base), (600, 10 * base), (900, base), (2400, base)))
    window = DEFAULT_SCALE_DOWN.stabilization_window_s
    result = simulate(trace, Autoscaling(1, 10, QUEUE), MODEL, seed=seed)
    during = [c for c in result.changes if c.t >= 600]
    first = during[0]
    # The queue builds within a round: the new replicas serve by 600 + INTERVAL_S + startup.
    assert first.to_replicas > first.from_replicas
    assert first.t <= 600 + INTERVAL_S
    assert replicas_at(result, 900) >= 5  # the burst needs 5 at full batches
    # Scaling down waits for a window of lower recommendations; they start at the burst's end at the
    # latest, and the default rate (100% per 15 s) takes all the surplus at once.
    assert all(c.t >= first.t + window for c in during if c.to_replicas < c.from_replicas)
    assert max(replicas_at(result, t) for t in range(900 + int(window) + 60, 2400, 10)) <= 3


@pytest.mark.parametrize("seed", [0, 1])
def test_scale_to_zero_saves_replica_seconds_at_the_trough(seed):
    trough = Trace(4 * 3600, rates=((0, 0.002), (7200, 0.002)))  # one request every ~8 minutes
    to_zero = simulate(trough, Autoscaling(0, 4, QUEUE, idle_to_zero_s=180), MODEL, seed=seed)
    kept = simulate(trough, Autoscaling(1, 4, QUEUE), MODEL, seed=seed)
    assert kept.static_replicas == 1
    assert kept.replica_seconds == kept.static_replica_seconds  # one replica all along
    assert to_zero.replica_seconds < 0.5 * kept.replica_seconds
    assert any(c.to_replicas == 0 for c in to_zero.changes)
    # The price: requests that find no replica wait for one to start.
    assert to_zero.ttft_p99_s == pytest.approx(MODEL.startup_s + PREFILL_S)
    assert to_zero.failed == kept.failed == 0


@pytest.mark.parametrize(
    ("startup_s", "served", "failed", "ttft_s"),
    [
        (5, 1, 0, 5 + PREFILL_S),  # held at the gateway while a replica starts, then served
        (29, 1, 0, 29 + PREFILL_S),
        (40, 0, 1, None),  # the gateway gives up after its 30 s queue timeout
    ],
)
def test_a_request_at_zero_waits_for_a_replica_to_start(startup_s, served, failed, ttft_s):
    one = Trace(11, requests=((10.5, 256, 128),))
    policy = Autoscaling(0, 2, QUEUE, idle_to_zero_s=300)
    result = simulate(one, policy, InstanceModel(startup_s=startup_s, concurrency=4), GatewayModel())
    assert result.start_replicas == 0
    # The held request wakes the autoscaler at once: 0→1 at its arrival, not at the next round.
    assert result.changes[0].t == 10.5 and result.changes[0].to_replicas == 1
    assert (result.served, result.failed) == (served, failed)
    assert result.ttft_p50_s == (None if ttft_s is None else pytest.approx(ttft_s))


def test_a_queue_timeout_shorter_than_the_startup_fails_from_zero():
    one = Trace(10, requests=((0, 256, 128),))
    result = simulate(
        one, Autoscaling(0, 2, QUEUE, idle_to_zero_s=300), MODEL, GatewayModel(queue_timeout_s=3)
    )
    assert (result.served, result.failed) == (0, 1)


def test_a_full_gateway_queue_fails_at_once():
    burst = Trace(10, requests=tuple((0, 256, 128) for _ in range(5)))
    result = simulate(burst, Autoscaling(0, 1, QUEUE, idle_to_zero_s=300), MODEL, GatewayModel(queue_size=2))
    assert (result.served, result.failed) == (2, 3)


def test_a_schedule_holds_its_floor_through_its_window_and_prewarm():
    night = Schedule("0 1 * * *", "0 2 * * *", "UTC", min_replicas=2, prewarm_s=300)
    policy = Autoscaling(0, 4, QUEUE, idle_to_zero_s=60, schedules=(night,))
    silent = Trace(3 * 3600, rates=((0, 0), (3600, 0)))
    result = simulate(silent, policy, MODEL, start=trace_start("UTC"))
    # Up 5 minutes before 01:00, down at 02:00 (idle since its replicas started, far past 60 s).
    assert [(c.t, c.from_replicas, c.to_replicas) for c in result.changes] == [(3300, 0, 2), (7200, 2, 0)]
    assert result.replica_seconds == 2 * (7200 - 3300)


SHANGHAI = Schedule("0 8 * * 1-5", "0 20 * * 1-5", "Asia/Shanghai", min_replicas=3, prewarm_s=300)
MONDAY = trace_start("Asia/Shanghai")
BUSY = InstanceSample(True, 0, {"waiting_per_replica": 9, "running_per_replica": 4})
IDLE = InstanceSample(True, 0, {"waiting_per_replica": 0, "running_per_replica": 0})


@pytest.mark.parametrize(
    "at_s",
    [
        0,
        7 * 3600 + 3299,
        7 * 3600 + 3300,
        8 * 3600 - 1,
        8 * 3600,
        12 * 3600,
        20 * 3600 - 1,
        20 * 3600,
        86400 * 5,
    ],
)
@pytest.mark.parametrize(
    ("current", "instances", "queued", "last"),
    [
        (0, [], 0, None),
        (0, [], 3, None),
        (1, [IDLE], 0, -1000.0),
        (2, [BUSY, BUSY], 0, -1.0),
        (5, [IDLE] * 5, 0, -1.0),
    ],
)
def test_the_fast_schedule_floor_decides_as_decide_does(at_s, current, instances, queued, last):
    policy = Autoscaling(0, 6, QUEUE, idle_to_zero_s=300, schedules=(SHANGHAI,))
    floors = _Floors(policy, MONDAY, MONDAY + 6 * 86400)
    now = MONDAY + at_s
    obs = Observation(now, current, instances, {}, queued, None if last is None else now + last)
    real, _ = decide(obs, policy, History(), startup_grace_s=0)
    fast, _ = decide(obs, floors.policy(now), History(), startup_grace_s=0)
    assert (fast.replicas, fast.recommendation) == (real.replicas, real.recommendation)


def test_the_same_seed_gives_the_same_result():
    trace = Trace(1800, rates=((0, 0.5), (600, 2.0), (1200, 0.5)))
    policy = Autoscaling(0, 8, QUEUE, idle_to_zero_s=120)
    first, again = (simulate(trace, policy, MODEL, seed=7) for _ in range(2))
    assert first == again
    assert simulate(trace, policy, MODEL, seed=8).requests != first.requests


def test_the_example_day_replays_in_a_few_seconds_of_work():
    setup = read_policy_file(yaml.safe_load((EXAMPLES / "autoscaling.yaml").read_text()))
    day = parse_trace((EXAMPLES / "traces" / "tidal-24h.csv").read_text())
    assert day.duration_s == 86400
    result = simulate(day, setup.policy, setup.model, setup.gateway)
    # One round every 2 s plus the wakes of held requests; three events per request: bounded work.
    assert 86400 / INTERVAL_S <= result.decisions < 1.05 * 86400 / INTERVAL_S
    assert result.events < result.decisions + 3 * result.requests + 86400 / 5 + 1000
    assert result.served + result.failed == result.requests
    assert result.static_replicas == 6  # the 10x burst's 3.1 requests/s at 0.6 each
    assert result.replica_seconds < 0.7 * result.static_replica_seconds
    assert len(result.hours) == 24
    assert result.hours[4].replicas < 1 < result.hours[20].replicas  # zero at night, more at the peak


# --- traces --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("t,rps\n0,1\n60,2.5\n", Trace(120, rates=((0, 1), (60, 2.5)))),
        ("# a comment\n\n0,0\n300,1\n600,0.5\n", Trace(900, rates=((0, 0), (300, 1), (600, 0.5)))),
        ('{"t": 0, "rps": 1}\n{"rps": 2, "t": 10}\n', Trace(20, rates=((0, 1), (10, 2)))),
        (
            "t,prompt_tokens,output_tokens\n0.5,100,20\n0.5,50,10\n3.2,10,1\n",
            Trace(4, requests=((0.5, 100, 20), (0.5, 50, 10), (3.2, 10, 1))),
        ),
        ('{"t": 1, "prompt_tokens": 8, "output_tokens": 4}\n', Trace(2, requests=((1, 8, 4),))),
    ],
)
def test_trace_forms(text, expected):
    assert parse_trace(text) == expected


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "no rows"),
        ("0,1\n", 1, "two rows or more"),
        ("0,1\n60,x\n", 2, "is not numbers"),
        ("time,rps\n0,1\n", 1, "nor a header"),
        ("0,1\n60,1\n60,2\n", 3, "is not after the row before"),
        ("0,1\n-5,1\n", 2, "0 or more"),
        ("0,1\n60,-1\n", 2, "requests per second, 0 or more"),
        ("0,1\n60,1,2\n", 2, "has t, prompt_tokens, output_tokens where the trace has t, rps"),
        ("0,1,2,3\n", 1, "has 4 columns"),
        ("5,10,10\n4,10,10\n", 2, "sort by t"),
        ("0,10.5,10\n", 1, "whole numbers"),
        ('0,1\n{"t": 1}\n', 2, "write"),
        ('{"t": 1, "rps": "2"}\n{"t": 2, "rps": 1}\n', 1, "not a number"),
        ('{"t": 1,\n', 1, "malformed JSON"),
    ],
)
def test_trace_errors_name_their_line(text, line, words):
    with pytest.raises(TraceError) as e:
        parse_trace(text)
    assert e.value.line == line
    assert words in str(e.value)


# --- policy files --------------------------------------------------------------------------------

SERVICE = {
    "metadata": {"name": "chat"},
    "spec": {
        "model": "smollm2-135m-instruct",
        "parameters": {"maxBatchSize": 6},
        "routing": {"queue": {"maxSize": 10, "timeoutSeconds": 5}, "maxInflightPerInstance": 7},
        "autoscaling": {"maxReplicas": 3, "targets": [{"metric": "ttftP90", "value": 2}]},
    },
}


def test_a_service_document_gives_its_policy_batch_and_gateway_queue():
    setup = read_policy_file(SERVICE)
    assert (setup.policy.max_replicas, setup.policy.targets) == (3, (Target("ttft_p90", 2),))
    assert setup.model.concurrency == 6
    assert setup.gateway == GatewayModel(queue_size=10, queue_timeout_s=5, max_inflight=7)
    assert setup.time_zone == "UTC"


def test_the_autoscaling_mapping_alone_and_a_simulation_section():
    setup = read_policy_file(
        {
            "maxReplicas": 2,
            "targets": [{"metric": "waitingPerReplica", "value": 4}],
            "simulation": {
                "startupSeconds": 60,
                "concurrency": 8,
                "tokensPerSecond": 50,
                "outputTokens": 300,
            },
        }
    )
    assert setup.policy.max_replicas == 2
    assert setup.model == InstanceModel(startup_s=60, concurrency=8, tokens_per_s=50, output_tokens=300)
    assert setup.gateway == GatewayModel()


@pytest.mark.parametrize(
    ("data", "loc", "words"),
    [
        (
            {"maxReplicas": 2, "targets": [{"metric": "waitngPerReplica", "value": 1}]},
            "targets.0.metric",
            "did you mean",
        ),
        (
            {**SERVICE, "spec": {**SERVICE["spec"], "autoscaling": {"maxReplicas": 0}}},
            "spec.autoscaling.maxReplicas",
            "",
        ),
        ({"metadata": {"name": "chat"}, "spec": {"model": "m"}}, "spec.autoscaling", "is required"),
        (
            {**SERVICE, "simulation": {"startupSecs": 5}},
            "simulation.startupSecs",
            "known fields are startupSeconds",
        ),
        ({**SERVICE, "simulation": {"concurrency": 0}}, "simulation.concurrency", "at least 1"),
        (["maxReplicas"], "", "must be a mapping"),
    ],
)
def test_policy_file_errors_are_located(data, loc, words):
    with pytest.raises(SpecError) as e:
        read_policy_file(data)
    assert any(err["loc"] == loc and words in err["msg"] for err in e.value.errors), e.value.errors


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("t,rps\n0,0.5\n600,2\n1200,0.5\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(SERVICE))
    return trace, policy


def run(*args: str):
    return CliRunner().invoke(app, ["autoscale", "simulate", *map(str, args)])


def test_cli_prints_the_report(files):
    trace, policy = files
    table = run("--trace", trace, "--policy", policy, "--startup-s", "10", "--slo-ttft", "1")
    assert table.exit_code == 0, table.output
    assert "replica-hours autoscaled" in table.output and "TTFT p90 ≤ 1 s in" in table.output
    out = run("--trace", trace, "--policy", policy, "--concurrency", "2", "-o", "json")
    report = json.loads(out.stdout)
    assert report["served"] + report["failed"] == report["requests"]
    assert report["slo"]["ttftP90Seconds"] == 2  # the policy's ttftP90 target
    assert report["replicaRequestsPerSecond"] == pytest.approx(2 / (0.256 + 6.4), abs=1e-4)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"trace": "missing.csv"}, "cannot read"),
        ({"policy": "missing.yaml"}, "cannot read"),
        ({"trace_text": "t,rps\n0,1\n60,fast\n"}, "trace.csv line 3: '60,fast' is not numbers"),
        (
            {"policy_text": "maxReplicas: 2\ntargets: [{metric: waitng, value: 1}]\n"},
            "targets.0.metric: unknown metric",
        ),
        (
            {"policy_text": "spec: {model: m, autoscaling: {maxReplicas: 0}}\nmetadata: {name: x}\n"},
            "spec.autoscaling.maxReplicas",
        ),
        ({"policy_text": "maxReplicas: [\n"}, "malformed YAML at line 2"),
    ],
)
def test_cli_errors_exit_2_with_the_place(files, tmp_path, change, words):
    trace, policy = files
    if "trace_text" in change:
        trace.write_text(change["trace_text"])
    if "policy_text" in change:
        policy.write_text(change["policy_text"])
    trace = tmp_path / change.get("trace", trace.name)
    policy = tmp_path / change.get("policy", policy.name)
    result = run("--trace", trace, "--policy", policy)
    assert result.exit_code == 2
    assert words in result.stderr
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_cli_rejects_a_bad_start_time(files):
    trace, policy = files
    result = run("--trace", trace, "--policy", policy, "--start", "Monday")
    assert result.exit_code == 2 and "--start 'Monday' is not an ISO time" in result.stderr
