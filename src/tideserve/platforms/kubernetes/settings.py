"""What a Kubernetes cluster, a resource group in it and a service's model say about the objects
tideserve renders there. Plain frozen data: the store keeps the cluster's and group's settings as JSON
(camelCase, as users write them), the renderer (manifests.py) and the reconciler read these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pydantic.alias_generators import to_camel

MANAGER = "tideserve"  # server-side apply's field manager, and app.kubernetes.io/managed-by
LABEL_SERVICE = "tideserve.io/service"
LABEL_REVISION = "tideserve.io/revision"
LABEL_ROLE = "tideserve.io/role"  # both | prefill | decode
LABEL_COMPONENT = "tideserve.io/component"  # engine (the pods) | the object's own part


@dataclass(frozen=True)
class KubeSettings:
    """One cluster whose platform is kubernetes."""

    namespace: str = "tideserve"
    kubeconfig: str | None = None  # a path; None: in-cluster (the pod's service account)
    context: str | None = None  # of the kubeconfig; None: its current context
    # How spec.autoscaling renders: an HPA v2 on Prometheus-adapter pod metrics, or a KEDA
    # ScaledObject on Prometheus queries (which alone can scale to zero and has cron triggers).
    autoscaler: Literal["hpa", "keda"] = "keda"
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"  # KEDA's queries go here
    istio: bool = False  # canary weights render as an Istio VirtualService
    images: Mapping[str, str] = field(default_factory=dict)  # engine -> image, over each adapter's
    image_pull_secrets: tuple[str, ...] = ()
    model_pvc: str | None = None  # a PVC with the models, mounted read-only at /models
    model_cache_dir: str = "/var/lib/tideserve/models"  # node-local (hostPath) cache for s3:// pulls
    s3_pull_image: str = "amazon/aws-cli:2.22.35"  # the init container that copies s3:// models
    s3_secret: str | None = None  # a Secret with AWS_* keys for that init container
    shm_size: str = "16Gi"  # /dev/shm (NCCL and the engines' shared-memory queues)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KubeSettings:
        """From the camelCase JSON the store keeps (the API's KubernetesIn); unknown keys are ignored."""
        names = {to_camel(f.name): f.name for f in fields(cls)}
        values: dict[str, Any] = {names[k]: v for k, v in data.items() if k in names}
        if "image_pull_secrets" in values:
            values["image_pull_secrets"] = tuple(values["image_pull_secrets"])
        return cls(**values)


@dataclass(frozen=True)
class Placement:
    """A resource group on Kubernetes: the nodes its pods may land on."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ModelSource:
    """Where the engine finds the model inside its pod."""

    kind: Literal["pvc", "s3", "remote"]
    # pvc: the path under the cluster's model PVC; s3: the s3:// URI copied into the node cache;
    # remote: what the engine pulls itself (a Hugging Face repo id, say)
    uri: str


@dataclass(frozen=True)
class RenderInput:
    """One service as it should run now. `document` is the current revision's whole document
    (metadata + spec, camelCase, defaults applied); `stable` the canary's stable revision, kept
    beside it, as (revision number, document)."""

    document: Mapping[str, Any]
    revision: int
    model: ModelSource
    settings: KubeSettings = field(default_factory=KubeSettings)
    placement: Placement = field(default_factory=Placement)
    stable: tuple[int, Mapping[str, Any]] | None = None
