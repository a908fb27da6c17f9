"""The local platform: instances are engine processes on this machine, each in its own process group
(so a stop reaches the whole tree and a control-plane crash does not take them down), logging to a
file opened in append mode (which lets the control plane rotate it under them: observability/logs.py).
A process is identified by pid *and* start time so a recycled pid is never mistaken for ours."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tideserve.observability.logs import LineFilter, Source, search

PORT_BASE = 60000


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    log_path: Path


@dataclass(frozen=True)
class Handle:
    pid: int
    started: float  # psutil create_time, seconds since the epoch


class LocalPlatform:
    def __init__(self) -> None:
        # Our own children must be reaped (waited for) or they linger as zombies that look alive.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, launch: Launch) -> Handle:
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **launch.env}
        with open(launch.log_path, "ab") as log:
            proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:  # died at once; the next observation reports the exit
            started = 0.0
        return Handle(proc.pid, started)

    def exit_code(self, handle: Handle) -> int | None:
        """None while the process runs; its exit code (or -1 when not our child) once gone."""
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            del self._children[handle.pid]
            return code
        return None if self._same_process(handle) else -1

    def terminate(self, handle: Handle) -> None:
        """Ask the instance to stop: the engine finishes in-flight requests on SIGTERM, then exits."""
        self._signal(handle, signal.SIGTERM)

    def kill(self, handle: Handle) -> None:
        self._signal(handle, signal.SIGKILL)

    def _signal(self, handle: Handle, sig: signal.Signals) -> None:
        if not self._same_process(handle):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, sig)  # start_new_session made the pid its group id

    def _same_process(self, handle: Handle) -> bool:
        try:
            p = psutil.Process(handle.pid)
            return abs(p.create_time() - handle.started) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def adopt(self, handle: Handle) -> bool:
        """After a control-plane restart: is the recorded process still the one we started?"""
        return self._same_process(handle)

    def stats(self, handle: Handle) -> tuple[float, int] | None:
        """(CPU seconds, RSS bytes) of the instance's process tree, for monitoring."""
        try:
            root = psutil.Process(handle.pid)
            procs = [root, *root.children(recursive=True)]
            cpu = sum(sum(p.cpu_times()[:2]) for p in procs)
            return cpu, sum(p.memory_info().rss for p in procs)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


def free_port(taken: Iterable[int], base: int = PORT_BASE, host: str = "127.0.0.1") -> int:
    """The lowest port from `base` that no instance holds and nothing else is bound to."""
    used = set(taken)
    for port in range(base, 65536):
        if port in used:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {base} and 65535")


def log_tail(path: str | Path, lines: int = 40) -> str:
    """The last lines of an instance's log, reaching into the rotated copy when the log was just rotated."""
    return "\n".join(line.text for line in search([Source("", Path(path))], LineFilter(), lines))
