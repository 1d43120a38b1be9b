"""Email alert preferences: mute one candidate or everything; signed unsubscribe links."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jwt
from sqlalchemy import CompoundSelect, bindparam, delete, null, select, union
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from storage.models import Candidate, EmailMute, EmailOutbox, User

UNSUBSCRIBE_PURPOSE = "unsubscribe"
UNSUBSCRIBE_TTL_SECONDS = 365 * 24 * 3600
INVALID_UNSUBSCRIBE_LINK = "This unsubscribe link is not valid (or has expired)."


class BadUnsubscribeToken(ValueError):
    """The unsubscribe link is invalid, expired, or for another purpose."""


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    user_pk: int
    candidate_pk: int | None


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's alert settings: everything muted, and the candidates muted one by one
    (their external ids, sorted)."""

    muted: bool
    muted_candidates: list[str]

    def to_json(self) -> dict[str, object]:
        return {"muted": self.muted, "muted_candidates": self.muted_candidates}


@dataclass(frozen=True, slots=True)
class UnsubscribeTarget:
    """Whom and what an unsubscribe link mutes, by name (for the page that asks)."""

    user_name: str
    candidate_name: str | None  # None: every candidate, or one erased since


async def get_preferences(session: AsyncSession, user_pk: int) -> Preferences:
    user = await session.get(User, user_pk)
    rows = await session.scalars(
        select(Candidate.ext_id)
        .join(EmailMute, EmailMute.candidate_pk == Candidate.pk)
        .where(EmailMute.user_pk == user_pk)
        .order_by(Candidate.ext_id)
    )
    return Preferences(bool(user and user.email_muted), list(rows))


async def unsubscribe_target(
    session: AsyncSession, request: UnsubscribeRequest
) -> UnsubscribeTarget | None:
    """What the link would mute, or None when its user no longer exists."""
    user = await session.get(User, request.user_pk)
    if user is None:
        return None
    candidate = await session.get(Candidate, request.candidate_pk) if request.candidate_pk else None
    return UnsubscribeTarget(user.name, candidate.name if candidate else None)


async def is_muted(session: AsyncSession, user_pk: int, candidate_pk: int) -> bool:
    pair = (user_pk, candidate_pk)
    return pair in await muted_pairs(await session.connection(), [pair])


async def muted_pairs(
    conn: AsyncConnection, pairs: Iterable[tuple[int, int]]
) -> set[tuple[int, int]]:
    """The (user, candidate) pairs among `pairs` whose alerts are muted, in one statement:
    the user muted everything, or that candidate."""
    wanted = set(pairs)
    if not wanted:
        return set()
    users = sorted({user for user, _ in wanted})
    candidates = sorted({candidate for _, candidate in wanted})
    rows = await conn.execute(_MUTED_PAIRS, {"users": users, "candidates": candidates})
    muted_everything = set()
    muted = set()
    for user_pk, candidate_pk in rows:
        if candidate_pk is None:
            muted_everything.add(user_pk)
        else:
            muted.add((user_pk, candidate_pk))
    return {pair for pair in wanted if pair in muted or pair[0] in muted_everything}


# Built once: these run for every batch of alerts.
_MUTED_PAIRS: CompoundSelect[Any] = union(
    select(User.pk, null().label("candidate_pk")).where(
        User.pk.in_(bindparam("users", expanding=True)), User.email_muted.is_(True)
    ),
    select(EmailMute.user_pk, EmailMute.candidate_pk).where(
        EmailMute.user_pk.in_(bindparam("users", expanding=True)),
        EmailMute.candidate_pk.in_(bindparam("candidates", expanding=True)),
    ),
)


async def set_preferences(
    session: AsyncSession, user_pk: int, *, muted: bool | None, candidate_pks: set[int] | None
) -> None:
    user = await session.get(User, user_pk)
    assert user is not None
    if muted is not None:
        user.email_muted = muted
    if candidate_pks is not None:
        current = set(
            await session.scalars(
                select(EmailMute.candidate_pk).where(EmailMute.user_pk == user_pk)
            )
        )
        gone = current - candidate_pks
        if gone:
            await session.execute(
                delete(EmailMute).where(
                    EmailMute.user_pk == user_pk, EmailMute.candidate_pk.in_(gone)
                )
            )
        for candidate_pk in sorted(candidate_pks - current):
            session.add(EmailMute(user_pk=user_pk, candidate_pk=candidate_pk))


async def mute(session: AsyncSession, request: UnsubscribeRequest) -> None:
    if request.candidate_pk is None:
        await set_preferences(session, request.user_pk, muted=True, candidate_pks=None)
        return
    exists = await session.get(EmailMute, (request.user_pk, request.candidate_pk))
    if exists is None:
        session.add(EmailMute(user_pk=request.user_pk, candidate_pk=request.candidate_pk))


def unsubscribe_token(secret: str, user_pk: int, candidate_pk: int | None) -> str:
    claims = {
        "purpose": UNSUBSCRIBE_PURPOSE,
        "u": user_pk,
        "c": candidate_pk,
        "exp": int(time.time()) + UNSUBSCRIBE_TTL_SECONDS,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def read_unsubscribe_token(secret: str, token: str) -> UnsubscribeRequest:
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError:
        raise BadUnsubscribeToken(INVALID_UNSUBSCRIBE_LINK) from None
    user_pk, candidate_pk = claims.get("u"), claims.get("c")
    if claims.get("purpose") != UNSUBSCRIBE_PURPOSE or not isinstance(user_pk, int):
        raise BadUnsubscribeToken(INVALID_UNSUBSCRIBE_LINK)
    if candidate_pk is not None and not isinstance(candidate_pk, int):
        raise BadUnsubscribeToken(INVALID_UNSUBSCRIBE_LINK)
    return UnsubscribeRequest(user_pk, candidate_pk)


def unsubscribe_link(secret: str, public_url: str, row: EmailOutbox, candidate_id: str) -> str:
    """A link that works without signing in: it mutes alerts about this candidate."""
    token = unsubscribe_token(secret, row.user_pk, row.candidate_pk)
    return f"{public_url}/unsubscribe?token={quote(token)}"
