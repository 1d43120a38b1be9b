"""Typed SQLAlchemy models: the whole schema of the messaging server.

Host ids (org, user, candidate, agency) are strings unique per org; internally every row has
an integer surrogate key, so that joins and indexes stay narrow at millions of messages.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an "INTEGER PRIMARY KEY"; PostgreSQL wants 64-bit ids.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite keeps text: store naive UTC so that comparisons stay lexicographic.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Org(Base):
    __tablename__ = "orgs"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True)
    ext_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Agency(Base):
    __tablename__ = "agencies"
    __table_args__ = (UniqueConstraint("org_pk", "ext_id"),)
    pk: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_pk: Mapped[int] = mapped_column(ForeignKey("orgs.pk", ondelete="CASCADE"))
    ext_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("org_pk", "ext_id"),)
    pk: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_pk: Mapped[int] = mapped_column(ForeignKey("orgs.pk", ondelete="CASCADE"))
    ext_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    kind: Mapped[str] = mapped_column(String(8))  # "member" | "agency"
    agency_pk: Mapped[int | None] = mapped_column(
        ForeignKey("agencies.pk", ondelete="SET NULL"), nullable=True
    )
    # The user muted email alerts for every candidate (per-candidate mutes: EmailMute).
    email_muted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # An IANA zone name ("Europe/Paris"): the times in the user's emails are shown in it.
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # Set when the host ATS erased the person (name and email replaced): the user is then
    # no longer provisioned, and its signed tokens and session cookies stop working.
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# Ids of rows that can be erased never come back on SQLite (AUTOINCREMENT): a client, a
# process's channel or an email link that still holds an old id must not find a new row.
# PostgreSQL sequences never reuse values anyway.
_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("org_pk", "ext_id"), _NEVER_REUSE_IDS)
    pk: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_pk: Mapped[int] = mapped_column(ForeignKey("orgs.pk", ondelete="CASCADE"))
    ext_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    coordinator_pk: Mapped[int | None] = mapped_column(
        ForeignKey("users.pk", ondelete="SET NULL"), nullable=True, index=True
    )
    # The candidate's newest event seq. Bumped with a row lock inside each writing
    # transaction, so that seqs commit in the order they are handed out.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Bumped by every change of who sees the candidate: a send checks, in the statement that
    # locks the row, that the access it decided on (kept in memory) is still current.
    access_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class CandidateMember(Base):
    """A member's access to a candidate."""

    __tablename__ = "candidate_members"
    __table_args__ = (Index("ix_candidate_members_user", "user_pk", "candidate_pk"),)
    candidate_pk: Mapped[int] = mapped_column(
        ForeignKey("candidates.pk", ondelete="CASCADE"), primary_key=True
    )
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.pk", ondelete="CASCADE"), primary_key=True
    )


class CandidateAgencyUser(Base):
    """An agency user linked to a candidate (normally the one who submitted it)."""

    __tablename__ = "candidate_agency_users"
    __table_args__ = (Index("ix_candidate_agency_users_user", "user_pk", "candidate_pk"),)
    candidate_pk: Mapped[int] = mapped_column(
        ForeignKey("candidates.pk", ondelete="CASCADE"), primary_key=True
    )
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.pk", ondelete="CASCADE"), primary_key=True
    )


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (
        # One agency thread per (candidate, agency user); one private thread per
        # (candidate, agency user, member). Partial indexes because member_pk is NULL
        # on agency threads and NULLs never collide in a unique index.
        Index(
            "uq_threads_agency",
            "candidate_pk",
            "agency_user_pk",
            unique=True,
            sqlite_where=text("kind = 'agency'"),
            postgresql_where=text("kind = 'agency'"),
        ),
        Index(
            "uq_threads_private",
            "candidate_pk",
            "agency_user_pk",
            "member_pk",
            unique=True,
            sqlite_where=text("kind = 'private'"),
            postgresql_where=text("kind = 'private'"),
        ),
        # Earlier private exchanges of an agency user, for the "private contacts" rule.
        Index("ix_threads_private_pair", "agency_user_pk", "member_pk"),
        _NEVER_REUSE_IDS,
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_pk: Mapped[int] = mapped_column(ForeignKey("orgs.pk", ondelete="CASCADE"))
    candidate_pk: Mapped[int] = mapped_column(
        ForeignKey("candidates.pk", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(8))  # "agency" | "private"
    agency_user_pk: Mapped[int] = mapped_column(ForeignKey("users.pk", ondelete="CASCADE"))
    member_pk: Mapped[int | None] = mapped_column(
        ForeignKey("users.pk", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Newest message id (tombstones included): lets unread counting skip read threads
    # without touching the messages table.
    last_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("author_pk", "client_id"),
        # History pages and unread counts are range scans of one thread after an id; the
        # author and deleted flag make counting unread an index-only walk.
        Index("ix_messages_thread_id", "thread_id", "id", "author_pk", "deleted"),
        Index("ix_messages_thread_author", "thread_id", "author_pk"),
        _NEVER_REUSE_IDS,
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    candidate_pk: Mapped[int] = mapped_column(ForeignKey("candidates.pk", ondelete="CASCADE"))
    author_pk: Mapped[int] = mapped_column(ForeignKey("users.pk", ondelete="CASCADE"))
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class ThreadPoster(Base):
    """Who has posted in a thread: they are involved in it, for email alerts."""

    __tablename__ = "thread_posters"
    thread_id: Mapped[int] = mapped_column(
        ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True
    )
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.pk", ondelete="CASCADE"), primary_key=True
    )


class EmailMute(Base):
    """A user muted email alerts about one candidate."""

    __tablename__ = "email_mutes"
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.pk", ondelete="CASCADE"), primary_key=True
    )
    candidate_pk: Mapped[int] = mapped_column(
        ForeignKey("candidates.pk", ondelete="CASCADE"), primary_key=True
    )


class ReadMarker(Base):
    """The newest message id a user has read in a thread. It never moves back."""

    __tablename__ = "read_markers"
    # "Seen by" reads every marker of a thread (of all threads of an answer at once).
    __table_args__ = (Index("ix_read_markers_thread", "thread_id", "message_id"),)
    user_pk: Mapped[int] = mapped_column(
        ForeignKey("users.pk", ondelete="CASCADE"), primary_key=True
    )
    thread_id: Mapped[int] = mapped_column(
        ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[int] = mapped_column(BigInteger)
    # When the marker last moved (None: it last moved before this was recorded).
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Event(Base):
    """The per-candidate event log that live clients resume from.

    Only ids are kept: the payload is read from `messages` at replay, so that a deleted
    message's text is gone from storage everywhere.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_created_at", "created_at"),
        Index(
            "ix_events_alerts_pending",
            "created_at",
            sqlite_where=text("alerts_pending"),
            postgresql_where=text("alerts_pending"),
        ),
    )
    candidate_pk: Mapped[int] = mapped_column(
        ForeignKey("candidates.pk", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "message.created" | "message.deleted"
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A new message whose email alerts the worker has not decided yet (see mailer.outbox).
    alerts_pending: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )


class EmailOutbox(Base):
    """One pending email alert per (recipient, thread); a burst of messages shares it."""

    __tablename__ = "email_outbox"
    __table_args__ = (
        Index(
            "uq_email_outbox_pending",
            "user_pk",
            "thread_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_email_outbox_due", "status", "due_at"),
        _NEVER_REUSE_IDS,
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_pk: Mapped[int] = mapped_column(ForeignKey("orgs.pk", ondelete="CASCADE"))
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.pk", ondelete="CASCADE"))
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    candidate_pk: Mapped[int] = mapped_column(ForeignKey("candidates.pk", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(
        String(16), default="pending"
    )  # pending|sent|failed|dropped
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    first_message_id: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditRecord(Base):
    """Who did what, kept for the host ATS (`GET /api/v1/orgs/{org}/audit`).

    Subjects are kept as host ids and numbers, not foreign keys: the record outlives the
    message text, the candidate and the person it names. Its `action` is one of
    `message.deleted` (by `actor_id`, the author) or `user.erased` (by the host ATS)."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_org", "org_pk", "id"), _NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    org_pk: Mapped[int] = mapped_column(ForeignKey("orgs.pk", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: the host
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    candidate_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    thread_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
