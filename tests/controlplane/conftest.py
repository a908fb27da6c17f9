"""A real platform per test (module): `tideserve up` as a subprocess on a free port, its own home,
SQLite or a fresh PostgreSQL database; engine instances are real built-in engine processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from alembic.config import Config

from tideserve.store.db import MIGRATIONS, Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Databases:
    """Fresh PostgreSQL databases on demand, dropped at teardown; None stands for SQLite in the home."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.made: list[str] = []

    def new(self) -> str | None:
        if self.kind == "sqlite":
            return None
        import psycopg

        name = f"tideserve_test_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as e:
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {e}")
        self.made.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        if not self.made:
            return
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
            for name in self.made:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def databases(request: pytest.FixtureRequest) -> Iterator[Databases]:
    dbs = Databases(request.param)
    yield dbs
    dbs.drop_all()


@dataclass
class Platform:
    home: Path
    port: int
    db_url: str | None
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home / "up.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return (self.home / "admin.key").read_text().strip()

    def env(self) -> dict[str, str]:
        env = {**os.environ, "TIDESERVE_HOME": str(self.home)}
        env.pop("TIDESERVE_DATABASE_URL", None)
        if self.db_url:
            env["TIDESERVE_DATABASE_URL"] = self.db_url
        return env

    def start(self, *extra: str, timeout: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tideserve", "up", "--port", str(self.port), *extra],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"tideserve up exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"tideserve up not healthy after {timeout} s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=60,
            trust_env=False,
        )

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "tideserve", *args],
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"tideserve {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}"
            )
        return out

    def wait_service(self, name: str, status: str = "Running", timeout: float = 120) -> dict[str, Any]:
        with self.client() as c:
            deadline = time.monotonic() + timeout
            svc: dict[str, Any] = {}
            while time.monotonic() < deadline:
                r = c.get(f"/api/v1/services/{name}")
                if r.status_code == 200:
                    svc = r.json()
                    if svc["status"] == status and (
                        status != "Running" or all(i["state"] == "Running" for i in svc["instances"])
                    ):
                        return svc
                time.sleep(0.25)
        raise AssertionError(
            f"service {name} not {status} after {timeout} s: {svc}\n{self.log.read_text()[-3000:]}"
        )


def engine_processes(home: Path) -> list[psutil.Process]:
    """Engine processes started for this home (found by the environment the platform gives them)."""
    found = []
    for p in psutil.process_iter(["environ"]):
        env = p.info.get("environ") or {}
        if env.get("TIDESERVE_HOME") == str(home) and "TIDESERVE_INSTANCE_ID" in env:
            found.append(p)
    return found


def _cleanup(platform: Platform) -> None:
    if platform.proc is not None and platform.proc.poll() is None:
        platform.stop()
    for p in engine_processes(platform.home):
        p.kill()


@pytest.fixture
def make_platform(tmp_path: Path, databases: Databases) -> Iterator[Any]:
    """Each platform gets its own home and its own store."""
    made: list[Platform] = []

    def make() -> Platform:
        p = Platform(tmp_path / f"home{len(made)}", free_port(), databases.new())
        made.append(p)
        return p

    yield make
    for p in made:
        _cleanup(p)


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[Platform]:
    """One platform without the default service, for API tests that start no engine."""
    p = Platform(tmp_path_factory.mktemp("home"), free_port(), databases.new())
    p.start("--no-default")
    yield p
    _cleanup(p)


def alembic_to(store: Store, step: Callable[[Config, str], None], revision: str) -> None:
    """Move a store's schema to `revision` (`step`: alembic's command.upgrade or command.downgrade),
    as migration tests need to lay an old shape down before `migrate()` brings it up."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        step(cfg, revision)
