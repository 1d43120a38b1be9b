"""The read side: queries that answer the messaging API, and the JSON shapes of the contract.

Visibility here is the SQL form of `server.domain.rules.can_see_thread` (a thread list cannot load
every thread to filter it in Python). tests/test_api_rules.py checks both agree end to end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    func,
    join,
    literal,
    or_,
    select,
    union,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from server.domain import rules
from server.domain.rules import (
    AGENCY,
    AGENCY_THREAD,
    MEMBER,
    Actor,
    CandidateAccess,
    Marker,
    Seen,
    ThreadRef,
)
from storage.models import (
    Agency,
    Candidate,
    CandidateAgencyUser,
    CandidateMember,
    Message,
    ReadMarker,
    Thread,
    User,
)

Json = dict[str, Any]


def iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user_ref(
    user_id: str,
    name: str,
    kind: str,
    agency_id: str | None = None,
    agency_name: str | None = None,
) -> Json:
    """The contract's `User`: the one place its shape is written. An agency user names its
    agency (null for a member, or an agency user whose agency is gone)."""
    agency = None if agency_id is None else {"id": agency_id, "name": agency_name}
    return {"id": user_id, "name": name, "kind": kind, "agency": agency}


# A user with its agency's id and name (outer join: a member has none). Every read of
# users that the contract's `User` is built from selects these.
USER_COLUMNS = (
    User.pk,
    User.ext_id,
    User.name,
    User.kind,
    Agency.ext_id.label("agency_id"),
    Agency.name.label("agency_name"),
)


class UserFields(Protocol):
    """A row of USER_COLUMNS."""

    ext_id: str
    name: str
    kind: str
    agency_id: str | None
    agency_name: str | None


def user_json(user: UserFields | None) -> Json | None:
    if user is None:
        return None
    return user_ref(user.ext_id, user.name, user.kind, user.agency_id, user.agency_name)


# How far a user has read a thread: the marker's message id, 0 before any read.
READ_UP_TO = func.coalesce(ReadMarker.message_id, literal(0))


class MessageFields(Protocol):
    """A `Message` row, or a Core row with the same column names."""

    id: int
    thread_id: int
    body: str | None
    created_at: datetime
    deleted: bool
    client_id: str | None


@dataclass(frozen=True, slots=True)
class MessageRow:
    message: MessageFields
    author: Json | None  # the contract's `User`
    candidate_id: str

    def to_json(self) -> Json:
        return message_json(self.message, self.author, self.candidate_id)


def message_json(m: MessageFields, author: Json | None, candidate_id: str) -> Json:
    """The contract's `Message`."""
    return {
        "id": m.id,
        "thread": m.thread_id,
        "candidate": candidate_id,
        "author": author,
        "body": None if m.deleted else m.body,
        "created_at": iso(m.created_at),
        "deleted": m.deleted,
        "client_id": m.client_id,
    }


# Messages are read as plain columns (not ORM objects): history pages are the most
# frequent read, and building ORM objects cost several times the query.
_MESSAGE_COLUMNS = select(
    Message.id,
    Message.thread_id,
    Message.body,
    Message.created_at,
    Message.deleted,
    Message.client_id,
    User.ext_id.label("author_id"),
    User.name.label("author_name"),
    User.kind.label("author_kind"),
    Agency.ext_id.label("author_agency_id"),
    Agency.name.label("author_agency_name"),
    Candidate.ext_id.label("candidate_id"),
).select_from(
    join(Message, User, User.pk == Message.author_pk)
    .outerjoin(Agency, Agency.pk == User.agency_pk)
    .join(Candidate, Candidate.pk == Message.candidate_pk)
)
_PAGE_NEWEST = (
    _MESSAGE_COLUMNS.where(Message.thread_id == bindparam("t"))
    .order_by(Message.id.desc())
    .limit(bindparam("n"))
)
_PAGE_BEFORE = (
    _MESSAGE_COLUMNS.where(Message.thread_id == bindparam("t"), Message.id < bindparam("c"))
    .order_by(Message.id.desc())
    .limit(bindparam("n"))
)
_PAGE_AFTER = (
    _MESSAGE_COLUMNS.where(Message.thread_id == bindparam("t"), Message.id > bindparam("c"))
    .order_by(Message.id.asc())
    .limit(bindparam("n"))
)


def _row(row: Any) -> MessageRow:
    author = user_ref(
        row.author_id,
        row.author_name,
        row.author_kind,
        row.author_agency_id,
        row.author_agency_name,
    )
    return MessageRow(row, author, row.candidate_id)


async def messages_by_id(session: AsyncSession, ids: Iterable[int]) -> dict[int, MessageRow]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    conn = await session.connection()
    rows = await conn.execute(_MESSAGE_COLUMNS.where(Message.id.in_(wanted)))
    return {row.id: _row(row) for row in rows}


async def message_page(
    session: AsyncSession, thread_id: int, *, before: int | None, after: int | None, limit: int
) -> tuple[list[MessageRow], bool]:
    """A page of history, oldest first, and whether more exist in the paging direction."""
    if after is not None:
        query, cursor = _PAGE_AFTER, after
    elif before is not None:
        query, cursor = _PAGE_BEFORE, before
    else:
        query, cursor = _PAGE_NEWEST, 0
    conn = await session.connection()
    result = await conn.execute(query, {"t": thread_id, "c": cursor, "n": limit + 1})
    rows = [_row(row) for row in result]
    has_more = len(rows) > limit
    rows = rows[:limit]
    if after is None:
        rows.reverse()
    return rows, has_more


# --- visibility in SQL ----------------------------------------------------------------


def accessible_candidates(actor: Actor) -> Select[Any]:
    """Candidate pks the actor sees now (SQL form of rules.can_see_candidate)."""
    if actor.is_member:
        return (
            union(
                select(CandidateMember.candidate_pk).where(CandidateMember.user_pk == actor.pk),
                select(Candidate.pk).where(
                    Candidate.coordinator_pk == actor.pk, Candidate.org_pk == actor.org_pk
                ),
            )
            .subquery()
            .select()
        )
    return select(CandidateAgencyUser.candidate_pk).where(CandidateAgencyUser.user_pk == actor.pk)


def thread_visible(actor: Actor) -> ColumnElement[bool]:
    """SQL form of rules.can_see_thread, for a query over `Thread`."""
    in_candidates = Thread.candidate_pk.in_(accessible_candidates(actor))
    if actor.is_member:
        return and_(
            Thread.org_pk == actor.org_pk,
            in_candidates,
            or_(Thread.kind == AGENCY_THREAD, Thread.member_pk == actor.pk),
        )
    return and_(Thread.org_pk == actor.org_pk, Thread.agency_user_pk == actor.pk, in_candidates)


# --- unread -----------------------------------------------------------------------------


def unread_conditions(
    user_pk: Any, thread_id: Any = Thread.id, read_up_to: Any = READ_UP_TO
) -> list[ColumnElement[bool]]:
    """What "unread" means, in the one place it is written (with the thread and the
    user's marker joined, or their columns given): after the marker, by someone else, not
    deleted."""
    return [
        Message.thread_id == thread_id,
        Message.id > read_up_to,
        Message.author_pk != user_pk,
        Message.deleted.is_(False),
    ]


def _unread_columns(user_pk: int) -> tuple[Select[Any], Any, Any]:
    """Threads joined to the user's marker, with the unread count and newest unread id.

    Counting walks the (thread_id, id) index from the marker on: it reads the unread
    messages, never the whole history. Threads with nothing after the marker are skipped
    by `last_message_id` without touching `messages`.
    """
    conditions = unread_conditions(user_pk)
    count = select(func.count()).where(*conditions).correlate(Thread, ReadMarker).scalar_subquery()
    newest = (
        # "+ 0" keeps PostgreSQL from answering max() by walking the primary key backwards
        # (through every newer message of the table); it uses the thread's index range.
        select(func.max(Message.id + 0))
        .where(*conditions)
        .correlate(Thread, ReadMarker)
        .scalar_subquery()
    )
    base = select(Thread).outerjoin(
        ReadMarker, and_(ReadMarker.thread_id == Thread.id, ReadMarker.user_pk == user_pk)
    )
    return base, count, newest


async def unread_by_thread(
    session: AsyncSession, user_pk: int, thread_ids: Sequence[int]
) -> dict[int, int]:
    if not thread_ids:
        return {}
    base, count, _ = _unread_columns(user_pk)
    query = base.with_only_columns(Thread.id, count).where(
        Thread.id.in_(list(thread_ids)), Thread.last_message_id > READ_UP_TO
    )
    return {thread_id: n for thread_id, n in (await session.execute(query)) if n}


@dataclass(frozen=True, slots=True)
class UnreadThread:
    thread_id: int
    candidate_pk: int
    unread: int
    newest_unread_id: int | None


async def unread_threads(
    session: AsyncSession, actor: Actor, candidate_pk: int | None = None
) -> list[UnreadThread]:
    """Every visible thread of the actor with unread messages (optionally of one candidate)."""
    base, count, newest = _unread_columns(actor.pk)
    query = base.with_only_columns(Thread.id, Thread.candidate_pk, count, newest).where(
        thread_visible(actor), Thread.last_message_id > READ_UP_TO
    )
    if candidate_pk is not None:
        query = query.where(Thread.candidate_pk == candidate_pk)
    rows = await session.execute(query)
    return [UnreadThread(t, c, n, newest_id) for t, c, n, newest_id in rows if n]


def _unread_snapshot_query(kind: str) -> Select[Any]:
    """Every thread a user of this kind sees, unread or not: (thread id, candidate pk,
    candidate id, unread, last message id, marker). Parameters: u (user pk), o (org pk)."""
    actor = Actor(cast(int, bindparam("u")), cast(int, bindparam("o")), kind)
    last = func.coalesce(Thread.last_message_id, literal(0))
    count = (
        select(func.count())
        .where(*unread_conditions(actor.pk), Message.id <= Thread.last_message_id)
        .correlate(Thread, ReadMarker)
        .scalar_subquery()
    )
    return (
        select(
            Thread.id,
            Thread.candidate_pk,
            Candidate.ext_id,
            case((last > READ_UP_TO, count), else_=literal(0)),
            last,
            READ_UP_TO,
        )
        .join(Candidate, Candidate.pk == Thread.candidate_pk)
        .outerjoin(
            ReadMarker, and_(ReadMarker.thread_id == Thread.id, ReadMarker.user_pk == actor.pk)
        )
        .where(thread_visible(actor))
    )


# Built once: the hub reads a snapshot for every user who connects.
_UNREAD_SNAPSHOT = {kind: _unread_snapshot_query(kind) for kind in (MEMBER, AGENCY)}


async def unread_snapshot(
    db: AsyncSession | AsyncConnection, actor: Actor
) -> list[tuple[int, int, str, int, int, int]]:
    """One statement, so each count and the last message id it was counted up to come from
    the same snapshot of the database."""
    conn = db if isinstance(db, AsyncConnection) else await db.connection()
    rows = await conn.execute(_UNREAD_SNAPSHOT[actor.kind], {"u": actor.pk, "o": actor.org_pk})
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def thread_unread(session: AsyncSession, user_pk: int, thread_id: int) -> int:
    return (await unread_by_thread(session, user_pk, [thread_id])).get(thread_id, 0)


# --- threads ----------------------------------------------------------------------------


async def threads_json(
    session: AsyncSession,
    actor: Actor,
    threads: Sequence[Thread],
    candidate_id: str,
    access: CandidateAccess,
) -> list[Json]:
    """Contract `Thread` objects for threads the caller is known to see, on the candidate
    whose access (as now) is `access`."""
    if not threads:
        return []
    seen = await seen_entries(session, actor, [(_ref(t), access) for t in threads])
    user_pks = {t.agency_user_pk for t in threads} | {t.member_pk for t in threads if t.member_pk}
    users = await users_by_pk(session, user_pks | seen_readers(seen))
    unread = await unread_by_thread(session, actor.pk, [t.id for t in threads])
    last = await messages_by_id(session, [t.last_message_id for t in threads if t.last_message_id])
    out = []
    for t in threads:
        last_row = last.get(t.last_message_id) if t.last_message_id else None
        out.append(
            {
                "id": t.id,
                "candidate": candidate_id,
                "kind": t.kind,
                "agency_user": user_json(users.get(t.agency_user_pk)),
                "member": user_json(users.get(t.member_pk)) if t.member_pk else None,
                # Unlinked: the thread stays readable, but nobody may post in it (rules).
                "agency_user_linked": access.agency_user_linked(t.agency_user_pk),
                "unread": unread.get(t.id, 0),
                "last_message": last_row.to_json() if last_row else None,
                "seen": seen_list(seen[t.id], users),
            }
        )
    return out


def _ref(thread: Thread) -> ThreadRef:
    return ThreadRef(
        thread.id, thread.candidate_pk, thread.kind, thread.agency_user_pk, thread.member_pk
    )


# --- seen by ---------------------------------------------------------------------------


async def seen_entries(
    session: AsyncSession, actor: Actor, threads: Sequence[tuple[ThreadRef, CandidateAccess]]
) -> dict[int, list[Seen]]:
    """Each thread's "seen by" as the actor may be shown it (rules.seen_by), with the
    access of its candidate as now; every marker read in one statement."""
    markers = await markers_by_thread(session, [ref.id for ref, _ in threads])
    return {
        ref.id: rules.seen_by(actor, access, ref, markers.get(ref.id, ()))
        for ref, access in threads
    }


def seen_readers(seen: dict[int, list[Seen]]) -> set[int]:
    """The users that `seen_list` names: their rows are read with `users_by_pk`."""
    return {s.reader_pk for entries in seen.values() for s in entries if s.reader_pk is not None}


def seen_list(entries: list[Seen], users: dict[int, Any]) -> list[Json]:
    """A thread's `seen`: the contract's `Seen` objects. (A reader erased between the two
    reads has no row left to name: its entry goes with it.)"""
    return [
        {
            "reader": None if s.reader_pk is None else user_json(users[s.reader_pk]),
            "team": s.team,
            "message_id": s.message_id,
            "at": None if s.at is None else iso(s.at),
        }
        for s in entries
        if s.reader_pk is None or s.reader_pk in users
    ]


_MARKERS = select(
    ReadMarker.thread_id, ReadMarker.user_pk, ReadMarker.message_id, ReadMarker.read_at
).where(ReadMarker.thread_id.in_(bindparam("threads", expanding=True)))


async def markers_by_thread(
    session: AsyncSession, thread_ids: Sequence[int]
) -> dict[int, list[Marker]]:
    """Every read marker of these threads, in one statement (by the thread index)."""
    conn = await session.connection()
    out: dict[int, list[Marker]] = {}
    for row in await conn.execute(_MARKERS, {"threads": sorted(set(thread_ids))}):
        out.setdefault(row.thread_id, []).append(Marker(row.user_pk, row.message_id, row.read_at))
    return out


async def visible_threads(session: AsyncSession, actor: Actor, candidate_pk: int) -> list[Thread]:
    query = (
        select(Thread)
        .where(Thread.candidate_pk == candidate_pk, thread_visible(actor))
        .order_by(Thread.id)
    )
    return list(await session.scalars(query))


_USERS_BY_PK = (
    select(*USER_COLUMNS)
    .outerjoin(Agency, Agency.pk == User.agency_pk)
    .where(User.pk.in_(bindparam("pks", expanding=True)))
)


async def users_by_pk(session: AsyncSession, pks: Iterable[int]) -> dict[int, Any]:
    """Rows of USER_COLUMNS by pk, in one statement."""
    wanted = sorted(set(pks))
    if not wanted:
        return {}
    conn = await session.connection()
    return {row.pk: row for row in await conn.execute(_USERS_BY_PK, {"pks": wanted})}


def ordered_users(users: dict[int, Any], pks: Iterable[int]) -> list[Json]:
    rows = [users[pk] for pk in pks if pk in users]
    rows.sort(key=lambda u: (u.name.casefold(), u.ext_id))
    return [user_ref(u.ext_id, u.name, u.kind, u.agency_id, u.agency_name) for u in rows]


async def visible_candidates(
    session: AsyncSession, actor: Actor, *, after: str | None, limit: int
) -> tuple[list[Candidate], bool]:
    query = select(Candidate).where(
        Candidate.org_pk == actor.org_pk, Candidate.pk.in_(accessible_candidates(actor))
    )
    if after is not None:
        query = query.where(Candidate.ext_id > after)
    rows = list(await session.scalars(query.order_by(Candidate.ext_id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
