"""Domain events that actions emit after their transaction commits.

Actions never talk to sockets or brokers: they hand these to an `EventSink` once the data is
durable, and the real-time layer decides who receives what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from server.domain.rules import ThreadRef


@dataclass(frozen=True, slots=True)
class CandidateEvent:
    """A `message.created` or `message.deleted` event, with the candidate's seq."""

    type: str
    org_pk: int
    candidate_pk: int
    candidate_id: str
    seq: int
    thread: ThreadRef
    message_id: int
    audience: frozenset[int]  # who sees the thread at commit time
    message: dict[str, Any] | None = None  # the Message JSON, for message.created


@dataclass(frozen=True, slots=True)
class UnreadTouched:
    """The unread counts of these users may have changed in this thread."""

    org_pk: int
    candidate_pk: int
    thread_id: int
    user_pks: frozenset[int]
    new_message_id: int = 0  # set when a new message is the change: counted as a delta


@dataclass(frozen=True, slots=True)
class ThreadRead:
    """A user's read marker moved ("seen by"). Not an event of the candidate's log: it has
    no seq and is never replayed; the others following the candidate are told at once."""

    candidate_pk: int
    candidate_id: str
    thread_id: int
    reader: dict[str, Any]  # the reader's `User`, for those told by name
    message_id: int
    at: datetime
    named: frozenset[int]  # told who read
    team: frozenset[int]  # told only that the hiring team read


@dataclass(frozen=True, slots=True)
class AccessRevoked:
    """These users no longer see the candidate (or it was erased)."""

    org_pk: int
    candidate_pk: int
    user_pks: frozenset[int] = field(default_factory=frozenset)
    erased: bool = False


@dataclass(frozen=True, slots=True)
class UserErased:
    """The host ATS erased this person: every socket of theirs, on every process, closes
    (their session ends; signing in again is refused)."""

    org_pk: int
    user_pk: int


DomainEvent = CandidateEvent | UnreadTouched | ThreadRead | AccessRevoked | UserErased


class EventSink(Protocol):
    async def publish(self, events: Sequence[DomainEvent]) -> None: ...


class DiscardingSink:
    """The sink of a process that serves no live clients (the CLI, the worker)."""

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        return None
