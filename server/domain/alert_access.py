"""The domain's answers to the alert worker (`mailer.worker.ThreadAccess`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.compose import AlertLine
from server.domain import rules, views
from server.domain.facts import candidate_access, thread_ref
from storage.models import Agency, Candidate, Message, ReadMarker, Thread, User


@dataclass(frozen=True, slots=True)
class UnreadMessage:
    id: int
    body: str
    created_at: datetime
    author_name: str
    author_agency: str | None  # the name of an agency user's agency; None for a member


async def unread_messages(
    session: AsyncSession, user_pk: int, thread_id: int, *, from_id: int
) -> list[UnreadMessage]:
    """The user's unread messages of one thread from message `from_id` on, oldest first
    (what an alert email quotes, with each author's agency: one query, however many
    messages). Whether the user sees the thread is checked apart."""
    query = (
        select(Message.id, Message.body, Message.created_at, User.name, Agency.name)
        .select_from(Thread)
        .outerjoin(
            ReadMarker, and_(ReadMarker.thread_id == Thread.id, ReadMarker.user_pk == user_pk)
        )
        .join(Message, Message.thread_id == Thread.id)
        .join(User, User.pk == Message.author_pk)
        .outerjoin(Agency, Agency.pk == User.agency_pk)
        .where(
            Thread.id == thread_id,
            Message.id >= from_id,
            *views.unread_conditions(user_pk),
        )
        .order_by(Message.id)
    )
    rows = await session.execute(query)
    return [
        UnreadMessage(pk, body or "", created_at, name, agency)
        for pk, body, created_at, name, agency in rows
    ]


class AlertAccess:
    """The domain's answers to the alert worker (`mailer.worker.ThreadAccess`)."""

    async def sees_thread(
        self, session: AsyncSession, user: User, candidate: Candidate, thread: Thread
    ) -> bool:
        actor = rules.Actor(user.pk, user.org_pk, user.kind)
        access = await candidate_access(session, candidate)
        return rules.can_see_thread(actor, access, thread_ref(thread))

    def is_private(self, thread: Thread) -> bool:
        return thread.kind == rules.PRIVATE_THREAD

    async def unread_lines(
        self, session: AsyncSession, user: User, thread: Thread, from_id: int
    ) -> list[AlertLine]:
        unread = await unread_messages(session, user.pk, thread.id, from_id=from_id)
        return [
            AlertLine(m.author_name, m.body, m.created_at, m.id, m.author_agency) for m in unread
        ]
