"""A canary's traffic split as Istio objects, for clusters that say they run Istio: a DestinationRule
with one subset per revision (by the pods' revision label) and a VirtualService sending `weight`
percent to the current revision and the rest to the stable one. Without Istio the tideserve gateway
splits by itself and nothing is rendered here."""

from __future__ import annotations

from typing import Any

from tideserve.platforms.kubernetes.naming import metadata
from tideserve.platforms.kubernetes.settings import LABEL_REVISION

API_VERSION = "networking.istio.io/v1"  # Istio 1.22 and later


def subset(revision: int) -> str:
    return f"r{revision}"


def canary_objects(
    service: str, namespace: str, port: int, current: int, stable: int, weight: int
) -> list[dict[str, Any]]:
    host = f"{service}.{namespace}.svc.cluster.local"
    rule = {
        "apiVersion": API_VERSION,
        "kind": "DestinationRule",
        "metadata": metadata(service, service, namespace),
        "spec": {
            "host": host,
            "subsets": [{"name": subset(r), "labels": {LABEL_REVISION: str(r)}} for r in (current, stable)],
        },
    }

    def route(revision: int, share: int) -> dict[str, Any]:
        destination = {"host": host, "subset": subset(revision), "port": {"number": port}}
        return {"destination": destination, "weight": share}

    virtual = {
        "apiVersion": API_VERSION,
        "kind": "VirtualService",
        "metadata": metadata(service, service, namespace),
        "spec": {"hosts": [host], "http": [{"route": [route(current, weight), route(stable, 100 - weight)]}]},
    }
    return [rule, virtual]
