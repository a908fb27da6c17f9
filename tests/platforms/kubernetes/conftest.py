"""Fixtures for the Kubernetes platform: a running API server double, a kubeconfig file that points at
it, and a KubeApi connected through that file (so every test goes through kubeconfig loading, bearer
auth and real HTTP, as against a cluster)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.platforms.kubernetes.apiserver import ApiServer, kubeconfig
from tideserve.platforms.kubernetes.api import KubeApi
from tideserve.platforms.kubernetes.settings import KubeSettings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    """A fresh double per test: namespaces default, kube-system and tideserve; every CRD installed
    (set `apiserver.crds` to take some away)."""
    server = ApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig_path(apiserver: ApiServer, tmp_path: Path) -> Path:
    """Contexts: `double` (current), `unreachable`, `wrong-token`."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(apiserver, _closed_port())))
    return path


@pytest.fixture
def kube_settings(kubeconfig_path: Path) -> KubeSettings:
    return KubeSettings(namespace="tideserve", kubeconfig=str(kubeconfig_path), context="double")


@pytest.fixture
def kube(kube_settings: KubeSettings) -> Iterator[KubeApi]:
    api = KubeApi.connect(kube_settings)
    yield api
    api.close()
