"""Alerts derived from the event log; a version of each candidate's access

- `events.alerts_pending`: a `message.created` event whose email alerts have not been
  decided yet. The send writes nothing else for alerts: the alert worker reads these rows
  (a partial index keeps that read small), queues the alerts and clears the flag in one
  transaction, so that each message's alerts are decided exactly once.
- `candidates.access_version`: bumped by every change of who sees the candidate. A process
  keeps candidates' access in memory and a send checks, in the same statement that locks the
  candidate, that the version it decided on is still the current one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("alerts_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_events_alerts_pending",
        "events",
        ["created_at"],
        sqlite_where=sa.text("alerts_pending"),
        postgresql_where=sa.text("alerts_pending"),
    )
    with op.batch_alter_table("candidates") as batch:
        batch.add_column(
            sa.Column("access_version", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("access_version")
    op.drop_index("ix_events_alerts_pending", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("alerts_pending")
