"""Names and labels of the objects one service renders as."""

from __future__ import annotations

import re
from typing import Any

from tideserve.platforms.kubernetes.settings import LABEL_SERVICE, MANAGER

# Which workload (Deployment or LeaderWorkerSet) a pod belongs to. Deployment selectors are immutable,
# so they cannot carry the revision; and the canary's stable Deployment must not select the current
# one's pods (overlapping selectors make both controllers fight over them). The workload's own name
# is stable and unique, so selectors use it. settings.py has no such label; it lives here.
LABEL_WORKLOAD = "tideserve.io/workload"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_LABEL_MAX = 63
# A LeaderWorkerSet's StatefulSets are named <lws> and <lws>-<group>, and a StatefulSet's pods carry
# controller-revision-hash=<statefulset>-<hash of up to 10 characters>, a label value (≤ 63): with
# groups numbered up to 64 that leaves 63 - 11 - 3 = 49 characters for the LeaderWorkerSet's name.
LWS_NAME_MAX = 49


def object_name(service: str, *suffixes: str, limit: int = DNS_LABEL_MAX) -> str:
    """<service>-<suffix>...: a DNS label, or ValueError saying how much shorter the service must be."""
    name = "-".join([service, *suffixes])
    if not _DNS_LABEL.fullmatch(name):
        raise ValueError(f"{name!r} is not a DNS label: use lowercase letters, digits and '-'")
    if len(name) > limit:
        raise ValueError(
            f"object name {name!r} is {len(name)} characters, over the {limit} Kubernetes allows here: "
            f"rename the service to at most {limit - (len(name) - len(service))} characters"
        )
    return name


def common_labels(service: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tideserve",
        "app.kubernetes.io/instance": service,
        "app.kubernetes.io/managed-by": MANAGER,
        LABEL_SERVICE: service,
    }


def metadata(name: str, service: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": common_labels(service)}


def prometheus_label(label: str) -> str:
    """The Prometheus label the PodMonitor copies a pod label to (tideserve.io/service ->
    tideserve_service): engine metrics carry them, and the autoscalers' queries match on them."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label.replace(".io/", "_"))


def meta_label(label: str) -> str:
    """Prometheus' service-discovery name of a pod label (tideserve.io/service ->
    __meta_kubernetes_pod_label_tideserve_io_service)."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)
