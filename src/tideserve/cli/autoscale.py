"""`tideserve autoscale simulate`: replay a traffic trace through a policy's decisions, offline (see
autoscaler/simulate.py for the model); reads two files, prints a report, talks to no server."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tideserve.autoscaler import simulate as sim
from tideserve.cli.output import Format, emit
from tideserve.services.spec import _load_text
from tideserve.services.specbase import SpecError

# Usage errors exit 2, as click's own (a bad option) do.
USAGE_ERROR = 2


def simulate(
    trace: Annotated[
        Path,
        typer.Option(
            "--trace",
            help="CSV or JSON lines: `t,rps` rows (a rate from t seconds on, until the next row) or "
            "`t,prompt_tokens,output_tokens` rows (one request each)",
        ),
    ],
    policy: Annotated[
        Path,
        typer.Option(
            "--policy",
            help="a service document with spec.autoscaling, or the autoscaling mapping alone; an optional "
            "top-level `simulation:` mapping sets the instance model (startupSeconds, concurrency, "
            "tokensPerSecond, outputTokens, promptTokens, prefillTokensPerSecond)",
        ),
    ],
    startup_s: Annotated[
        float | None,
        typer.Option("--startup-s", min=0, help="seconds from a decision to a ready replica; default 5"),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, help="requests one replica runs at once; default: the spec's maxBatchSize, else 32"
        ),
    ] = None,
    tokens_per_s: Annotated[
        float | None,
        typer.Option("--tokens-per-s", min=0.001, help="decode speed of one request; default 20"),
    ] = None,
    output_tokens: Annotated[
        int | None, typer.Option(min=1, help="tokens each request of a rate trace generates; default 128")
    ] = None,
    prompt_tokens: Annotated[
        int | None, typer.Option(min=1, help="prompt tokens of each request of a rate trace; default 256")
    ] = None,
    slo_ttft: Annotated[
        float | None,
        typer.Option(
            "--slo-ttft", min=0.001, help="SLO on TTFT p90, seconds; default: the policy's ttftP90 target"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="of the arrivals of a rate trace; same seed, same report")] = 0,
    start: Annotated[
        str | None,
        typer.Option(
            help="wall-clock time of trace time 0, for schedules: an ISO time, in the first schedule's "
            "time zone unless it names one; default 2026-01-05T00:00, a Monday"
        ),
    ] = None,
    output: Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml")] = Format.table,
) -> None:
    """Replay a trace through an autoscaling policy: cost and TTFT against a static deployment."""
    setup = _policy_file(policy)
    parsed = _trace(trace)
    cli = {
        "startup_s": startup_s,
        "concurrency": concurrency,
        "tokens_per_s": tokens_per_s,
        "output_tokens": output_tokens,
        "prompt_tokens": prompt_tokens,
    }
    model = replace(setup.model, **{k: v for k, v in cli.items() if v is not None})
    began = None
    if start is not None:
        try:
            began = sim.trace_start(setup.time_zone, datetime.fromisoformat(start))
        except ValueError:
            _fail(
                f"--start {start!r} is not an ISO time: write e.g. 2026-01-05T00:00 or 2026-01-05T00:00+08:00"
            )
    result = sim.simulate(
        parsed, setup.policy, model, setup.gateway, seed=seed, start=began, slo_ttft_s=slo_ttft
    )
    if output is Format.table:
        typer.echo(render(result, model.startup_s, model.concurrency))
    else:
        emit(result.to_dict(), output)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USAGE_ERROR)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        _fail(f"{path} is not UTF-8 text")


def _policy_file(path: Path) -> sim.PolicyFile:
    try:
        return sim.read_policy_file(_load_text(_read(path)))
    except SpecError as e:
        lines = [f"  {x['loc']}: {x['msg']}" if x["loc"] else f"  {x['msg']}" for x in e.errors]
        _fail("\n".join([f"{path} is not a policy this simulator can replay:", *lines]))


def _trace(path: Path) -> sim.Trace:
    try:
        return sim.parse_trace(_read(path))
    except sim.TraceError as e:
        _fail(f"{path} {e}")


def render(r: sim.Result, startup_s: float, concurrency: int) -> str:
    """The report as text: totals, then one row per hour."""
    hours = r.duration_s / 3600
    failed = f" ({r.failed / r.requests:.2%})" if r.requests else ""
    lines = [
        f"trace      {hours:g} h, {r.requests} requests, peak {r.peak_rps:.3g} req/s",
        f"replica    ready {startup_s:g} s after a decision, {concurrency} at once, "
        f"{r.capacity_rps:.3g} req/s with its batch full",
        f"cost       {r.replica_seconds / 3600:.1f} replica-hours autoscaled; static at the peak's "
        f"{r.static_replicas} replicas: {r.static_replica_seconds / 3600:.1f} ({r.cost_ratio:.0%} of it)",
        f"requests   {r.served} served, {r.failed} failed{failed}",
        f"TTFT       p50 {_s(r.ttft_p50_s)}, p90 {_s(r.ttft_p90_s)}, p99 {_s(r.ttft_p99_s)} "
        "(arrival at the gateway to first token)",
        _slo_line(r),
        f"scaling    {r.scale_ups} up, {r.scale_downs} down, in {r.decisions} decisions",
        "",
        f"{'hour':>4}  {'replicas':>8}  {'req/s':>6}  {'ttft p90':>8}  {'failed':>6}",
    ]
    lines += [
        f"{h.hour:>4}  {h.replicas:>8.2f}  {h.rps:>6.3f}  {_s(h.ttft_p90_s):>8}  {h.failed:>6}"
        for h in r.hours
    ]
    return "\n".join(lines)


def _slo_line(r: sim.Result) -> str:
    if r.slo_ttft_s is None:
        return "SLO        none: give --slo-ttft, or a ttftP90 target in the policy"
    window = f"{sim.SLO_WINDOW_S / 60:g}-minute windows"
    if r.slo_attainment is None:
        return f"SLO        TTFT p90 ≤ {r.slo_ttft_s:g} s: no traffic to judge"
    return (
        f"SLO        TTFT p90 ≤ {r.slo_ttft_s:g} s in {r.slo_attainment:.1%} of {r.slo_windows} "
        f"{window} with traffic (failures count as misses)"
    )


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"
