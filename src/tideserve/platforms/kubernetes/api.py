"""The Kubernetes API as tideserve uses it: server-side apply of the rendered objects, listing and
pruning what tideserve owns, and reading pods, EndpointSlices, logs and nodes back.

Everything goes through the official client's generic request path (`ApiClient.param_serialize` +
`call_api` + `response_deserialize`) with plain dicts in and out: the renderer emits dicts, several
kinds are custom resources the typed client has no models for, and server-side apply needs its own
content type for every kind alike. Auth, TLS and kubeconfig handling stay the client's."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

from tideserve.platforms.kubernetes.observe import (
    EndpointView,
    NodeView,
    PodView,
    endpoint_views,
    node_view,
    pod_view,
)
from tideserve.platforms.kubernetes.settings import LABEL_SERVICE, MANAGER, KubeSettings

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"  # set on EndpointSlices by the endpoint controller
TIMEOUT = (5.0, 30.0)  # connect, read (seconds): a hung API server must not hang the reconciler


class KubeError(Exception):
    """A Kubernetes API call failed; the message is the API's own (or says why no call was made).
    `status` is the HTTP status (None when the server was not reached), `reason` the Status reason,
    `kind_missing` whether the server does not serve the kind at all (its CRD is not installed)."""

    def __init__(
        self, message: str, status: int | None = None, reason: str | None = None, kind_missing: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.kind_missing = kind_missing


@dataclass(frozen=True)
class Kind:
    """A kind the renderer emits. `operator` names what installs it when it is a custom resource."""

    api_version: str
    kind: str
    plural: str
    operator: str | None = None

    def path(self, namespace: str, name: str | None = None) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{root}/namespaces/{namespace}/{self.plural}" + (f"/{name}" if name else "")


KINDS: tuple[Kind, ...] = (
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("v1", "Service", "services"),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Kind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", "the Prometheus Operator"),
    Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects", "KEDA"),
    Kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets", "LeaderWorkerSet (lws)"),
    Kind("networking.istio.io/v1", "VirtualService", "virtualservices", "Istio"),
    Kind("networking.istio.io/v1", "DestinationRule", "destinationrules", "Istio"),
)
_BY_TYPE = {(k.api_version, k.kind): k for k in KINDS}


def kind_of(api_version: str, kind: str) -> Kind:
    try:
        return _BY_TYPE[(api_version, kind)]
    except KeyError:
        known = ", ".join(f"{k.api_version} {k.kind}" for k in KINDS)
        raise KubeError(f"tideserve does not manage {api_version} {kind} (it manages: {known})") from None


@dataclass(frozen=True, order=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        return cls(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def _status_body(e: ApiException) -> Mapping[str, Any]:
    """The Status object of an error response ({} when the body is not one, e.g. a proxy's page)."""
    try:
        body = json.loads(e.body or "")
    except ValueError:
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def _api_error(e: ApiException, what: str, kind: Kind | None = None, namespace: str = "") -> KubeError:
    status = _status_body(e)
    details = status.get("details") or {}
    reason = status.get("reason") or e.reason
    message = status.get("message") or (e.body or "").strip() or str(e.reason)
    # Not one object missing but the whole resource: its API group/version is not served.
    kind_missing = e.status == 404 and kind is not None and not details.get("name")
    if e.status == 404 and details.get("kind") == "namespaces":
        message = f"namespace {namespace} does not exist (kubectl create namespace {namespace})"
    elif kind_missing and kind is not None:
        if kind.operator:
            message = f"the cluster has no {kind.kind} ({kind.api_version}): install {kind.operator}"
        else:
            message = f"the API server does not serve {kind.api_version} {kind.kind}: {message}"
    else:
        causes = [
            f"{c.get('field', '')}: {c.get('message', '')}".lstrip(": ")
            for c in details.get("causes") or []
            if c.get("message") and c["message"] not in message
        ]
        message = "; ".join([message, *causes])
    return KubeError(f"{what}: {message}", status=e.status, reason=reason, kind_missing=kind_missing)


class KubeApi:
    """One cluster's API, scoped to the namespace tideserve renders into."""

    def __init__(self, client: ApiClient, namespace: str) -> None:
        self._client = client
        self.namespace = namespace

    @classmethod
    def connect(cls, settings: KubeSettings) -> KubeApi:
        if settings.kubeconfig:
            return cls(_kubeconfig_client(settings.kubeconfig, settings.context), settings.namespace)
        cfg = Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as e:
            raise KubeError(
                "no kubeconfig set and not running in a pod with a service account "
                f"(in-cluster config: {e}): set the cluster's kubeconfig"
            ) from None
        return cls(ApiClient(cfg), settings.namespace)

    @property
    def server(self) -> str:
        return str(self._client.configuration.host)

    def close(self) -> None:
        self._client.close()

    # --- requests ----------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
        stream: bool = False,
    ) -> RESTResponse:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        request = self._client.param_serialize(
            method, path, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        # Streams (follow) wait for lines as long as the container writes: only the connect is bounded.
        timeout = (TIMEOUT[0], None) if stream else TIMEOUT
        try:
            return self._client.call_api(*request, _request_timeout=timeout)
        except urllib3.exceptions.MaxRetryError as e:
            raise KubeError(
                f"{what}: cannot reach the Kubernetes API server at {self.server}: {e.reason}"
            ) from None
        except (urllib3.exceptions.HTTPError, ApiException) as e:
            detail = getattr(e, "reason", None) or e
            raise KubeError(
                f"{what}: cannot reach the Kubernetes API server at {self.server}: {detail}"
            ) from None

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        kind: Kind | None = None,
        returns: str = "object",
        **kw: Any,
    ) -> Any:
        response = self._send(method, path, what, **kw)
        try:
            response.read()
        except urllib3.exceptions.HTTPError as e:  # a read timeout, a connection cut mid-body
            raise KubeError(f"{what}: the answer from {self.server} broke off: {e}") from None
        try:
            return self._client.response_deserialize(response, {"2XX": returns}).data
        except ApiException as e:
            raise _api_error(e, what, kind, self.namespace) from None

    # --- objects -----------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one object (create or update); returns the object as the server has it."""
        kind = kind_of(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        namespace = meta.get("namespace") or self.namespace
        body = {**obj, "metadata": {**meta, "namespace": namespace}}
        query = [("fieldManager", MANAGER), ("force", "true")]
        what = f"apply {kind.kind}/{meta['name']}"
        path = kind.path(namespace, meta["name"])
        return self._call(
            "PATCH", path, what, kind=kind, query=query, body=body, content_type=APPLY_CONTENT_TYPE
        )

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        kind = kind_of(ref.api_version, ref.kind)
        try:
            return self._call("GET", kind.path(self.namespace, ref.name), f"get {ref}", kind=kind)
        except KubeError as e:
            if e.status == 404 and not e.kind_missing:
                return None
            raise

    def _list(
        self, path: str, what: str, selector: str | None, kind: Kind | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else None
        return self._call("GET", path, what, kind=kind, query=query)["items"]

    def owned(self, service: str) -> list[ObjectRef]:
        """Every object of a managed kind labelled with the service and managed by tideserve. Kinds the
        cluster does not have (no KEDA, no Istio ...) simply hold none."""
        selector = f"{LABEL_SERVICE}={service},{LABEL_MANAGED_BY}={MANAGER}"
        refs = []
        for kind in KINDS:
            try:
                items = self._list(kind.path(self.namespace), f"list {kind.plural}", selector, kind)
            except KubeError as e:
                if e.kind_missing:
                    continue
                raise
            # List items carry no kind/apiVersion for built-in kinds: the kind is the one we listed.
            refs += [ObjectRef(kind.api_version, kind.kind, item["metadata"]["name"]) for item in items]
        return sorted(refs)

    def delete(self, ref: ObjectRef, grace_seconds: int | None = None) -> bool:
        """Delete one object with foreground propagation (its dependents go first); False when it was
        already gone."""
        kind = kind_of(ref.api_version, ref.kind)
        return self._delete(kind.path(self.namespace, ref.name), f"delete {ref}", kind, grace_seconds)

    def _delete(self, path: str, what: str, kind: Kind | None, grace_seconds: int | None) -> bool:
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Foreground",
        }
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        try:
            self._call("DELETE", path, what, kind=kind, body=options, content_type="application/json")
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return True

    def prune(self, service: str, keep: set[ObjectRef]) -> list[ObjectRef]:
        """Delete the service's owned objects that the current rendering no longer has."""
        gone = [ref for ref in self.owned(service) if ref not in keep]
        return [ref for ref in gone if self.delete(ref)]

    def delete_service(self, service: str, grace_seconds: int) -> list[ObjectRef]:
        """Delete everything tideserve owns for a service. The owners go first (so no controller makes
        new pods), then each pod is deleted with `grace_seconds`: SIGTERM, during which the engine drains
        its in-flight requests, then SIGKILL. The API only ever shortens a grace period already running,
        so a pod keeps the shorter of its terminationGracePeriodSeconds and `grace_seconds`."""
        deleted = [ref for ref in self.owned(service) if self.delete(ref)]
        for pod in self.pods(service):
            path = f"/api/v1/namespaces/{self.namespace}/pods/{pod.name}"
            self._delete(path, f"delete pod {pod.name}", None, grace_seconds)
        return deleted

    # --- reading back ------------------------------------------------------------------------------

    def pods(self, service: str) -> list[PodView]:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        items = self._list(path, "list pods", f"{LABEL_SERVICE}={service}")
        return sorted((pod_view(p) for p in items), key=lambda p: p.name)

    def endpoints(self, service: str) -> list[EndpointView]:
        """The addresses behind a Service, from its EndpointSlices (how the gateway finds pods)."""
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
        slices = self._list(path, "list endpointslices", f"{LABEL_SERVICE_NAME}={service}")
        return [view for s in slices for view in endpoint_views(s)]

    def nodes(self) -> list[NodeView]:
        items = self._list("/api/v1/nodes", "list nodes", None)
        return sorted((node_view(n) for n in items), key=lambda n: n.name)

    @staticmethod
    def _log_query(
        container: str | None, since_seconds: int | None, tail_lines: int | None, previous: bool
    ) -> list[tuple[str, Any]]:
        query: list[tuple[str, Any]] = []
        if container:
            query.append(("container", container))
        if since_seconds is not None:
            query.append(("sinceSeconds", since_seconds))
        if tail_lines is not None:
            query.append(("tailLines", tail_lines))
        if previous:
            query.append(("previous", "true"))
        return query

    def logs(
        self,
        pod: str,
        *,
        container: str | None = None,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
        previous: bool = False,
    ) -> str:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log"
        query = self._log_query(container, since_seconds, tail_lines, previous)
        return self._call("GET", path, f"logs of pod {pod}", returns="str", query=query, accept="*/*") or ""

    def follow_logs(
        self,
        pod: str,
        *,
        container: str | None = None,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> Iterator[str]:
        """The pod's log lines as they are written, until the container stops (or the caller stops
        iterating: closing the generator closes the connection)."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log"
        query = [*self._log_query(container, since_seconds, tail_lines, False), ("follow", "true")]
        what = f"logs of pod {pod}"
        response = self._send("GET", path, what, query=query, accept="*/*", stream=True)
        raw: urllib3.BaseHTTPResponse = response.response
        try:
            if not 200 <= response.status <= 299:
                response.read()
                raise _api_error(ApiException(http_resp=response), what, None, self.namespace)
            pending = b""
            for chunk in raw.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode("utf-8", "replace") for line in lines)
            if pending:
                yield pending.decode("utf-8", "replace")
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"{what}: the stream from {self.server} broke: {e}") from None
        finally:
            # Close before release: an unfinished stream must not go back to the pool as a live connection.
            raw.close()
            raw.release_conn()


def _kubeconfig_client(path: str, context: str | None) -> ApiClient:
    file = os.path.expanduser(path)
    if not os.path.isfile(file):
        raise KubeError(f"kubeconfig {file} does not exist")
    try:
        contexts, current = config.list_kube_config_contexts(file)
        names = [c["name"] for c in contexts]
        if context is not None and context not in names:
            raise KubeError(f"kubeconfig {file} has no context {context!r} (it has: {', '.join(names)})")
        if context is None and not current:
            raise KubeError(f"kubeconfig {file} sets no current-context: set the cluster's context")
        # persist_config=False: refreshed tokens must not be written back into the user's file.
        return config.new_client_from_config(config_file=file, context=context, persist_config=False)
    except config.ConfigException as e:
        where = f"context {context!r}" if context else "its current context"
        raise KubeError(f"kubeconfig {file} ({where}): {e}") from None
