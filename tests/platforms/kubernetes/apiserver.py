"""A Kubernetes API server double: a real HTTP server (Starlette on uvicorn, in a background thread)
speaking the part of the REST API tideserve's KubeApi uses, with the API's semantics and response
shapes: server-side apply (create or update, uid kept, resourceVersion bumped only on a change,
generation bumped only on a spec change, 201 on create), GET and LIST with label selectors (list items
without kind/apiVersion for built-in kinds, as the real server sends them), DELETE with DeleteOptions
(pods get a graceful deletionTimestamp, foreground deletion waits for dependents), Status objects for
errors (404 for unknown objects, namespaces and kinds whose CRD is not installed, 422 with causes for
invalid objects, 401 for a wrong token), and pods/log (tailLines, sinceSeconds, previous, follow as a
chunked stream).

No controllers run by themselves; tests drive them through hooks, as if they were the kubelet, the
scheduler, the Deployment controller and the endpoint controller:

    names = server.run_deployment("chat")          # the Deployment controller makes its pods
    server.schedule(names[0], "gpu-1")             # the scheduler binds it
    server.run_pod(names[0], ready=True)           # the kubelet runs it; EndpointSlices follow
    server.write_log(names[0], "loading\\n")        # the container writes
    server.finish_termination(names[0])            # after a graceful delete: the kubelet is done

Written from the Kubernetes API reference; it is a double, not a conformance-tested server: an apply
replaces what the applier sent before (no per-field ownership, so no conflicts; tideserve always
forces), and there is no watch.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

NAMESPACED, CLUSTER = True, False
CRD_GROUPS = frozenset(
    {"monitoring.coreos.com", "keda.sh", "leaderworkerset.x-k8s.io", "networking.istio.io"}
)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ENDPOINT_CONTROLLER = "endpointslice-controller.k8s.io"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool = NAMESPACED

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the API names the resource in messages: deployments.apps, pods."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def crd(self) -> bool:
        return self.group in CRD_GROUPS


RESOURCES = (
    Resource("", "v1", "Pod", "pods"),
    Resource("", "v1", "Service", "services"),
    Resource("", "v1", "Node", "nodes", CLUSTER),
    Resource("apps", "v1", "Deployment", "deployments"),
    Resource("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Resource("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    Resource("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors"),
    Resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects"),
    Resource("leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet", "leaderworkersets"),
    Resource("networking.istio.io", "v1", "VirtualService", "virtualservices"),
    Resource("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {r.kind: r for r in RESOURCES}
POD, SERVICE, NODE, SLICE = (_BY_KIND[k] for k in ("Pod", "Service", "Node", "EndpointSlice"))

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class ApiError(Exception):
    """Answered as a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, details: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = dict(details)
    return body


def not_found(resource: Resource, name: str) -> ApiError:
    details = {"name": name, "kind": resource.plural, **({"group": resource.group} if resource.group else {})}
    return ApiError(404, "NotFound", f'{resource.qualified} "{name}" not found', details)


def no_such_resource() -> ApiError:
    # What the server answers for a path no API group serves (e.g. a CRD that is not installed).
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# --- label selectors --------------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*")
_EQUALITY = re.compile(r"\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s,]*)\s*")


def _split_requirements(selector: str) -> list[str]:
    """Commas separate requirements except inside the parentheses of a set (`k in (a,b)`)."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current] if p.strip()]


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    for req in _split_requirements(selector or ""):
        if m := _SET_REQUIREMENT.fullmatch(req):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in") or (op == "in" and key not in labels):
                return False
        elif m := _EQUALITY.fullmatch(req):
            key, op, value = m.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
        elif req.strip().startswith("!"):
            if req.strip()[1:] in labels:
                return False
        elif req.strip() not in labels:
            if not re.fullmatch(r"[\w./-]+", req.strip()):
                raise bad_request(f"unable to parse requirement: {req.strip()!r}")
            return False
    return True


# --- validation (422) -------------------------------------------------------------------------------


def _cause(field_path: str, reason: str, message: str) -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field_path}


def _name_causes(resource: Resource, name: str) -> list[dict[str, str]]:
    if resource is SERVICE:
        ok = len(name) <= 63 and _DNS_1035.fullmatch(name)
        rule = "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter"
    else:
        ok = len(name) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in name.split("."))
        rule = "a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.'"
    if ok:
        return []
    return [_cause("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": must be {rule}')]


def _label_causes(labels: Mapping[str, Any], at: str) -> list[dict[str, str]]:
    causes = []
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            causes.append(
                _cause(
                    f"{at}[{key}]",
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a label value has at most 63 characters: letters, digits, '
                    "'-', '_' or '.', beginning and ending with a letter or digit",
                )
            )
    return causes


def _deployment_causes(spec: Mapping[str, Any]) -> list[dict[str, str]]:
    selector = (spec.get("selector") or {}).get("matchLabels")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    causes = []
    if not selector:
        causes.append(_cause("spec.selector", "FieldValueRequired", "Required value"))
    elif any(labels.get(k) != v for k, v in selector.items()):
        causes.append(
            _cause(
                "spec.template.metadata.labels",
                "FieldValueInvalid",
                f"Invalid value: {json.dumps(labels)}: `selector` does not match template `labels`",
            )
        )
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        causes.append(_cause("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    for i, c in enumerate(containers):
        if not c.get("image"):
            causes.append(
                _cause(f"spec.template.spec.containers[{i}].image", "FieldValueRequired", "Required value")
            )
    return causes


def validate(resource: Resource, obj: Mapping[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    causes = _name_causes(resource, name) + _label_causes(meta.get("labels") or {}, "metadata.labels")
    if resource.kind == "Deployment":
        causes += _deployment_causes(obj.get("spec") or {})
    if not causes:
        return
    listed = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    qualified_kind = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    message = f'{qualified_kind} "{name}" is invalid: ' + (f"[{listed}]" if len(causes) > 1 else listed)
    details = {"name": name, "kind": resource.kind, "causes": causes}
    if resource.group:
        details["group"] = resource.group
    raise ApiError(422, "Invalid", message, details)


# --- the store --------------------------------------------------------------------------------------

_USER_METADATA = ("labels", "annotations", "ownerReferences", "finalizers")  # what an applier sets
Key = tuple[Resource, str, str]  # resource, namespace ("" when cluster-scoped), name


@dataclass
class LogLine:
    at: float
    text: str


@dataclass
class ContainerLog:
    lines: list[LogLine] = field(default_factory=list)
    previous: list[LogLine] | None = None
    ended: bool = False  # the container stopped: a follow stream ends


@dataclass
class Call:
    """One request as the server saw it: tests check what the client sent."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any


class ApiServer:
    def __init__(
        self,
        token: str = "test-token",
        crds: Iterable[str] = CRD_GROUPS,
        namespaces: Iterable[str] = ("default", "kube-system", "tideserve"),
    ) -> None:
        self.token = token
        self.crds = set(crds)  # API groups whose CRDs are installed; change it to "uninstall" one
        self.namespaces = set(namespaces)
        self.calls: list[Call] = []
        self._objects: dict[Key, dict[str, Any]] = {}
        self._logs: dict[tuple[str, str, str], ContainerLog] = {}  # namespace, pod, container
        self._rv = 1000
        self._ips = 0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "PATCH", "DELETE", "POST", "PUT"])]
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the API server double did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    # --- HTTP ---------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(
            Call(
                request.method,
                request.url.path,
                dict(request.query_params),
                request.headers.get("content-type"),
                body.decode() or None,
            )
        )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse(status_body(401, "Unauthorized", "Unauthorized", None), status_code=401)
        try:
            with self._lock:
                return self._route(request, body)
        except ApiError as e:
            return JSONResponse(status_body(e.code, e.reason, e.message, e.details), status_code=e.code)

    def _route(self, request: Request, body: bytes) -> Response:
        resource, namespace, name, sub = self._parse_path(request.url.path)
        method, query = request.method, request.query_params
        if name is None:
            if method == "GET":
                return JSONResponse(self._list(resource, namespace, query.get("labelSelector")))
            raise ApiError(405, "MethodNotAllowed", f"the double does not implement {method} on collections")
        if sub == "log" and resource is POD and method == "GET":
            return self._log_response(namespace, name, query)
        if sub is not None:
            raise no_such_resource()
        if method == "GET":
            return JSONResponse(self._get(resource, namespace, name))
        if method == "PATCH":
            return self._apply(resource, namespace, name, request, body)
        if method == "DELETE":
            return JSONResponse(self._delete(resource, namespace, name, self._delete_options(query, body)))
        raise ApiError(405, "MethodNotAllowed", f"the double does not implement {method} on objects")

    def _parse_path(self, path: str) -> tuple[Resource, str, str | None, str | None]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise no_such_resource()
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise no_such_resource()
        resource = _BY_PATH.get((group, version, rest[0]))
        if resource is None or (resource.crd and group not in self.crds):
            raise no_such_resource()
        if resource.namespaced != bool(namespace):
            raise no_such_resource()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return resource, namespace, name, sub

    # --- reads --------------------------------------------------------------------------------------

    def _present(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(item))

    def _get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self._objects.get((resource, namespace, name))
        if obj is None:
            raise not_found(resource, name)
        return self._present(obj)

    def _list(self, resource: Resource, namespace: str, selector: str | None) -> dict[str, Any]:
        items = [
            obj
            for (r, ns, _), obj in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
            if r is resource
            and ns == namespace
            and selector_matches(selector, obj["metadata"].get("labels") or {})
        ]
        if not resource.crd:
            # The real server leaves kind/apiVersion off the items of built-in lists.
            items = [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")} for obj in items]
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": [self._present(i) for i in items],
        }

    # --- server-side apply --------------------------------------------------------------------------

    def _apply(
        self, resource: Resource, namespace: str, name: str, request: Request, body: bytes
    ) -> Response:
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip()
        if content_type != "application/apply-patch+yaml":
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the double only implements server-side apply, not {content_type}",
            )
        manager = request.query_params.get("fieldManager")
        if not manager:
            raise bad_request("fieldManager is required for apply requests")
        try:
            applied = yaml.safe_load(body)
        except yaml.YAMLError as e:
            raise bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(applied, dict):
            raise bad_request("the body of an apply request must be an object")
        if (applied.get("apiVersion"), applied.get("kind")) != (resource.api_version, resource.kind):
            raise bad_request(
                f"the body is a {applied.get('apiVersion')} {applied.get('kind')}, the URL names "
                f"{resource.api_version} {resource.kind}"
            )
        meta = applied.get("metadata") or {}
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if resource.namespaced and namespace not in self.namespaces:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        validate(resource, applied)
        existing = self._objects.get((resource, namespace, name))
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            raise ApiError(409, "Conflict", f'{resource.qualified} "{name}" is being deleted')
        obj, changed = self._merge(resource, namespace, applied, existing, manager)
        if changed:
            self._store(resource, namespace, obj)
        return JSONResponse(self._present(obj), status_code=201 if existing is None else 200)

    def _merge(
        self,
        resource: Resource,
        namespace: str,
        applied: Mapping[str, Any],
        existing: Mapping[str, Any] | None,
        manager: str,
    ) -> tuple[dict[str, Any], bool]:
        """The object after the apply, and whether anything changed. The applier's fields replace what
        it applied before; server-set fields (uid, creationTimestamp, clusterIP, status) stay."""
        meta_in = applied.get("metadata") or {}
        content = {k: copy.deepcopy(v) for k, v in applied.items() if k not in ("metadata", "status")}
        self._default(resource, content, existing)
        user_meta = {k: copy.deepcopy(meta_in[k]) for k in _USER_METADATA if k in meta_in}
        if existing is not None:
            old_content = {k: v for k, v in existing.items() if k not in ("metadata", "status")}
            old_meta = {k: existing["metadata"][k] for k in _USER_METADATA if k in existing["metadata"]}
            if old_content == content and old_meta == user_meta:
                return dict(existing), False
        self._rv += 1
        meta = {
            "name": meta_in["name"],
            **({"namespace": namespace} if resource.namespaced else {}),
            "uid": existing["metadata"]["uid"] if existing else str(uuid.uuid4()),
            "resourceVersion": str(self._rv),
            "generation": 1,
            "creationTimestamp": existing["metadata"]["creationTimestamp"] if existing else stamp(now()),
            **user_meta,
            "managedFields": [
                {
                    "manager": manager,
                    "operation": "Apply",
                    "apiVersion": resource.api_version,
                    "time": stamp(now()),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {},
                }
            ],
        }
        if existing is not None:
            old_spec = {k: v for k, v in existing.items() if k not in ("metadata", "status")}
            meta["generation"] = existing["metadata"]["generation"] + (old_spec != content)
        obj = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": meta, **content}
        if existing is not None and "status" in existing:
            obj["status"] = existing["status"]
        elif not resource.crd:
            obj["status"] = {"loadBalancer": {}} if resource is SERVICE else {}
        return obj, True

    def _default(
        self, resource: Resource, content: dict[str, Any], existing: Mapping[str, Any] | None
    ) -> None:
        """Defaults the real server fills in, where tests can see them."""
        if resource is SERVICE:
            spec = content.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            old_ip = ((existing or {}).get("spec") or {}).get("clusterIP")
            spec.setdefault("clusterIP", old_ip or self._next_ip("10.96"))
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        if resource.kind == "Deployment":
            content.setdefault("spec", {}).setdefault("replicas", 1)

    def _next_ip(self, prefix: str) -> str:
        self._ips += 1
        return f"{prefix}.{self._ips // 250}.{self._ips % 250 + 2}"

    def _store(self, resource: Resource, namespace: str, obj: dict[str, Any]) -> None:
        self._objects[(resource, namespace, obj["metadata"]["name"])] = obj
        if resource in (POD, SERVICE):
            self._sync_endpoints(namespace)

    # --- deletion -----------------------------------------------------------------------------------

    @staticmethod
    def _delete_options(query: Mapping[str, str], body: bytes) -> dict[str, Any]:
        options = json.loads(body) if body.strip() else {}
        if "gracePeriodSeconds" in query:
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        return options

    def _delete(
        self, resource: Resource, namespace: str, name: str, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        key = (resource, namespace, name)
        obj = self._objects.get(key)
        if obj is None:
            raise not_found(resource, name)
        meta = obj["metadata"]
        if resource is POD and (obj.get("spec") or {}).get("nodeName"):
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            if grace > 0:
                return self._present(self._terminate_pod(obj, grace))
        elif options.get("propagationPolicy") == "Foreground" and self._dependents(meta["uid"]):
            if not meta.get("deletionTimestamp"):
                self._rv += 1
                meta.update(
                    deletionTimestamp=stamp(now()),
                    deletionGracePeriodSeconds=0,
                    resourceVersion=str(self._rv),
                )
                meta["finalizers"] = [*meta.get("finalizers", []), "foregroundDeletion"]
                self._collect(meta["uid"], options)
            return self._present(obj)
        elif meta.get("finalizers"):
            meta.setdefault("deletionTimestamp", stamp(now()))
            return self._present(obj)
        self._remove(key)
        if options.get("propagationPolicy") != "Orphan":
            self._collect(meta["uid"], options)
        details = {"name": name, "kind": resource.plural, "uid": meta["uid"]}
        if resource.group:
            details["group"] = resource.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _terminate_pod(self, pod: dict[str, Any], grace: int) -> dict[str, Any]:
        meta = pod["metadata"]
        ends = now() + timedelta(seconds=grace)
        running = meta.get("deletionTimestamp")
        # A grace period already running can only be shortened.
        if running is None or stamp(ends) < running:
            self._rv += 1
            meta.update(
                deletionTimestamp=stamp(ends), deletionGracePeriodSeconds=grace, resourceVersion=str(self._rv)
            )
            self._sync_endpoints(meta["namespace"])
        return pod

    def _dependents(self, uid: str) -> list[Key]:
        return [
            key
            for key, obj in self._objects.items()
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]

    def _collect(self, uid: str, options: Mapping[str, Any]) -> None:
        """The garbage collector: an owner's dependents are deleted with their own grace periods."""
        for resource, namespace, name in self._dependents(uid):
            self._delete(
                resource,
                namespace,
                name,
                {"propagationPolicy": options.get("propagationPolicy", "Background")},
            )

    def _remove(self, key: Key) -> None:
        obj = self._objects.pop(key)
        resource, namespace, name = key
        for log_key in [k for k in self._logs if k[:2] == (namespace, name)] if resource is POD else []:
            self._logs[log_key].ended = True
        if resource in (POD, SERVICE):
            self._sync_endpoints(namespace)
        # Owners waiting in foreground deletion go once their last dependent has.
        for owner_ref in obj["metadata"].get("ownerReferences") or []:
            owner = self._waiting_owner(owner_ref.get("uid", ""))
            if owner is not None and not self._dependents(owner_ref["uid"]):
                self._remove(owner)

    def _waiting_owner(self, uid: str) -> Key | None:
        for key, obj in self._objects.items():
            meta = obj["metadata"]
            if meta["uid"] == uid and "foregroundDeletion" in (meta.get("finalizers") or []):
                return key
        return None

    # --- pods/log -----------------------------------------------------------------------------------

    def _log_target(self, namespace: str, name: str, container: str | None) -> ContainerLog:
        pod = self._objects.get((POD, namespace, name))
        if pod is None:
            raise not_found(POD, name)
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        if container is None:
            if len(names) != 1:
                raise bad_request(
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                )
            container = names[0]
        elif container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        statuses = {c["name"]: c for c in (pod.get("status") or {}).get("containerStatuses") or []}
        state = statuses.get(container, {}).get("state") or {"waiting": {"reason": "ContainerCreating"}}
        if "waiting" in state and not statuses.get(container, {}).get("lastState"):
            reason = state["waiting"].get("reason", "")
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        return self._logs.setdefault((namespace, name, container), ContainerLog())

    def _log_response(self, namespace: str, name: str, query: Mapping[str, str]) -> Response:
        log = self._log_target(namespace, name, query.get("container"))
        lines = log.lines
        if query.get("previous") == "true":
            if log.previous is None:
                container = (
                    query.get("container")
                    or self._objects[(POD, namespace, name)]["spec"]["containers"][0]["name"]
                )
                raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
            lines = log.previous
        since = query.get("sinceSeconds")
        cutoff = time.time() - int(since) if since else 0.0
        chosen = [line for line in lines if line.at >= cutoff]
        if "tailLines" in query:
            tail = int(query["tailLines"])
            chosen = chosen[len(chosen) - tail :] if tail else []
        text = "".join(line.text for line in chosen)
        if query.get("follow") != "true" or query.get("previous") == "true":
            return PlainTextResponse(text)
        return StreamingResponse(self._follow(log, text, len(lines)), media_type="text/plain")

    async def _follow(self, log: ContainerLog, first: str, seen: int) -> AsyncIterator[bytes]:
        if first:
            yield first.encode()
        while not self._stopping.is_set():
            with self._lock:
                new, ended = log.lines[seen:], log.ended
            seen += len(new)
            if new:
                yield "".join(line.text for line in new).encode()
            elif ended:
                return
            await asyncio.sleep(0.02)

    # --- hooks: the controllers, the scheduler and the kubelet --------------------------------------

    def object(self, kind: str, name: str, namespace: str = "tideserve") -> dict[str, Any] | None:
        """An object as stored (kind and apiVersion included), or None."""
        resource = _BY_KIND[kind]
        with self._lock:
            obj = self._objects.get((resource, namespace if resource.namespaced else "", name))
            return copy.deepcopy(obj) if obj else None

    def objects(self, kind: str, namespace: str = "tideserve") -> list[dict[str, Any]]:
        resource = _BY_KIND[kind]
        with self._lock:
            return [
                copy.deepcopy(o)
                for (r, ns, _), o in self._objects.items()
                if r is resource and ns == namespace
            ]

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object as a controller would create it (no validation), with server metadata."""
        resource = _BY_KIND[obj["kind"]]
        with self._lock:
            self._rv += 1
            stored = copy.deepcopy(dict(obj))
            meta = stored.setdefault("metadata", {})
            namespace = meta.setdefault("namespace", "tideserve") if resource.namespaced else ""
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", stamp(now()))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = str(self._rv)
            self._store(resource, namespace, stored)
            return copy.deepcopy(stored)

    def run_deployment(
        self, name: str, namespace: str = "tideserve", replicas: int | None = None
    ) -> list[str]:
        """The Deployment controller (its ReplicaSet folded in): pods from the template, owned by the
        Deployment, until spec.replicas (or `replicas`) of them exist. Returns the new pods' names."""
        deployment = self.object("Deployment", name, namespace)
        if deployment is None:
            raise KeyError(f"no Deployment {namespace}/{name}")
        template = deployment["spec"]["template"]
        want = deployment["spec"].get("replicas", 1) if replicas is None else replicas
        pod_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        owned = [p for p in self.objects("Pod", namespace) if self._owned_by(p, deployment)]
        created = []
        for _ in range(want - len(owned)):
            pod_name = f"{name}-{pod_hash}-{uuid.uuid4().hex[:5]}"
            labels = {**(template.get("metadata") or {}).get("labels", {}), "pod-template-hash": pod_hash}
            owner = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": name,
                "uid": deployment["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
            self.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": namespace,
                        "labels": labels,
                        "ownerReferences": [owner],
                    },
                    "spec": copy.deepcopy(template.get("spec") or {}),
                    "status": {"phase": "Pending", "qosClass": "Burstable"},
                }
            )
            created.append(pod_name)
        return created

    @staticmethod
    def _owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
        uid = owner["metadata"]["uid"]
        return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])

    def add_pod(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        namespace: str = "tideserve",
        containers: Iterable[str] = ("engine",),
        grace_seconds: int = 30,
        port: int = 8000,
    ) -> dict[str, Any]:
        """A pending pod, for tests that do not go through a Deployment."""
        spec = {
            "containers": [
                {
                    "name": c,
                    "image": "engine:test",
                    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                }
                for c in containers
            ],
            "terminationGracePeriodSeconds": grace_seconds,
        }
        meta = {"name": name, "namespace": namespace, "labels": dict(labels)}
        return self.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": spec,
                "status": {"phase": "Pending"},
            }
        )

    def _update_pod(self, name: str, namespace: str, change: Any) -> dict[str, Any]:
        with self._lock:
            pod = self._objects.get((POD, namespace, name))
            if pod is None:
                raise KeyError(f"no pod {namespace}/{name}")
            change(pod)
            self._rv += 1
            pod["metadata"]["resourceVersion"] = str(self._rv)
            self._sync_endpoints(namespace)
            return copy.deepcopy(pod)

    @staticmethod
    def _set_condition(
        status: dict[str, Any], kind: str, value: bool, reason: str | None = None, message: str | None = None
    ) -> None:
        conditions = [c for c in status.get("conditions") or [] if c["type"] != kind]
        condition: dict[str, Any] = {
            "type": kind,
            "status": "True" if value else "False",
            "lastTransitionTime": stamp(now()),
        }
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        status["conditions"] = [*conditions, condition]

    def _container_statuses(self, pod: dict[str, Any], state: dict[str, Any], ready: bool) -> None:
        status = pod["status"]
        old = {c["name"]: c for c in status.get("containerStatuses") or []}
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": ready,
                "started": "running" in state,
                "restartCount": old.get(c["name"], {}).get("restartCount", 0),
                "state": copy.deepcopy(state),
                **(
                    {"lastState": old[c["name"]]["lastState"]}
                    if old.get(c["name"], {}).get("lastState")
                    else {"lastState": {}}
                ),
            }
            for c in pod["spec"].get("containers") or []
        ]

    def unschedulable(self, name: str, message: str, namespace: str = "tideserve") -> dict[str, Any]:
        """The scheduler found no node (e.g. '0/3 nodes are available: 3 Insufficient nvidia.com/gpu.')."""
        return self._update_pod(
            name,
            namespace,
            lambda pod: self._set_condition(pod["status"], "PodScheduled", False, "Unschedulable", message),
        )

    def schedule(self, name: str, node: str, namespace: str = "tideserve") -> dict[str, Any]:
        """The scheduler binds the pod; the kubelet starts creating its containers (pulling images)."""

        def bind(pod: dict[str, Any]) -> None:
            pod["spec"]["nodeName"] = node
            self._set_condition(pod["status"], "PodScheduled", True)
            node_obj = self._objects.get((NODE, "", node))
            addresses = (node_obj or {}).get("status", {}).get("addresses") or []
            host_ip = next((a["address"] for a in addresses if a["type"] == "InternalIP"), "192.168.0.10")
            pod["status"].update(hostIP=host_ip, startTime=stamp(now()))
            self._set_condition(pod["status"], "Initialized", True)
            self._set_condition(pod["status"], "Ready", False, "ContainersNotReady")
            self._container_statuses(pod, {"waiting": {"reason": "ContainerCreating"}}, False)

        return self._update_pod(name, namespace, bind)

    def run_pod(self, name: str, ready: bool = False, namespace: str = "tideserve") -> dict[str, Any]:
        """The kubelet runs the containers; `ready` is the readiness probe's (/health) verdict."""

        def run(pod: dict[str, Any]) -> None:
            status = pod["status"]
            for c in status.get("containerStatuses") or []:
                log = self._logs.get((namespace, name, c["name"]))
                if log is not None and "waiting" in c["state"] and c["restartCount"]:
                    log.lines = []  # a restarted container starts a new log
            status["phase"] = "Running"
            status.setdefault("podIP", self._next_ip("10.244"))
            status["podIPs"] = [{"ip": status["podIP"]}]
            self._container_statuses(pod, {"running": {"startedAt": stamp(now())}}, ready)
            self._set_condition(status, "ContainersReady", ready)
            self._set_condition(status, "Ready", ready, None if ready else "ContainersNotReady")

        return self._update_pod(name, namespace, run)

    def set_ready(self, name: str, ready: bool = True, namespace: str = "tideserve") -> dict[str, Any]:
        return self.run_pod(name, ready, namespace)

    def crash(
        self,
        name: str,
        reason: str = "Error",
        exit_code: int = 1,
        message: str | None = None,
        namespace: str = "tideserve",
    ) -> dict[str, Any]:
        """The container exited (OOMKilled: exit 137) and the kubelet backs off before restarting it:
        CrashLoopBackOff, its log kept as the previous one."""

        def die(pod: dict[str, Any]) -> None:
            status = pod["status"]
            container = pod["spec"]["containers"][0]["name"]
            terminated = {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": stamp(now()),
                "finishedAt": stamp(now()),
            }
            if message:
                terminated["message"] = message
            waiting = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 10s restarting failed container={container} pod={name}",
                }
            }
            self._container_statuses(pod, waiting, False)
            first = status["containerStatuses"][0]
            first["lastState"] = {"terminated": terminated}
            first["restartCount"] += 1
            self._set_condition(status, "ContainersReady", False, "ContainersNotReady")
            self._set_condition(status, "Ready", False, "ContainersNotReady")
            # Until the restart, the log is the dead container's; it is also the "previous" one.
            log = self._logs.setdefault((namespace, name, container), ContainerLog())
            log.previous = list(log.lines)

        return self._update_pod(name, namespace, die)

    def image_pull_failed(self, name: str, image: str, namespace: str = "tideserve") -> dict[str, Any]:
        message = f'Back-off pulling image "{image}"'
        return self._update_pod(
            name,
            namespace,
            lambda pod: self._container_statuses(
                pod, {"waiting": {"reason": "ImagePullBackOff", "message": message}}, False
            ),
        )

    def set_pod_status(
        self, name: str, status: Mapping[str, Any], namespace: str = "tideserve"
    ) -> dict[str, Any]:
        """Replace a pod's status wholesale (any state the helpers above do not make)."""
        return self._update_pod(name, namespace, lambda pod: pod.update(status=copy.deepcopy(dict(status))))

    def delete_pod(self, name: str, grace_seconds: int | None = None, namespace: str = "tideserve") -> None:
        """A controller deletes a pod (scale-down, rollout): graceful, as through the API."""
        with self._lock:
            options = {} if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
            self._delete(POD, namespace, name, options)

    def finish_termination(self, name: str, namespace: str = "tideserve") -> None:
        """The kubelet is done with a deleted pod (the engine exited after draining): it goes away."""
        with self._lock:
            self._remove((POD, namespace, name))

    def write_log(
        self,
        pod: str,
        text: str,
        container: str | None = None,
        namespace: str = "tideserve",
        at: float | None = None,
    ) -> None:
        with self._lock:
            if container is None:
                container = self._objects[(POD, namespace, pod)]["spec"]["containers"][0]["name"]
            log = self._logs.setdefault((namespace, pod, container), ContainerLog())
            stamp_at = time.time() if at is None else at
            log.lines += [LogLine(stamp_at, line) for line in text.splitlines(keepends=True)]

    def end_log(self, pod: str, container: str | None = None, namespace: str = "tideserve") -> None:
        """The container stopped writing for good: follow streams end."""
        with self._lock:
            for key, log in self._logs.items():
                if key[:2] == (namespace, pod) and container in (None, key[2]):
                    log.ended = True

    def add_node(
        self,
        name: str,
        *,
        cpu: str = "8",
        memory: str = "32Gi",
        gpus: int = 0,
        gpu_product: str | None = None,
        gpu_memory_mib: int | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Iterable[Mapping[str, str]] = (),
        ready: bool = True,
        unschedulable: bool = False,
        address: str | None = None,
    ) -> dict[str, Any]:
        """A node as the kubelet registers it; GPUs as the NVIDIA device plugin and GPU feature
        discovery report them (nvidia.com/gpu allocatable, nvidia.com/gpu.* labels)."""
        node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})}
        allocatable = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "95491281146"}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
            node_labels["nvidia.com/gpu.count"] = str(gpus)
        if gpu_product:
            node_labels["nvidia.com/gpu.product"] = gpu_product
        if gpu_memory_mib is not None:
            node_labels["nvidia.com/gpu.memory"] = str(gpu_memory_mib)
        spec: dict[str, Any] = {"podCIDR": "10.244.0.0/24"}
        if taints:
            spec["taints"] = [dict(t) for t in taints]
        if unschedulable:
            spec["unschedulable"] = True
        ip = address or self._next_ip("192.168")
        status = {
            "capacity": dict(allocatable),
            "allocatable": allocatable,
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "Unknown",
                    "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                    "message": "kubelet is posting ready status"
                    if ready
                    else "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": stamp(now()),
                    "lastTransitionTime": stamp(now()),
                }
            ],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "operatingSystem": "linux", "architecture": "amd64"},
        }
        return self.put(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": node_labels},
                "spec": spec,
                "status": status,
            }
        )

    # --- the endpoint controller --------------------------------------------------------------------

    def _sync_endpoints(self, namespace: str) -> None:
        """One EndpointSlice per Service with a selector: its matching pods that have an IP."""
        services = {k[2]: o for k, o in self._objects.items() if k[0] is SERVICE and k[1] == namespace}
        for key, obj in list(self._objects.items()):
            owner = (obj["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
            if key[0] is SLICE and key[1] == namespace and owner not in services:
                del self._objects[key]
        for service in services.values():
            selector = (service.get("spec") or {}).get("selector")
            if selector:
                self._sync_slice(namespace, service, selector)

    def _sync_slice(self, namespace: str, service: Mapping[str, Any], selector: Mapping[str, str]) -> None:
        name = service["metadata"]["name"]
        pods = [
            p
            for (r, ns, _), p in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
            if r is POD
            and ns == namespace
            and (p.get("status") or {}).get("podIP")
            and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]
        endpoints = []
        for pod in pods:
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or []
            )
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            endpoints.append(
                {
                    "addresses": [pod["status"]["podIP"]],
                    "conditions": {
                        "ready": ready and not terminating,
                        "serving": ready,
                        "terminating": terminating,
                    },
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                    "nodeName": pod["spec"].get("nodeName"),
                }
            )
        ports = [
            {
                "name": p.get("name", ""),
                "protocol": p.get("protocol", "TCP"),
                "port": self._target_port(pods, p),
            }
            for p in service["spec"].get("ports") or []
        ]
        slice_name = f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:5]}"
        existing = self._objects.get((SLICE, namespace, slice_name))
        body = {"addressType": "IPv4", "endpoints": endpoints, "ports": ports}
        if existing is not None and all(existing.get(k) == v for k, v in body.items()):
            return  # the controller writes only on a change, as the real one does
        self._rv += 1
        owner = {
            "apiVersion": "v1",
            "kind": "Service",
            "name": name,
            "uid": service["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        self._objects[(SLICE, namespace, slice_name)] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "generateName": f"{name}-",
                "namespace": namespace,
                "uid": existing["metadata"]["uid"] if existing else str(uuid.uuid4()),
                "resourceVersion": str(self._rv),
                "generation": (existing["metadata"]["generation"] + 1) if existing else 1,
                "creationTimestamp": existing["metadata"]["creationTimestamp"] if existing else stamp(now()),
                # The controller copies the Service's labels onto its slices.
                "labels": {
                    **(service["metadata"].get("labels") or {}),
                    SERVICE_NAME_LABEL: name,
                    "endpointslice.kubernetes.io/managed-by": ENDPOINT_CONTROLLER,
                },
                "ownerReferences": [owner],
            },
            **body,
        }

    @staticmethod
    def _target_port(pods: list[dict[str, Any]], port: Mapping[str, Any]) -> int | None:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, int):
            return target
        # A named targetPort resolves to the container port of that name (taken from the first pod).
        for pod in pods:
            for c in pod["spec"].get("containers") or []:
                for p in c.get("ports") or []:
                    if p.get("name") == target:
                        return p["containerPort"]
        return None


def kubeconfig(server: ApiServer, unreachable_port: int) -> dict[str, Any]:
    """A kubeconfig with three contexts: `double` (the current one), `unreachable` (nothing listens) and
    `wrong-token` (the double, with a token it refuses)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "double",
        "clusters": [
            {"name": "double", "cluster": {"server": server.url}},
            {"name": "nowhere", "cluster": {"server": f"http://127.0.0.1:{unreachable_port}"}},
        ],
        "users": [
            {"name": "tester", "user": {"token": server.token}},
            {"name": "stranger", "user": {"token": "not-" + server.token}},
        ],
        "contexts": [
            {"name": "double", "context": {"cluster": "double", "user": "tester", "namespace": "tideserve"}},
            {"name": "unreachable", "context": {"cluster": "nowhere", "user": "tester"}},
            {"name": "wrong-token", "context": {"cluster": "double", "user": "stranger"}},
        ],
    }
