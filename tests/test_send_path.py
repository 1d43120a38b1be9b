"""The send's hot path: access kept in memory but checked at the write, one statement per
send on PostgreSQL, a dropped connection retried, and alerts decided later from the event
log, exactly once. On SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain import actions, posting
from server.domain.actions import Messaging, OpenThreadRequest
from server.domain.alerting import ADVISORY_LOCK_KEY, AlertDerivation
from server.domain.errors import NotFound, Unavailable
from server.domain.events import CandidateEvent, DiscardingSink, DomainEvent
from server.domain.facts import Principal, Target, load_principal
from server.domain.posting import NewMessage, Posted
from server.domain.provisioning import CandidateSpec, Provisioning, UserSpec
from server.domain.rules import Actor, CandidateAccess, ThreadRef
from server.domain.targets import TargetCache
from storage.database import Database
from storage.models import EmailOutbox, Event, Message, ThreadPoster


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[DomainEvent] = []

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        self.published.extend(events)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.close()


async def provision(db: Database) -> Provisioning:
    """Org acme: member mia coordinates c1 (members mia and max), with ann of agency ag."""
    provisioning = Provisioning(db, DiscardingSink())
    await provisioning.put_org("acme", "Acme")
    await provisioning.put_agency("acme", "ag", "Ag")
    for user, kind, agency in (("mia", "member", None), ("max", "member", None)):
        await provisioning.put_user("acme", user, UserSpec(user, f"{user}@x.example", kind, agency))
    await provisioning.put_user("acme", "ann", UserSpec("Ann", "ann@ag.example", "agency", "ag"))
    await put_c1(provisioning, members=["mia", "max"])
    return provisioning


async def put_c1(provisioning: Provisioning, *, members: list[str], agency: bool = True) -> None:
    spec = CandidateSpec("C1", "mia", members, ["ann"] if agency else [])
    await provisioning.put_candidate("acme", "c1", spec)


async def principal(db: Database, user: str) -> Principal:
    async with db.read() as session:
        found = await load_principal(session, "acme", user)
    assert found is not None
    return found


async def agency_thread(db: Database, messaging: Messaging) -> int:
    ann = await principal(db, "ann")
    thread, _ = await messaging.open_thread(ann, "c1", OpenThreadRequest(private=False))
    return int(str(thread["id"]))


async def count(db: Database, model: Any, *where: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --- access kept in memory, checked at the write ------------------------------------------


async def test_a_send_on_a_kept_thread_is_one_statement(db: Database) -> None:
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    await messaging.send(ann, thread, "first: reads the thread", None)
    before = db.statements
    await messaging.send(ann, thread, "second: from memory", None)
    # PostgreSQL: one statement in autocommit, one round trip. SQLite: its BEGIN IMMEDIATE
    # and four statements, on the process's own connection.
    assert db.statements - before == (1 if db.dialect == "postgresql" else 5)


async def test_a_revocation_takes_effect_on_the_next_send_despite_memory(db: Database) -> None:
    provisioning = await provision(db)
    sink = RecordingSink()
    messaging = Messaging(db, sink)
    thread = await agency_thread(db, messaging)
    max_ = await principal(db, "max")
    await messaging.send(max_, thread, "kept in memory now", None)
    await put_c1(provisioning, members=["mia"])  # max loses access
    with pytest.raises(NotFound):
        await messaging.send(max_, thread, "too late", None)
    assert await count(db, Message) == 1
    # The audience of the next message is who sees the thread now: max is not in it.
    mia = await principal(db, "mia")
    await messaging.send(mia, thread, "after the change", None)
    last = [e for e in sink.published if isinstance(e, CandidateEvent)][-1]
    assert max_.actor.pk not in last.audience and mia.actor.pk in last.audience


async def test_a_refusal_is_never_decided_on_memory(db: Database) -> None:
    provisioning = await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    max_ = await principal(db, "max")
    await put_c1(provisioning, members=["mia"])
    with pytest.raises(NotFound):
        await messaging.send(max_, thread, "no access yet", None)
    await put_c1(provisioning, members=["mia", "max"])  # access back: the kept refusal is old
    message, created = await messaging.send(max_, thread, "back in", None)
    assert created and message["body"] == "back in"


async def test_an_access_change_that_keeps_the_sender_is_retried_once(db: Database) -> None:
    provisioning = await provision(db)
    sink = RecordingSink()
    messaging = Messaging(db, sink)
    thread = await agency_thread(db, messaging)
    mia = await principal(db, "mia")
    await messaging.send(mia, thread, "one", None)
    await put_c1(provisioning, members=["mia"])  # max goes; mia still sees it
    message, created = await messaging.send(mia, thread, "two", None)
    assert created and message["body"] == "two"
    events = [e for e in sink.published if isinstance(e, CandidateEvent)]
    assert [e.seq for e in events] == [1, 2]  # the stale attempt wrote nothing, not even a seq
    assert (await principal(db, "max")).actor.pk not in events[-1].audience


async def test_a_repeated_client_id_writes_nothing_and_answers_the_first(db: Database) -> None:
    await provision(db)
    sink = RecordingSink()
    messaging = Messaging(db, sink)
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    first, created = await messaging.send(ann, thread, "hello", "tab-1")
    again, created_again = await messaging.send(ann, thread, "hello (retry)", "tab-1")
    assert created and not created_again and again == first
    assert await count(db, Message) == 1
    assert len([e for e in sink.published if isinstance(e, CandidateEvent)]) == 1
    async with db.read() as session:
        assert await session.scalar(select(func.max(Event.seq))) == 1


def dropped(times: int) -> Any:
    """A write whose connection the database drops `times` times before it goes through."""
    calls = 0

    async def write(conn: AsyncConnection, new: NewMessage) -> Posted | None:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise DBAPIError("INSERT ...", {}, ConnectionError("gone"), connection_invalidated=True)
        return await posting.post_message(conn, new)

    write.calls = lambda: calls  # type: ignore[attr-defined]
    return write


async def test_a_dropped_connection_is_retried_once_when_a_client_id_makes_it_safe(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    write = dropped(1)
    monkeypatch.setattr(actions, "post_message", write)
    message, created = await messaging.send(ann, thread, "made it", "tab-1")
    assert created and write.calls() == 2
    assert await count(db, Message) == 1 and message["body"] == "made it"
    # Twice in a row: the second error reaches the caller.
    monkeypatch.setattr(actions, "post_message", dropped(2))
    with pytest.raises(DBAPIError):
        await messaging.send(ann, thread, "not this time", "tab-2")


async def test_without_a_client_id_a_dropped_connection_is_not_retried(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement may have been carried out before the link dropped: a second write
    could post the message twice. The error reaches the client, who may send again."""
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    write = dropped(1)
    monkeypatch.setattr(actions, "post_message", write)
    with pytest.raises(DBAPIError):
        await messaging.send(ann, thread, "maybe", None)
    assert write.calls() == 1


# --- alerts decided from the event log ----------------------------------------------------


def derivation(db: Database) -> AlertDerivation:
    return AlertDerivation(db, 60.0)


async def test_a_send_writes_no_alert_and_the_worker_decides_it_once(db: Database) -> None:
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann, max_ = await principal(db, "ann"), await principal(db, "max")
    await messaging.send(max_, thread, "max joins in", None)
    await messaging.send(ann, thread, "for the team", None)
    assert await count(db, EmailOutbox) == 0
    assert await count(db, Event, Event.alerts_pending.is_(True)) == 2

    assert await derivation(db).run_all() == 2
    async with db.read() as session:
        rows = (await session.execute(select(EmailOutbox.user_pk, EmailOutbox.status))).all()
        posters = set(await session.scalars(select(ThreadPoster.user_pk)))
    mia = await principal(db, "mia")
    # max's message: ann and the coordinator mia; ann's: max (who posted) and mia again,
    # who shares the first row (one alert per recipient and thread).
    assert sorted(rows) == sorted(
        [(ann.actor.pk, "pending"), (mia.actor.pk, "pending"), (max_.actor.pk, "pending")]
    )
    assert posters == {ann.actor.pk, max_.actor.pk}
    assert await count(db, Event, Event.alerts_pending.is_(True)) == 0
    assert await derivation(db).run_all() == 0  # decided once: nothing left
    assert await count(db, EmailOutbox) == 3


async def test_alerts_are_decided_with_access_as_it_is_when_deciding(db: Database) -> None:
    provisioning = await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    await messaging.send(ann, thread, "before the change", None)
    await put_c1(provisioning, members=["max"])  # mia is no longer a member...
    await provisioning.put_candidate("acme", "c1", CandidateSpec("C1", None, ["max"], ["ann"]))
    await derivation(db).run_all()  # ...nor the coordinator: nobody involved sees it
    assert await count(db, EmailOutbox) == 0


async def test_muted_users_get_no_alert_row(db: Database) -> None:
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann, mia = await principal(db, "ann"), await principal(db, "mia")
    max_ = await principal(db, "max")
    await messaging.send(max_, thread, "max posts", None)
    async with db.write() as session:  # mia muted everything
        from storage.models import User

        (await session.get(User, mia.actor.pk)).email_muted = True  # type: ignore[union-attr]
    await derivation(db).run_all()
    async with db.read() as session:
        queued = list(await session.scalars(select(EmailOutbox.user_pk)))
    assert queued == [ann.actor.pk]
    assert await count(db, Event, Event.alerts_pending.is_(True)) == 0


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_concurrent_workers_decide_each_alert_once(db: Database) -> None:
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    for n in range(30):
        await messaging.send(ann, thread, f"message {n}", None)
    workers = [AlertDerivation(db, 60.0, batch=7) for _ in range(4)]
    # Workers' rounds skip while another decides; deciding "all now" waits for it instead.
    decided = await asyncio.gather(
        *(w.run_once() for w in workers), *(w.run_all() for w in workers)
    )
    assert sum(decided) == 30  # every event decided by exactly one of them
    async with db.read() as session:
        rows = (await session.execute(select(EmailOutbox.user_pk, EmailOutbox.status))).all()
    assert len(rows) == 1  # mia, the coordinator: one alert for the burst


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_deciding_all_now_waits_for_a_worker_in_the_middle_of_deciding(
    db: Database,
) -> None:
    """Else what a worker is deciding could be queued after the caller moved on (a test that
    makes every alert due at once would miss the worker's rows)."""
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    for n in range(3):
        await messaging.send(ann, thread, f"message {n}", None)
    async with db.write() as session:  # a worker holding the lock, mid-decision
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        waiting = asyncio.create_task(derivation(db).run_all())
        assert await derivation(db).run_once() == 0  # a worker's round skips meanwhile
        await asyncio.sleep(0.2)
        assert not waiting.done()
    assert await asyncio.wait_for(waiting, 10) == 3


async def test_a_send_whose_access_keeps_moving_gives_up_with_503(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every attempt found the access moved (a storm of changes): after a few, the client
    is told to try again, and nothing was written."""
    await provision(db)
    messaging = Messaging(db, RecordingSink())
    thread = await agency_thread(db, messaging)
    ann = await principal(db, "ann")
    attempts = 0

    async def always_moved(conn: AsyncConnection, new: NewMessage) -> Posted | None:
        nonlocal attempts
        attempts += 1
        return None

    monkeypatch.setattr(actions, "post_message", always_moved)
    with pytest.raises(Unavailable):
        await messaging.send(ann, thread, "never", None)
    assert attempts == actions.SEND_ATTEMPTS and await count(db, Message) == 0


def test_kept_threads_and_candidates_are_bounded_least_recently_used_first() -> None:
    cache = TargetCache(max_threads=2, max_candidates=2)
    actor = Actor(1, 1, "member")

    def target(thread_id: int, candidate_pk: int) -> Target:
        ref = ThreadRef(thread_id, candidate_pk, "agency", 9, None)
        access = CandidateAccess(candidate_pk, 1, None, frozenset({1}), frozenset({9}))
        return Target(ref, access, f"c{candidate_pk}", 0)

    for thread_id, candidate_pk in ((1, 10), (2, 20)):
        cache.put(target(thread_id, candidate_pk))
    assert cache.get(actor, 1) is not None  # now the most recently used
    cache.put(target(3, 30))  # one thread and one candidate too many: 2 and 20 go
    assert cache.get(actor, 2) is None
    assert cache.get(actor, 1) is not None and cache.get(actor, 3) is not None
    assert cache.get(Actor(1, 2, "member"), 1) is None  # nothing crosses orgs
