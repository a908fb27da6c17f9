"""$TIDESERVE_HOME: the store, admin key, logs and the running platform's pid file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil


def default_home() -> Path:
    if env := os.environ.get("TIDESERVE_HOME"):
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "tideserve"


@dataclass(frozen=True)
class Running:
    """What `tideserve up` writes so `down` and the CLI find it."""

    pid: int
    started: float
    host: str
    port: int

    @property
    def url(self) -> str:
        return client_url(self.host, self.port)


def client_url(host: str, port: int) -> str:
    """Where a local client reaches a server listening on host:port (a wildcard means loopback)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def pid_file(home: Path) -> Path:
    return home / "tideserve.pid"


def read_running(home: Path) -> Running | None:
    """The platform running on this home, or None (a stale pid file counts as none)."""
    try:
        data = json.loads(pid_file(home).read_text())
        run = Running(int(data["pid"]), float(data["started"]), str(data["host"]), int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        proc = psutil.Process(run.pid)
        if abs(proc.create_time() - run.started) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE:
            return run
    except psutil.Error:
        pass
    return None


def write_running(home: Path, host: str, port: int) -> None:
    me = psutil.Process()
    tmp = pid_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": me.pid, "started": me.create_time(), "host": host, "port": port}))
    tmp.replace(pid_file(home))


def clear_running(home: Path) -> None:
    run = read_running(home)
    if run is None or run.pid == os.getpid():
        pid_file(home).unlink(missing_ok=True)
