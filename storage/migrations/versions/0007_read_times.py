"""read_markers: when each marker moved, and an index by thread ("seen by")

- `read_markers.read_at`: when the marker last moved; null for markers that last moved
  before this revision.
- `ix_read_markers_thread` (thread_id, message_id): every marker of a thread, for showing
  how far the others have read it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("read_markers") as batch:
        batch.add_column(sa.Column("read_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_read_markers_thread", "read_markers", ["thread_id", "message_id"])


def downgrade() -> None:
    op.drop_index("ix_read_markers_thread", table_name="read_markers")
    with op.batch_alter_table("read_markers") as batch:
        batch.drop_column("read_at")
