"""The reconciler: level-triggered, idempotent, restart-safe.

Each pass observes every instance (process alive? /health ready? drained?), asks the pure planner
(rollout.plan) what to do, does it, and derives the service status. All state lives in the store:
a restarted control plane re-adopts the processes it finds there, and an engine process that was
started but never recorded (a crash between the two) is found by its environment and stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.backends import adapter_for
from tideserve.backends.base import LaunchContext
from tideserve.observability.engine_metrics import parse_engine_metrics
from tideserve.observability.logs import service_log_dir
from tideserve.platforms.local import Handle, Launch, LocalPlatform, free_port, log_tail
from tideserve.services import events, placement, rollout
from tideserve.services.fit import instance_resources
from tideserve.services.modelref import ModelUnavailable, resolve_model_ref
from tideserve.services.spec import parse_quantity
from tideserve.store.db import Store
from tideserve.store.models import Cluster, Instance, Node, ResourceGroup, Revision, Service

if TYPE_CHECKING:  # the driver imports the kubernetes client, which local-only runs need not load
    from tideserve.platforms.kubernetes.reconcile import KubernetesDriver

log = logging.getLogger("tideserve.controller")

STARTUP_TIMEOUT = timedelta(minutes=10)  # a large model may take minutes to load
DRAIN_TIMEOUT = timedelta(minutes=2)  # in-flight requests get this long to finish
STOP_GRACE = timedelta(seconds=30)  # after SIGTERM, before SIGKILL
ENV_INSTANCE = "TIDESERVE_INSTANCE_ID"
ENV_HOME = "TIDESERVE_HOME"
LOG_TAIL = "; last log lines:\n"  # separates why an instance failed from its log in last_error


def _now() -> datetime:
    return datetime.now(UTC)


def _handle(inst: Instance) -> Handle:
    return Handle(inst.pid, inst.pid_started)


def _instance_event(
    s: Session, service: str, inst: Instance, reason: str, message: str, details: dict[str, Any] | None = None
) -> None:
    events.record(
        s, service=service, instance=inst.id, kind="instance", reason=reason, message=message, details=details
    )


def _exit_details(code: int) -> dict[str, Any]:
    """A negative code is the signal that ended our child. -1 is left unnamed: the platform also
    reports it for a process it did not start (adopted after a restart), whose status it cannot know."""
    if code < -1:
        try:
            return {"exitCode": code, "signal": signal.Signals(-code).name}
        except ValueError:
            pass
    return {"exitCode": code}


class Controller:
    def __init__(
        self,
        store: Store,
        home: Path,
        platform: LocalPlatform | None = None,
        inflight: Callable[[str], int] = lambda _id: 0,
        unroute: Callable[[str], None] = lambda _id: None,
        kubernetes: KubernetesDriver | None = None,
    ) -> None:
        self.store = store
        self.kubernetes = kubernetes
        self.home = home
        self.platform = platform or LocalPlatform()
        self.inflight = inflight  # requests the gateway has open to an instance
        self.unroute = unroute  # tells the gateway in this process to stop choosing an instance
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=httpx.Timeout(1.0), trust_env=False)
        # When a once-ready instance stopped answering /health; in memory, as a restart re-probes anyway.
        self._unready_since: dict[str, datetime] = {}

    # --- loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self.sweep_orphans()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # one bad pass must not end reconciliation
                log.exception("reconcile pass failed")
            self._wake.wait(1.0)
            self._wake.clear()

    def shutdown(self, stop_instances: bool = True) -> None:
        """Ctrl-C: stop the loop, then every instance this platform runs, and forget them."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        if stop_instances:
            self.stop_all()
        if self.kubernetes is not None:
            self.kubernetes.close()
        self._http.close()

    def stop_all(self) -> None:
        with self.store.session() as s:
            # Pods are left running: a control plane going down must not take a cluster's services along.
            instances = list(s.scalars(select(Instance).where(Instance.pod == "")))
            handles = [_handle(i) for i in instances if i.pid]
            for h in handles:
                self.platform.terminate(h)
            deadline = _now() + STOP_GRACE
            for h in handles:
                while self.platform.exit_code(h) is None and _now() < deadline:
                    self._stop.wait(0.1)
                self.platform.kill(h)
            for inst in instances:
                svc = s.get(Service, inst.service_id)
                if svc is not None:
                    _instance_event(s, svc.name, inst, "InstanceStopped", "stopped: the platform shut down")
                s.delete(inst)

    def sweep_orphans(self) -> None:
        """Stop engine processes of this home that the store does not know (or knows by another pid)."""
        with self.store.session() as s:
            known = {i.id: i.pid for i in s.scalars(select(Instance))}
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "environ"]):
            env = proc.info.get("environ") or {}
            iid = env.get(ENV_INSTANCE)
            if not iid or proc.pid == me or env.get(ENV_HOME) != str(self.home):
                continue
            if known.get(iid) != proc.pid:
                log.warning("stopping orphaned instance process %s (pid %d)", iid, proc.pid)
                handle = Handle(proc.pid, proc.create_time())
                self.platform.kill(handle)

    # --- one pass ---------------------------------------------------------------------------

    def reconcile_once(self) -> None:
        with self.store.session() as s:
            local = set(s.scalars(select(Cluster.name).where(Cluster.platform == "local")))
            names = [svc.name for svc in s.scalars(select(Service)) if svc.spec["spec"]["cluster"] in local]
        for name in names:
            with self.store.session() as s:
                svc = s.scalar(select(Service).where(Service.name == name))
                if svc is not None:
                    self._reconcile(s, svc)
        if self.kubernetes is not None:
            self.kubernetes.reconcile_once()  # services on kubernetes clusters

    def _reconcile(self, s: Session, svc: Service) -> None:
        now = _now()
        instances = list(s.scalars(select(Instance).where(Instance.service_id == svc.id)))
        for inst in instances:
            self._observe(s, svc, inst, now)
        instances = [i for i in instances if i.state != rollout.STOPPED]
        desired = rollout.desired_of(
            svc.revision, svc.spec["spec"], deleting=svc.deleting, autoscaled=svc.autoscaled_replicas
        )
        observed = [
            rollout.Observed(i.id, i.revision, i.state, i.failures, i.retry_at, i.created_at)
            for i in instances
        ]
        message = ""
        for action in rollout.plan(desired, observed, now):
            by_id = {i.id: i for i in instances}
            if isinstance(action, rollout.Start):
                started = self._start(s, svc, action.revision, now)
                if isinstance(started, str):
                    message = started
                    break  # the next pass retries; nothing fits now
                instances.append(started)
            elif isinstance(action, rollout.Restart):
                self._launch(s, svc, by_id[action.id], now, restart=True)
            else:
                inst = by_id[action.id]
                self._drain(s, svc, inst, now, rollout.drain_cause(desired, inst.revision))
        observed = [rollout.Observed(i.id, i.revision, i.state, i.failures) for i in instances]
        status = rollout.service_status(desired, observed)
        if status == "Abnormal" or not message:
            failing = [i for i in instances if i.state == rollout.FAILED and i.last_error]
            message = failing[0].last_error if failing else message
        if svc.deleting and not any(i.state != rollout.STOPPED for i in instances):
            log.info("service %s deleted", svc.name)
            events.record(
                s, service=svc.name, reason="Deleted", message="every instance stopped: service removed"
            )
            s.delete(svc)
            return
        if (svc.status, svc.message) != (status, message):
            log.info("service %s: %s %s", svc.name, status, message[:200])
            if status != svc.status:
                self._status_changed(s, svc, status, message)
            svc.status, svc.message = status, message

    def _status_changed(self, s: Session, svc: Service, status: str, message: str) -> None:
        if (svc.status, status) == ("Updating", "Running"):
            events.record(
                s,
                service=svc.name,
                reason="RolledOut",
                message=f"rollout of revision {svc.revision} finished: every instance runs it",
                details={"revision": svc.revision},
            )
        why = message.partition(LOG_TAIL)[0].partition("\n")[0]
        events.record(
            s,
            service=svc.name,
            reason="StatusChanged",
            message=f"{svc.status} → {status}" + (f": {why}" if why else ""),
            details={"from": svc.status, "to": status, "revision": svc.revision},
        )

    def _observe(self, s: Session, svc: Service, inst: Instance, now: datetime) -> None:
        if inst.state in (rollout.STARTING, rollout.RUNNING, rollout.DRAINING) and inst.pid:
            code = self.platform.exit_code(_handle(inst))
            if code is not None:
                if inst.state == rollout.DRAINING:
                    self._forget(s, svc, inst, "stopped after draining", _exit_details(code))
                else:
                    self._failed(s, svc, inst, now, f"engine exited with code {code}", _exit_details(code))
                return
        if inst.state == rollout.DRAINING:
            self._observe_draining(s, svc, inst, now)
        elif inst.state in (rollout.STARTING, rollout.RUNNING):
            ready = self._probe(svc, inst)
            if ready:
                self._unready_since.pop(inst.id, None)
                if inst.state == rollout.STARTING:
                    log.info("instance %s of %s is ready on port %d", inst.id, svc.name, inst.port)
                    inst.state, inst.ready_at, inst.failures, inst.last_error = rollout.RUNNING, now, 0, ""
                    took = (now - (inst.started_at or now)).total_seconds()
                    _instance_event(
                        s,
                        svc.name,
                        inst,
                        "InstanceReady",
                        f"ready on port {inst.port}, {took:.1f} s after it started",
                        {"port": inst.port, "secondsSinceStart": round(took, 1)},
                    )
            elif inst.state == rollout.RUNNING:
                inst.state, inst.ready_at = rollout.STARTING, None  # the gateway stops sending to it
                self._unready_since[inst.id] = now
                _instance_event(
                    s,
                    svc.name,
                    inst,
                    "InstanceUnready",
                    "stopped answering /health: no traffic until it is ready",
                )
            elif now - self._unready_since.get(inst.id, inst.started_at or now) > STARTUP_TIMEOUT:
                self.platform.kill(_handle(inst))
                self._failed(s, svc, inst, now, f"not ready after {STARTUP_TIMEOUT.total_seconds():.0f} s")

    def _observe_draining(self, s: Session, svc: Service, inst: Instance, now: datetime) -> None:
        if not inst.pid:
            self._forget(s, svc, inst, "stopped: it had no process")
            return
        if inst.stop_sent_at is None:
            timed_out = inst.drain_since is not None and now - inst.drain_since > DRAIN_TIMEOUT
            if timed_out or self._drained(inst):
                self.platform.terminate(_handle(inst))
                inst.stop_sent_at = now
        elif now - inst.stop_sent_at > STOP_GRACE:
            self.platform.kill(_handle(inst))

    def _drained(self, inst: Instance) -> bool:
        if self.inflight(inst.id):
            return False
        try:
            r = self._http.get(f"http://{inst.address}:{inst.port}/metrics")
        except httpx.HTTPError:
            return True  # an engine that does not answer holds nothing we can wait for
        if r.status_code != 200:
            return True
        try:
            load = parse_engine_metrics(r.text)
        except ValueError:
            return False  # unreadable: the drain timeout decides
        return load.running + load.waiting == 0

    def _probe(self, svc: Service, inst: Instance) -> bool:
        # spec.engine.name is immutable, so every revision's instances share the service's adapter.
        path = adapter_for(svc.spec["spec"].get("engine", {}).get("name", "builtin")).health_path
        try:
            return self._http.get(f"http://{inst.address}:{inst.port}{path}").status_code == 200
        except httpx.HTTPError:
            return False

    def _failed(
        self,
        s: Session,
        svc: Service,
        inst: Instance,
        now: datetime,
        why: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._unready_since.pop(inst.id, None)
        inst.failures += 1
        tail = log_tail(inst.log_path, lines=15)
        inst.last_error = f"{why}{LOG_TAIL}{tail}" if tail else why
        inst.state = rollout.FAILED
        wait = rollout.backoff(inst.failures)
        inst.retry_at = now + wait
        log.warning("instance %s failed (%d in a row): %s", inst.id, inst.failures, why)
        _instance_event(
            s,
            svc.name,
            inst,
            "InstanceFailed",
            f"{why} ({inst.failures} in a row): restart in {wait.total_seconds():.0f} s",
            {**(details or {}), "failures": inst.failures, "retryInSeconds": wait.total_seconds()},
        )

    def _forget(
        self, s: Session, svc: Service, inst: Instance, why: str, details: dict[str, Any] | None = None
    ) -> None:
        self._unready_since.pop(inst.id, None)
        inst.state = rollout.STOPPED
        _instance_event(s, svc.name, inst, "InstanceStopped", why, details)
        s.delete(inst)

    # --- actions ----------------------------------------------------------------------------

    def _revision_body(self, s: Session, svc: Service, revision: int) -> dict[str, Any] | None:
        """The `spec` body an instance of `revision` is made from. A canary's stable instances run an
        earlier revision, so its document comes from the Revision table; the current one is svc.spec
        (an in-place edit changes only fields outside the revision hash, none of which shape an instance)."""
        if revision == svc.revision:
            return svc.spec["spec"]
        doc = s.scalar(
            select(Revision.spec).where(Revision.service_id == svc.id, Revision.number == revision)
        )
        return doc["spec"] if doc else None

    def _start(self, s: Session, svc: Service, revision: int, now: datetime) -> Instance | str:
        spec = self._revision_body(s, svc, revision)
        if spec is None:
            return f"revision {revision} of service {svc.name} does not exist"
        group = s.scalar(
            select(ResourceGroup)
            .join(ResourceGroup.cluster)
            .where(ResourceGroup.name == spec["resourceGroup"])
            .where(ResourceGroup.cluster.has(name=spec["cluster"]))
        )
        if group is None:
            return f"resource group {spec['cluster']}/{spec['resourceGroup']} does not exist"
        res = spec["resources"]
        req = placement.Request(float(res["cpu"]), parse_quantity(res["memory"]), int(res.get("gpus", 0)))
        choice = placement.select(self._capacities(s, group), req)
        if isinstance(choice, placement.NoFit):
            return f"waiting for resources: {choice.reason}"
        node = s.get(Node, choice.node_id)
        assert node is not None
        inst = Instance(
            id=uuid.uuid4().hex[:12],
            service_id=svc.id,
            revision=revision,
            node_id=node.id,
            address=node.address,
            gpu_indices=list(choice.gpu_indices),
            created_at=now,
        )
        s.add(inst)
        self._launch(s, svc, inst, now, restart=False)
        return inst

    def _launch(self, s: Session, svc: Service, inst: Instance, now: datetime, restart: bool) -> None:
        spec = self._revision_body(s, svc, inst.revision)
        if spec is None:
            inst.pid = 0
            self._failed(s, svc, inst, now, f"revision {inst.revision} of service {svc.name} does not exist")
            return
        taken = set(s.scalars(select(Instance.port).where(Instance.id != inst.id)))
        inst.port = free_port(taken, base=int(spec.get("access", {}).get("targetPort", 60000)))
        inst.log_path = str(service_log_dir(self.home, svc.name) / f"{inst.id}.log")
        inst.started_at, inst.ready_at, inst.retry_at = now, None, None
        if restart:
            inst.restarts += 1
        try:
            model_ref = resolve_model_ref(s, spec["model"])
        except ModelUnavailable as e:
            inst.pid = 0
            self._failed(s, svc, inst, now, str(e))
            return
        env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
        env[ENV_INSTANCE], env[ENV_HOME] = inst.id, str(self.home)
        if inst.gpu_indices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in inst.gpu_indices)
        engine = adapter_for(spec.get("engine", {}).get("name", "builtin"))
        argv = engine.program("local") + engine.args(LaunchContext(svc.name, model_ref, spec, inst.port))
        s.flush()  # the row exists before the process does (see sweep_orphans)
        handle = self.platform.start(Launch(argv, env, Path(inst.log_path)))
        inst.pid, inst.pid_started, inst.state = handle.pid, handle.started, rollout.STARTING
        log.info("instance %s of %s starting: pid %d port %d", inst.id, svc.name, inst.pid, inst.port)
        # Only here, where a process is launched: re-adopting one after a restart records nothing.
        what = f"restarted (restart {inst.restarts})" if restart else "starting"
        _instance_event(
            s,
            svc.name,
            inst,
            "InstanceRestarted" if restart else "InstanceStarted",
            f"{what}: revision {inst.revision}, pid {inst.pid}, port {inst.port}",
            {"revision": inst.revision, "pid": inst.pid, "port": inst.port, "restarts": inst.restarts},
        )

    def _drain(self, s: Session, svc: Service, inst: Instance, now: datetime, cause: str) -> None:
        if not inst.pid or inst.state == rollout.FAILED:
            self._forget(s, svc, inst, f"stopped ({cause}): it was {inst.state}, with nothing to drain")
            return
        log.info("instance %s draining", inst.id)
        # Before the state is written: the gateway's table learns it only at its next read of the
        # store, and in between new requests would still be sent to an instance that is leaving.
        self.unroute(inst.id)
        inst.state, inst.drain_since = rollout.DRAINING, now
        _instance_event(
            s,
            svc.name,
            inst,
            "InstanceDraining",
            f"draining ({cause}): in-flight requests finish, then it stops",
        )

    def _capacities(self, s: Session, group: ResourceGroup) -> list[placement.NodeCapacity]:
        out = []
        for node in group.nodes:
            used = [i for i in s.scalars(select(Instance).where(Instance.node_id == node.id))]
            asked = [instance_resources(s, i) for i in used]
            out.append(
                placement.NodeCapacity(
                    id=node.id,
                    name=node.name,
                    ready=node.status == "Ready",
                    cpus=node.cpus,
                    memory_bytes=node.memory_bytes,
                    gpu_indices=tuple(g["index"] for g in node.gpus),
                    used_cpus=sum(float(r["cpu"]) for r in asked),
                    used_memory_bytes=sum(parse_quantity(r["memory"]) for r in asked),
                    used_gpus=frozenset(g for i in used for g in i.gpu_indices),
                )
            )
        return out
