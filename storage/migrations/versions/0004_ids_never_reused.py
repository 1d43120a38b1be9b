"""SQLite: ids of erasable rows are never reused (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite hands out the largest id plus one, so erasing a candidate
whose rows held the newest ids gives those ids to the next rows written. A client, a
process's per-candidate state or an email link holding an old id would then find a row it
never knew. PostgreSQL sequences never reuse values, so this changes SQLite only.

SQLite cannot add AUTOINCREMENT to a table: each table is rebuilt and its rows copied.
`storage.migrate` runs SQLite migrations with foreign keys off, as SQLite requires for a
rebuild (dropping the old table would otherwise cascade to its children), and checks every
foreign key before it commits.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("candidates", "threads", "messages", "email_outbox")


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
