"""api keys: allowed services, expiry, priority and per-key rate limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter or drop columns in place; on PostgreSQL it is plain ALTERs.
    # Every new column is nullable or has a server default, so existing keys stay valid and unrestricted.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("services", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("priority", sa.String(length=16), nullable=False, server_default="normal"))
        batch.add_column(sa.Column("requests_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tokens_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_concurrent")
        batch.drop_column("tokens_per_minute")
        batch.drop_column("requests_per_minute")
        batch.drop_column("priority")
        batch.drop_column("expires_at")
        batch.drop_column("services")
