"""The Kubernetes platform: a cluster's and a resource group's settings, the cluster's last contact,
and instances that are pods (named, and on no node until scheduled)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="Ready"))
        batch.add_column(sa.Column("message", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("resource_groups") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pod", sa.String(253), nullable=False, server_default=""))
        batch.alter_column("node_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("node_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("pod")
    with op.batch_alter_table("resource_groups") as batch:
        batch.drop_column("settings")
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("message")
        batch.drop_column("status")
        batch.drop_column("settings")
