"""The platform's tables. Specs are stored as JSON documents (the YAML users write), so the schema
does not change each time a framework parameter is added; the columns are what queries filter on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: SQLite drops the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime,
    }


class Cluster(Base):
    __tablename__ = "clusters"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    platform: Mapped[str] = mapped_column(String(16), default="local")
    # kubernetes: platforms/kubernetes/settings.py KubeSettings, camelCase as users write it
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # kubernetes: the reconciler's last contact with the API server (Ready, or Unreachable + why)
    status: Mapped[str] = mapped_column(String(16), default="Ready")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    groups: Mapped[list[ResourceGroup]] = relationship(back_populates="cluster", order_by="ResourceGroup.id")


class ResourceGroup(Base):
    __tablename__ = "resource_groups"
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"))
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    # kubernetes: {"nodeSelector": {...}, "tolerations": [...]}: where the group's pods may land
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cluster: Mapped[Cluster] = relationship(back_populates="groups")
    nodes: Mapped[list[Node]] = relationship(back_populates="group", order_by="Node.id")


class Node(Base):
    """A machine. It is in at most one resource group, hence in one cluster at a time."""

    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    cpus: Mapped[float] = mapped_column(Float)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    gpus: Mapped[list[Any]] = mapped_column(default=list)  # [{"index", "name", "memory_bytes", "uuid"}]
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="Ready")
    group_id: Mapped[int | None] = mapped_column(ForeignKey("resource_groups.id"), default=None)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    group: Mapped[ResourceGroup | None] = relationship(back_populates="nodes")


class CustomModel(Base):
    __tablename__ = "custom_models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    source: Mapped[str] = mapped_column(Text)
    local_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Service(Base):
    __tablename__ = "services"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column()  # the current revision's document
    revision: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="Pending")
    message: Mapped[str] = mapped_column(Text, default="")
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    # With spec.autoscaling, the count the autoscaler chose (None until its first decision): kept apart
    # from the spec's `replicas`, so an autoscaling decision is not a new revision.
    autoscaled_replicas: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    revisions: Mapped[list[Revision]] = relationship(order_by="Revision.number", cascade="all, delete-orphan")


class Revision(Base):
    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("service_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"))  # None: a pod not yet scheduled
    pod: Mapped[str] = mapped_column(String(253), default="")  # kubernetes: the pod's name
    role: Mapped[str] = mapped_column(String(8), default="both")
    state: Mapped[str] = mapped_column(String(16), default="Pending")
    address: Mapped[str] = mapped_column(String(255), default="")
    port: Mapped[int] = mapped_column(Integer, default=0)
    gpu_indices: Mapped[list[Any]] = mapped_column(default=list)
    pid: Mapped[int] = mapped_column(Integer, default=0)
    pid_started: Mapped[float] = mapped_column(Float, default=0.0)  # pid + start time identify a process
    log_path: Mapped[str] = mapped_column(Text, default="")
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive, reset when Ready
    last_error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    retry_at: Mapped[datetime | None] = mapped_column(default=None)
    drain_since: Mapped[datetime | None] = mapped_column(default=None)
    stop_sent_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # admin | inference
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Access and limits the gateway enforces. NULL means "no restriction", so keys made before these
    # columns existed keep working as they did.
    services: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    priority: Mapped[str] = mapped_column(String(16), default="normal", server_default="normal")
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, default=None)


class Event(Base):
    """One line of a service's audit trail: what happened and why. It names its service instead of
    referencing the row, so the trail outlives a delete and still says how the service went."""

    __tablename__ = "events"
    # (service, at) serves the listing (newest first, since a time) and the trim in services.events.
    __table_args__ = (Index("ix_events_service_at", "service", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="service")  # service | instance
    service: Mapped[str | None] = mapped_column(String(63), default=None)
    instance: Mapped[str | None] = mapped_column(String(32), default=None)
    reason: Mapped[str] = mapped_column(String(32))  # CamelCase: Created, Scaled, InstanceFailed ...
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
