"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "orgs",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ext_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_orgs")),
        sa.UniqueConstraint("ext_id", name=op.f("uq_orgs_ext_id")),
    )
    op.create_table(
        "agencies",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ext_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_pk"], ["orgs.pk"], name=op.f("fk_agencies_org_pk_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_agencies")),
        sa.UniqueConstraint("org_pk", "ext_id", name=op.f("uq_agencies_org_pk_ext_id")),
    )
    op.create_table(
        "users",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ext_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("agency_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.ForeignKeyConstraint(
            ["agency_pk"],
            ["agencies.pk"],
            name=op.f("fk_users_agency_pk_agencies"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_pk"], ["orgs.pk"], name=op.f("fk_users_org_pk_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_users")),
        sa.UniqueConstraint("org_pk", "ext_id", name=op.f("uq_users_org_pk_ext_id")),
    )
    op.create_table(
        "candidates",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ext_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "coordinator_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["coordinator_pk"],
            ["users.pk"],
            name=op.f("fk_candidates_coordinator_pk_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_pk"], ["orgs.pk"], name=op.f("fk_candidates_org_pk_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_candidates")),
        sa.UniqueConstraint("org_pk", "ext_id", name=op.f("uq_candidates_org_pk_ext_id")),
    )
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_candidates_coordinator_pk"), ["coordinator_pk"], unique=False
        )

    op.create_table(
        "candidate_agency_users",
        sa.Column(
            "candidate_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("user_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_pk"],
            ["candidates.pk"],
            name=op.f("fk_candidate_agency_users_candidate_pk_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.pk"],
            name=op.f("fk_candidate_agency_users_user_pk_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("candidate_pk", "user_pk", name=op.f("pk_candidate_agency_users")),
    )
    with op.batch_alter_table("candidate_agency_users", schema=None) as batch_op:
        batch_op.create_index(
            "ix_candidate_agency_users_user", ["user_pk", "candidate_pk"], unique=False
        )

    op.create_table(
        "candidate_members",
        sa.Column(
            "candidate_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("user_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_pk"],
            ["candidates.pk"],
            name=op.f("fk_candidate_members_candidate_pk_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.pk"],
            name=op.f("fk_candidate_members_user_pk_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("candidate_pk", "user_pk", name=op.f("pk_candidate_members")),
    )
    with op.batch_alter_table("candidate_members", schema=None) as batch_op:
        batch_op.create_index(
            "ix_candidate_members_user", ["user_pk", "candidate_pk"], unique=False
        )

    op.create_table(
        "threads",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "candidate_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column(
            "agency_user_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("member_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agency_user_pk"],
            ["users.pk"],
            name=op.f("fk_threads_agency_user_pk_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["candidate_pk"],
            ["candidates.pk"],
            name=op.f("fk_threads_candidate_pk_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["member_pk"], ["users.pk"], name=op.f("fk_threads_member_pk_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["org_pk"], ["orgs.pk"], name=op.f("fk_threads_org_pk_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threads")),
    )
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_threads_candidate_pk"), ["candidate_pk"], unique=False)
        batch_op.create_index(
            "ix_threads_private_pair", ["agency_user_pk", "member_pk"], unique=False
        )
        batch_op.create_index(
            "uq_threads_agency",
            ["candidate_pk", "agency_user_pk"],
            unique=True,
            sqlite_where=sa.text("kind = 'agency'"),
            postgresql_where=sa.text("kind = 'agency'"),
        )
        batch_op.create_index(
            "uq_threads_private",
            ["candidate_pk", "agency_user_pk", "member_pk"],
            unique=True,
            sqlite_where=sa.text("kind = 'private'"),
            postgresql_where=sa.text("kind = 'private'"),
        )

    op.create_table(
        "email_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "thread_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "candidate_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_message_id", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["candidate_pk"],
            ["candidates.pk"],
            name=op.f("fk_email_outbox_candidate_pk_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_pk"], ["orgs.pk"], name=op.f("fk_email_outbox_org_pk_orgs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_email_outbox_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.pk"],
            name=op.f("fk_email_outbox_user_pk_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_outbox")),
    )
    with op.batch_alter_table("email_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_email_outbox_due", ["status", "due_at"], unique=False)
        batch_op.create_index(
            "uq_email_outbox_pending",
            ["user_pk", "thread_id"],
            unique=True,
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )

    op.create_table(
        "events",
        sa.Column(
            "candidate_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column(
            "thread_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_pk"],
            ["candidates.pk"],
            name=op.f("fk_events_candidate_pk_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_events_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("candidate_pk", "seq", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_created_at", ["created_at"], unique=False)

    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "thread_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "candidate_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "author_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("client_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_pk"],
            ["users.pk"],
            name=op.f("fk_messages_author_pk_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["candidate_pk"],
            ["candidates.pk"],
            name=op.f("fk_messages_candidate_pk_candidates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_messages_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("author_pk", "client_id", name=op.f("uq_messages_author_pk_client_id")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_thread_author", ["thread_id", "author_pk"], unique=False)
        batch_op.create_index("ix_messages_thread_id", ["thread_id", "id"], unique=False)

    op.create_table(
        "read_markers",
        sa.Column("user_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "thread_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_read_markers_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.pk"],
            name=op.f("fk_read_markers_user_pk_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_pk", "thread_id", name=op.f("pk_read_markers")),
    )


def downgrade() -> None:

    op.drop_table("read_markers")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_thread_id")
        batch_op.drop_index("ix_messages_thread_author")

    op.drop_table("messages")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_created_at")

    op.drop_table("events")
    with op.batch_alter_table("email_outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_email_outbox_pending",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index("ix_email_outbox_due")

    op.drop_table("email_outbox")
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_threads_private",
            sqlite_where=sa.text("kind = 'private'"),
            postgresql_where=sa.text("kind = 'private'"),
        )
        batch_op.drop_index(
            "uq_threads_agency",
            sqlite_where=sa.text("kind = 'agency'"),
            postgresql_where=sa.text("kind = 'agency'"),
        )
        batch_op.drop_index("ix_threads_private_pair")
        batch_op.drop_index(batch_op.f("ix_threads_candidate_pk"))

    op.drop_table("threads")
    with op.batch_alter_table("candidate_members", schema=None) as batch_op:
        batch_op.drop_index("ix_candidate_members_user")

    op.drop_table("candidate_members")
    with op.batch_alter_table("candidate_agency_users", schema=None) as batch_op:
        batch_op.drop_index("ix_candidate_agency_users_user")

    op.drop_table("candidate_agency_users")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_candidates_coordinator_pk"))

    op.drop_table("candidates")
    op.drop_table("users")
    op.drop_table("agencies")
    op.drop_table("orgs")
