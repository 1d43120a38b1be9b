"""Threads as the send path checks them, kept in memory per process.

A thread's place never changes (its candidate, kind and people); who sees its candidate
does, and every such change bumps the candidate's `access_version` in the same transaction.
So an entry here is a guess that is checked where it matters: the send's statement that
locks the candidate row also compares the version the rules were asked with, and writes
nothing when it moved. The send then reads the thread again and decides anew. A refusal is
never decided on a kept entry either: it is read again first.

Bounded: least recently used candidates and threads go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain import facts
from server.domain.facts import Target
from server.domain.rules import Actor, CandidateAccess, ThreadRef

MAX_THREADS = 100_000
MAX_CANDIDATES = 20_000


@dataclass(frozen=True, slots=True)
class _CandidateEntry:
    access: CandidateAccess
    version: int
    candidate_id: str


class TargetCache:
    def __init__(
        self, max_threads: int = MAX_THREADS, max_candidates: int = MAX_CANDIDATES
    ) -> None:
        self.max_threads = max_threads
        self.max_candidates = max_candidates
        self._threads: OrderedDict[int, tuple[int, ThreadRef]] = OrderedDict()  # id -> org
        self._candidates: OrderedDict[int, _CandidateEntry] = OrderedDict()

    def get(self, actor: Actor, thread_id: int) -> Target | None:
        """The kept thread, if any, for the actor's org (nothing crosses orgs)."""
        found = self._threads.get(thread_id)
        if found is None or found[0] != actor.org_pk:
            return None
        ref = found[1]
        entry = self._candidates.get(ref.candidate_pk)
        if entry is None:
            return None
        self._threads.move_to_end(thread_id)
        self._candidates.move_to_end(ref.candidate_pk)
        return Target(ref, entry.access, entry.candidate_id, entry.version)

    def put(self, target: Target) -> None:
        ref = target.ref
        self._threads[ref.id] = (target.access.org_pk, ref)
        self._threads.move_to_end(ref.id)
        self._candidates[ref.candidate_pk] = _CandidateEntry(
            target.access, target.access_version, target.candidate_id
        )
        self._candidates.move_to_end(ref.candidate_pk)
        while len(self._threads) > self.max_threads:
            self._threads.popitem(last=False)
        while len(self._candidates) > self.max_candidates:
            self._candidates.popitem(last=False)

    def forget_candidate(self, candidate_pk: int) -> None:
        """Its access moved (or it is gone): the next use reads it again."""
        self._candidates.pop(candidate_pk, None)

    async def load(self, conn: AsyncConnection, actor: Actor, thread_id: int) -> Target:
        """Reads the thread as it is now (NotFound if the actor does not see it) and keeps it."""
        target = await facts.thread_target(conn, actor, thread_id)
        self.put(target)
        return target
