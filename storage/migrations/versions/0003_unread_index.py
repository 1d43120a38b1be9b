"""messages: the thread index also covers author and deleted, for unread counts

Counting a user's unread messages walks a thread's messages after the read marker and
checks each one's author and deleted flag; with both in the index the walk never touches
the table. The index still serves history pages (thread_id, id).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_thread_id")
        batch_op.create_index(
            "ix_messages_thread_id", ["thread_id", "id", "author_pk", "deleted"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_thread_id")
        batch_op.create_index("ix_messages_thread_id", ["thread_id", "id"], unique=False)
