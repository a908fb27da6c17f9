"""Real processes for gateway tests: built-in engine servers serving the bundled model, and
`tideserve gateway` replicas in front of them (fixed upstreams, or a platform's store)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.controlplane.conftest import free_port

KEY = "test-key"


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{proc.args} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class Engine:
    """One built-in engine server; `restart` brings it back on the same port."""

    port: int
    log: Path
    name: str = "chat"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "tideserve.engine", "--served-model-name", self.name,
            "--port", str(self.port), "--max-model-len", "1024", "--kv-cache-memory", "0.25",
            "--max-batch-size", "16", "--threads", "1",
        ]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.url, self.proc, self.log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples in the engine's /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=5, trust_env=False).text
        return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@dataclass
class GatewayProc:
    port: int
    log: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "tideserve", "gateway", "--port", str(self.port), *self.args]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        wait_healthy(self.url, self.proc, self.log, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def client(self, key: str = KEY, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            trust_env=False,
            **kwargs,
        )

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=5, trust_env=False).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def access_log(self, containing: str = "") -> list[str]:
        """Access-log lines (mentioning `containing`), waiting a little: lines are written in batches."""
        deadline = time.monotonic() + 5
        while True:
            lines = [
                line
                for line in self.log.read_text().splitlines()
                if line.startswith('{"ts"') and containing in line
            ]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Engine]]:
    """Two engine servers of one model, as two instances of a service."""
    logs = tmp_path_factory.mktemp("engines")
    made = [Engine(free_port(), logs / f"engine{i}.log") for i in range(2)]
    try:
        for e in made:
            e.start()
        yield made
    finally:
        for e in made:
            e.kill()


@pytest.fixture(scope="module")
def make_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    logs = tmp_path_factory.mktemp("gateways")
    made: list[GatewayProc] = []

    def make(*args: str, env: dict[str, str] | None = None) -> GatewayProc:
        g = GatewayProc(free_port(), logs / f"gateway{len(made)}.log", list(args), env or {})
        made.append(g)
        g.start()
        return g

    yield make
    for g in made:
        g.stop()


def upstream_args(engines: list[Engine], policy: str, *extra: str) -> list[str]:
    urls = ",".join(e.url for e in engines)
    return ["--upstream", f"chat={urls}", "--policy", policy, "--api-key", KEY, *extra]
