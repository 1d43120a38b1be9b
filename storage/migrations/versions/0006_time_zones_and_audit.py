"""Users' time zones and erasure; the audit trail

- `users.time_zone`: an IANA zone name, default UTC; email alerts show times in it.
- `users.erased_at`: when the host ATS erased the person; an erased user is no longer
  provisioned (its tokens stop working) until provisioned anew.
- `audit_records`: who deleted which message when, and which person was erased; kept
  after the text, the candidate or the person is gone (host ids, no foreign keys to them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC")
        )
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "audit_records",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("org_pk", BigId, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("candidate_id", sa.String(64), nullable=True),
        sa.Column("thread_id", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_pk"], ["orgs.pk"], name="fk_audit_records_org_pk_orgs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_audit_records"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_records_org", "audit_records", ["org_pk", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_org", table_name="audit_records")
    op.drop_table("audit_records")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("erased_at")
        batch.drop_column("time_zone")
