"""Two sends with the same client_id racing on PostgreSQL.

A client_id is unique per author across every thread. Sends to threads of two different
candidates lock different candidate rows, so both can pass the "already sent?" check before
either commits; the loser's insert then waits on the unique index and fails when the winner
commits. The loser must answer with the winner's message, as a retry would.

(On SQLite the process's write lock serialises the two transactions whole: the second one
finds the first's message by the ordinary check, and the race cannot happen.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain import actions, posting
from server.domain.actions import Messaging, OpenThreadRequest
from server.domain.events import CandidateEvent, DiscardingSink, DomainEvent
from server.domain.facts import load_principal
from server.domain.posting import NewMessage, Posted
from server.domain.provisioning import CandidateSpec, Provisioning, UserSpec
from storage.database import Database
from storage.models import Message

pytestmark = pytest.mark.postgres


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[DomainEvent] = []

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        self.published.extend(events)


class HoldingWrites:
    """Holds the first send inside its transaction, after its message is written."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def post_message(self, conn: AsyncConnection, new: NewMessage) -> Posted | None:
        self.calls += 1
        posted = await posting.post_message(conn, new)
        if self.calls == 1:
            self.entered.set()
            await self.release.wait()
        return posted


async def lock_waiters(db: Database) -> int:
    async with db.engine.connect() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(count or 0)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_loser_of_a_client_id_race_answers_with_the_winners_message(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(db_url)
    try:
        provisioning = Provisioning(db, DiscardingSink())
        await provisioning.put_org("acme", "Acme")
        await provisioning.put_agency("acme", "ag", "Ag")
        await provisioning.put_user(
            "acme", "mia", UserSpec("Mia", "mia@acme.example", "member", None)
        )
        await provisioning.put_user(
            "acme", "ann", UserSpec("Ann", "ann@ag.example", "agency", "ag")
        )
        for cand in ("c1", "c2"):
            await provisioning.put_candidate(
                "acme", cand, CandidateSpec(cand.upper(), "mia", ["mia"], ["ann"])
            )
        async with db.read() as session:
            ann = await load_principal(session, "acme", "ann")
        assert ann is not None
        sink, alerts = RecordingSink(), HoldingWrites()
        monkeypatch.setattr(actions, "post_message", alerts.post_message)
        # A send is one statement in autocommit; held in a transaction here, so that the
        # race (otherwise a window of microseconds) happens every time.
        monkeypatch.setattr(db, "atomic", db.transaction)
        messaging = Messaging(db, sink)
        threads = []
        for cand in ("c1", "c2"):
            thread, _ = await messaging.open_thread(ann, cand, OpenThreadRequest(private=False))
            threads.append(int(str(thread["id"])))

        # The same client_id sent to both threads at once (two tabs, a retry on a new socket).
        winner = asyncio.create_task(messaging.send(ann, threads[0], "first", "tab-1"))
        await asyncio.wait_for(alerts.entered.wait(), 10)  # inserted, not committed
        loser = asyncio.create_task(messaging.send(ann, threads[1], "second", "tab-1"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await lock_waiters(db) == 0:  # the loser's insert waits on the unique index
            assert not loser.done(), loser
            assert loop.time() < deadline, "the second send never waited on the first"
            await asyncio.sleep(0.01)
        alerts.release.set()
        (won, won_created), (lost, lost_created) = await asyncio.wait_for(
            asyncio.gather(winner, loser), 10
        )

        assert won_created and not lost_created
        assert lost["id"] == won["id"] and lost["thread"] == threads[0]
        assert lost["body"] == "first" and lost["client_id"] == "tab-1"
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(Message)) == 1
        # Only the message that exists was announced.
        created = [e for e in sink.published if isinstance(e, CandidateEvent)]
        assert [(e.type, e.message_id) for e in created] == [("message.created", won["id"])]
    finally:
        await db.close()
