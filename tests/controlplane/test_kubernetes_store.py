"""Migration 0005 (the Kubernetes platform) on SQLite and PostgreSQL: a store of 0004 keeps its
clusters and instances, which get the new columns' defaults; instances may then have no node (a pod
not yet scheduled); and the downgrade gives the 0004 shape back."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from tests.controlplane.conftest import alembic_to
from tideserve.store.db import Store, migrate
from tideserve.store.models import Cluster, Instance, Node, Service


def test_migration_0005_keeps_clusters_and_instances(databases, tmp_path):
    store = Store(databases.new() or f"sqlite:///{tmp_path / 'old.db'}")

    def alembic(step, revision: str) -> None:
        alembic_to(store, step, revision)

    def columns(table: str) -> set[str]:
        return {col["name"] for col in sa.inspect(store.engine).get_columns(table)}

    now = datetime.now(UTC)
    try:
        alembic(command.upgrade, "0004")
        with store.engine.begin() as conn:
            insert = [
                "INSERT INTO clusters (name, description, platform, created_at)"
                " VALUES ('local', '', 'local', :t)",
                "INSERT INTO nodes (name, address, cpus, memory_bytes, gpus, labels, status, last_seen,"
                " created_at) VALUES ('n1', '127.0.0.1', 2, 1024, '[]', '{}', 'Ready', :t, :t)",
                "INSERT INTO services (name, spec, revision, status, message, deleting, created_at,"
                " updated_at) VALUES ('s', '{}', 1, 'Running', '', false, :t, :t)",
                "INSERT INTO instances (id, service_id, revision, node_id, role, state, address, port,"
                " gpu_indices, pid, pid_started, log_path, restarts, failures, last_error, created_at)"
                " SELECT 'i1', services.id, 1, nodes.id, 'both', 'Running', '127.0.0.1', 60000, '[]', 1,"
                " 0, '', 0, 0, '', :t FROM services, nodes",
            ]
            for sql in insert:
                conn.execute(sa.text(sql), {"t": now})
        migrate(store.engine)
        assert {"settings", "status", "message"} <= columns("clusters") and "pod" in columns("instances")
        with store.session() as s:
            cluster = s.scalars(sa.select(Cluster)).one()
            assert (cluster.settings, cluster.status, cluster.message) == ({}, "Ready", "")
            inst = s.get(Instance, "i1")
            assert inst.pod == "" and inst.node_id == s.scalars(sa.select(Node.id)).one()
            svc = s.scalars(sa.select(Service)).one()
            s.add(Instance(id="pod1", service_id=svc.id, revision=1, node_id=None, pod="s-abc"))
        with store.session() as s:
            s.delete(s.get(Instance, "pod1"))  # a nodeless row must not be left for the downgrade
        alembic(command.downgrade, "0004")
        assert "pod" not in columns("instances") and "settings" not in columns("clusters")
        migrate(store.engine)
        assert "pod" in columns("instances")
    finally:
        store.close()
