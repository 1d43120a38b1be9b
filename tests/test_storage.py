"""Storage: migrations match the models, SQLite pragmas, seq ordering under concurrency,
index use of the hot queries, and candidate erasure, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from harness.services import PostgresServer
from server.domain import views
from server.domain.eventlog import SqlEventSource
from server.domain.rules import Actor
from server.settings import Settings
from storage import migrate
from storage.database import SQLITE_BUSY_TIMEOUT_MS, Database, create_engine
from storage.models import (
    Base,
    Candidate,
    CandidateAgencyUser,
    CandidateMember,
    EmailOutbox,
    Event,
    Message,
    Org,
    ReadMarker,
    Thread,
    User,
)
from tests.support.world import Api

# Its tests share module-scoped fixtures: one worker runs them all.
pytestmark = pytest.mark.xdist_group("storage")


@pytest.fixture(params=["sqlite", "postgres"])
async def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A brand-new, empty (un-migrated) database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        name = f"am_fresh_{uuid.uuid4().hex[:12]}"
        postgres.create_database(name)
        url = postgres.url(name)
    db = Database(url)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A second handle on the test's (migrated, empty) database, for direct inspection."""
    db = Database(settings.database_url)
    try:
        yield db
    finally:
        await db.close()


# --- migrations -----------------------------------------------------------------------


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_reach_head_and_match_models(fresh_db: Database) -> None:
    assert await migrate.current_revision(fresh_db) is None
    await migrate.upgrade(fresh_db)
    head = migrate.head_revision(fresh_db.url)
    assert head is not None
    assert await migrate.current_revision(fresh_db) == head
    await migrate.check_up_to_date(fresh_db)  # does not raise

    async with fresh_db.engine.connect() as conn:
        diff = await conn.run_sync(_schema_diff)
    assert diff == [], f"the migrated schema differs from storage.models: {diff}"

    # Upgrading again is a no-op.
    await migrate.upgrade(fresh_db)
    assert await migrate.current_revision(fresh_db) == head


async def test_check_up_to_date_refuses_an_empty_database(fresh_db: Database) -> None:
    with pytest.raises(migrate.SchemaOutOfDate) as raised:
        await migrate.check_up_to_date(fresh_db)
    assert "agency-messaging migrate" in str(raised.value)


# --- SQLite pragmas -------------------------------------------------------------------


async def test_sqlite_connections_use_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}")
    try:
        for _ in range(2):  # every pooled connection, not only the first
            async with db.engine.connect() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
                timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
                foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
            assert str(mode).lower() == "wal"
            assert timeout == SQLITE_BUSY_TIMEOUT_MS
            assert timeout >= 1000
            assert foreign_keys == 1
    finally:
        await db.close()


# --- seqs under concurrency -----------------------------------------------------------


async def _candidate_pk(db: Database, org: str, cand: str) -> int:
    async with db.read() as session:
        pk = await session.scalar(
            select(Candidate.pk)
            .join(Org, Org.pk == Candidate.org_pk)
            .where(Org.ext_id == org, Candidate.ext_id == cand)
        )
    assert pk is not None
    return int(pk)


async def _assert_gapless_log(db: Database, candidate_pk: int, sent: list[dict[str, Any]]) -> None:
    async with db.read() as session:
        events = list(
            await session.scalars(
                select(Event).where(Event.candidate_pk == candidate_pk).order_by(Event.seq)
            )
        )
        last_seq = await session.scalar(
            select(Candidate.last_seq).where(Candidate.pk == candidate_pk)
        )
    n = len(sent)
    assert [e.seq for e in events] == list(range(1, n + 1))
    assert all(e.kind == "message.created" for e in events)
    message_ids = [e.message_id for e in events]
    assert message_ids == sorted(message_ids), "seq order differs from message id order"
    assert sorted(message_ids) == sorted(m["id"] for m in sent)
    by_id = {m["id"]: m for m in sent}
    assert all(by_id[e.message_id]["thread"] == e.thread_id for e in events)
    assert last_seq == n


async def test_concurrent_sends_commit_gapless_seqs_in_order(
    world: Api, database: Database
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    with_coord = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    with_mem = await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    other = await world.open_thread("other", "oann", "c1", {"private": False})
    pairs = [
        ("coord", agency["id"]),
        ("mem", agency["id"]),
        ("ann", agency["id"]),
        ("ann", with_coord["id"]),
        ("coord", with_coord["id"]),
        ("ann", with_mem["id"]),
        ("mem", with_mem["id"]),
    ]
    sends = [pairs[i % len(pairs)] for i in range(42)]
    other_sends = [("omem" if i % 2 else "oann", other["id"]) for i in range(10)]

    results = await asyncio.gather(
        *(world.send("acme", user, thread, f"acme {i}") for i, (user, thread) in enumerate(sends)),
        *(
            world.send("other", user, thread, f"other {i}")
            for i, (user, thread) in enumerate(other_sends)
        ),
    )
    acme_sent, other_sent = list(results[: len(sends)]), list(results[len(sends) :])
    assert len({m["id"] for m in results}) == len(results)

    await _assert_gapless_log(database, await _candidate_pk(database, "acme", "c1"), acme_sent)
    await _assert_gapless_log(database, await _candidate_pk(database, "other", "c1"), other_sent)


# --- index use ------------------------------------------------------------------------

THREADS_PER_CANDIDATE = 4
CANDIDATES = 10
MESSAGES_PER_THREAD = 500
TARGET_MESSAGES = 100
EVENTS_PER_CANDIDATE = 400


async def _fill(db: Database) -> dict[str, Any]:
    """Bulk-inserts an org with a few thousand messages and events, then ANALYZEs."""
    async with db.write() as session:
        org = await session.execute(insert(Org).values(ext_id="big", name="Big"))
        org_pk = org.inserted_primary_key[0]
        member_pk = (
            await session.execute(
                insert(User).values(
                    org_pk=org_pk, ext_id="m", name="M", email="m@x.example", kind="member"
                )
            )
        ).inserted_primary_key[0]
        agent_pk = (
            await session.execute(
                insert(User).values(
                    org_pk=org_pk, ext_id="a", name="A", email="a@x.example", kind="agency"
                )
            )
        ).inserted_primary_key[0]
        await session.execute(
            insert(Candidate),
            [
                {"org_pk": org_pk, "ext_id": f"c{i}", "name": f"C{i}", "coordinator_pk": member_pk}
                for i in range(CANDIDATES)
            ],
        )
        candidate_pks = list(
            await session.scalars(
                select(Candidate.pk).where(Candidate.org_pk == org_pk).order_by(Candidate.pk)
            )
        )
        await session.execute(
            insert(CandidateMember),
            [{"candidate_pk": c, "user_pk": member_pk} for c in candidate_pks],
        )
        await session.execute(
            insert(CandidateAgencyUser),
            [{"candidate_pk": c, "user_pk": agent_pk} for c in candidate_pks],
        )
        await session.execute(
            insert(Thread),
            [
                {"org_pk": org_pk, "candidate_pk": c, "kind": "agency", "agency_user_pk": agent_pk}
                for c in candidate_pks
            ],
        )
        # More threads per candidate: private ones, each with its own member.
        extra_members = []
        for j in range(THREADS_PER_CANDIDATE - 1):
            extra_members.append(
                (
                    await session.execute(
                        insert(User).values(
                            org_pk=org_pk,
                            ext_id=f"m{j}",
                            name=f"M{j}",
                            email=f"m{j}@x.example",
                            kind="member",
                        )
                    )
                ).inserted_primary_key[0]
            )
        await session.execute(
            insert(Thread),
            [
                {
                    "org_pk": org_pk,
                    "candidate_pk": c,
                    "kind": "private",
                    "agency_user_pk": agent_pk,
                    "member_pk": m,
                }
                for c in candidate_pks
                for m in extra_members
            ],
        )
        threads = list(
            await session.execute(
                select(Thread.id, Thread.candidate_pk)
                .where(Thread.org_pk == org_pk)
                .order_by(Thread.id)
            )
        )
        # One long conversation among many short ones, interleaved as real traffic is. The
        # target is an agency thread (the first CANDIDATES threads), so the member sees it.
        target_thread, target_candidate = threads[CANDIDATES // 2]
        slots = [
            (t, c)
            for t, c in threads
            for _ in range(TARGET_MESSAGES if t == target_thread else MESSAGES_PER_THREAD)
        ]
        random.Random(7).shuffle(slots)
        ordinal: dict[int, int] = {}
        rows = []
        for t, c in slots:
            n = ordinal[t] = ordinal.get(t, -1) + 1
            rows.append(
                {
                    "thread_id": t,
                    "candidate_pk": c,
                    "author_pk": agent_pk if n % 2 else member_pk,  # alternate in each thread
                    "body": f"message {n} in thread {t}",
                }
            )
        await session.execute(insert(Message), rows)
        last_ids = dict(
            (
                await session.execute(
                    select(Message.thread_id, func.max(Message.id)).group_by(Message.thread_id)
                )
            ).all()
        )
        for t, _ in threads:
            await session.execute(
                update(Thread).where(Thread.id == t).values(last_message_id=last_ids[t])
            )
        target_ids = list(
            await session.scalars(
                select(Message.id).where(Message.thread_id == target_thread).order_by(Message.id)
            )
        )
        marker = target_ids[-10]
        await session.execute(
            insert(ReadMarker).values(user_pk=member_pk, thread_id=target_thread, message_id=marker)
        )
        first_thread_of = {}
        for t, c in threads:
            first_thread_of.setdefault(c, t)
        await session.execute(
            insert(Event),
            [
                {
                    "candidate_pk": c,
                    "seq": s,
                    "kind": "message.created",
                    "thread_id": first_thread_of[c],
                    "message_id": s,
                }
                for c in candidate_pks
                for s in range(1, EVENTS_PER_CANDIDATE + 1)
            ],
        )
        await session.execute(
            update(Candidate)
            .where(Candidate.org_pk == org_pk)
            .values(last_seq=EVENTS_PER_CANDIDATE)
        )
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    return {
        "org_pk": org_pk,
        "member_pk": member_pk,
        "thread": target_thread,
        "candidate": target_candidate,
        "marker": marker,
        "middle": target_ids[TARGET_MESSAGES // 2],
        "newest": target_ids[-1],  # the thread's last message is the agency user's
    }


async def _captured(db: Database, run: Callable[[Any], Awaitable[Any]]) -> list[tuple[str, Any]]:
    """The SQL statements (with parameters) that `run(session)` sends to the database."""
    statements: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with db.read() as session:
            await run(session)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    assert statements, "the query under test sent no SELECT"
    return statements


async def _plan(db: Database, statement: str, parameters: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if db.sqlite else "EXPLAIN "
    async with db.engine.connect() as conn:
        rows = (await conn.exec_driver_sql(prefix + statement, parameters)).all()
    if db.sqlite:
        return "\n".join(str(row[-1]) for row in rows)
    return "\n".join(str(row[0]) for row in rows)


def _indexes_of(table: str) -> set[str]:
    names = {f"pk_{table}"}
    for index in Base.metadata.tables[table].indexes:
        names.add(str(index.name))
    for constraint in Base.metadata.tables[table].constraints:
        if constraint.name:
            names.add(str(constraint.name))
    return names


def _assert_uses_index(db: Database, plan: str, table: str, index: str) -> None:
    """Every read of `table` in the plan goes through `index`: no full scan, no other index."""
    if db.sqlite:
        lines = [
            line
            for line in plan.splitlines()
            if re.match(rf"(SEARCH|SCAN) {table}\b", line.strip())
        ]
        assert lines, plan
        bad = [line for line in lines if index not in line]
        assert not bad, f"{table} is read without {index}: {bad}\n{plan}"
        return
    assert f"Seq Scan on {table}" not in plan, plan
    used = re.findall(
        rf"(?:Index Scan|Index Only Scan|Index Scan Backward) using (\w+) on {table}\b", plan
    )
    used += [
        name
        for name in re.findall(r"Bitmap Index Scan on (\w+)", plan)
        if name in _indexes_of(table)
    ]
    assert used, plan
    bad = [name for name in used if name != index]
    assert not bad, f"{table} is read through {bad} instead of {index}:\n{plan}"


async def _plans_of(db: Database, run: Callable[[Any], Awaitable[Any]]) -> list[str]:
    return [await _plan(db, s, p) for s, p in await _captured(db, run)]


async def _migrate_and_fill(url: str) -> dict[str, Any]:
    db = Database(url)
    try:
        await migrate.upgrade(db)
        return await _fill(db)
    finally:
        await db.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, Any]]:
    """A database of each kind holding a few thousand messages and events, ANALYZEd."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('plans') / 'plans.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        name = f"am_plans_{uuid.uuid4().hex[:12]}"
        postgres.create_database(name)
        url = postgres.url(name)
    return url, asyncio.run(_migrate_and_fill(url))


@pytest.fixture
async def filled(
    filled_url: tuple[str, dict[str, Any]],
) -> AsyncIterator[tuple[Database, dict[str, Any]]]:
    db = Database(filled_url[0])
    try:
        yield db, filled_url[1]
    finally:
        await db.close()


@pytest.mark.parametrize("page", ["newest", "before", "after"])
async def test_history_pages_use_the_thread_index(
    filled: tuple[Database, dict[str, Any]], page: str
) -> None:
    db, data = filled
    before = data["middle"] if page == "before" else None
    after = data["middle"] if page == "after" else None
    plans = await _plans_of(
        db, lambda s: views.message_page(s, data["thread"], before=before, after=after, limit=50)
    )
    assert len(plans) == 1
    _assert_uses_index(db, plans[0], "messages", "ix_messages_thread_id")


async def test_thread_unread_count_uses_the_thread_index(
    filled: tuple[Database, dict[str, Any]],
) -> None:
    db, data = filled
    async with db.read() as session:
        # After the marker: the last 9 messages of the thread, 5 of them by the agency user.
        assert await views.thread_unread(session, data["member_pk"], data["thread"]) == 5
    plans = await _plans_of(db, lambda s: views.thread_unread(s, data["member_pk"], data["thread"]))
    assert len(plans) == 1
    _assert_uses_index(db, plans[0], "messages", "ix_messages_thread_id")


@pytest.mark.parametrize("scope", ["candidate", "all"])
async def test_unread_dots_use_the_thread_index(
    filled: tuple[Database, dict[str, Any]], scope: str
) -> None:
    """The blue dots (`GET /unread`, a candidate's unread): count and newest unread id per
    thread are range reads of (thread_id, id) from the marker on, never a walk of the whole
    message table."""
    db, data = filled
    actor = Actor(data["member_pk"], data["org_pk"], "member")
    candidate = data["candidate"] if scope == "candidate" else None
    async with db.read() as session:
        rows = {u.thread_id: u for u in await views.unread_threads(session, actor, candidate)}
    assert rows[data["thread"]].unread == 5
    assert rows[data["thread"]].newest_unread_id == data["newest"]
    plans = await _plans_of(db, lambda s: views.unread_threads(s, actor, candidate))
    assert len(plans) == 1
    _assert_uses_index(db, plans[0], "messages", "ix_messages_thread_id")


async def test_event_replay_uses_the_events_primary_key(
    filled: tuple[Database, dict[str, Any]],
) -> None:
    """Resuming a subscription reads a candidate's events after a seq, in seq order."""
    db, data = filled
    after = EVENTS_PER_CANDIDATE - 10
    replay = (
        select(Event.seq)
        .where(Event.candidate_pk == data["candidate"], Event.seq > after)
        .order_by(Event.seq)
    )
    async with db.read() as session:
        seqs = list(await session.scalars(replay))
    assert seqs == list(range(after + 1, EVENTS_PER_CANDIDATE + 1))
    plans = await _plans_of(db, lambda s: s.execute(replay))
    assert len(plans) == 1
    pk_index = "sqlite_autoindex_events_1" if db.sqlite else "pk_events"
    _assert_uses_index(db, plans[0], "events", pk_index)
    if db.sqlite:
        assert "TEMP B-TREE" not in plans[0], plans[0]
    else:
        assert "Sort" not in plans[0], plans[0]

    # The server's own replay query (the real-time layer's event source).
    source = SqlEventSource(db)
    replayed = await source.events_after(data["candidate"], after, 100)
    assert [e.seq for e in replayed] == seqs
    statements: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        if re.search(r"\bFROM events\b", statement):
            statements.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await source.events_after(data["candidate"], after, 100)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    assert len(statements) == 1, statements
    _assert_uses_index(db, await _plan(db, *statements[0]), "events", pk_index)


# --- erasure --------------------------------------------------------------------------


async def test_erasing_a_candidate_leaves_no_rows(world: Api, database: Database) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    first = await world.send("acme", "ann", agency["id"], "hello")
    await world.send("acme", "coord", agency["id"], "hi")
    await world.send("acme", "coord", private["id"], "between us")
    gone = await world.send("acme", "ann", private["id"], "oops")
    assert (await world.delete("acme", "ann", f"/api/v1/messages/{gone['id']}")).status_code == 204
    read = await world.post(
        "acme", "mem", f"/api/v1/threads/{agency['id']}/read", {"message_id": first["id"]}
    )
    assert read.status_code == 200, read.text
    kept_thread = await world.open_thread("other", "oann", "c1", {"private": False})
    kept = await world.send("other", "oann", kept_thread["id"], "other org")

    candidate_pk = await _candidate_pk(database, "acme", "c1")
    thread_ids = [agency["id"], private["id"]]
    async with database.read() as session:
        assert await session.scalar(
            select(func.count()).select_from(Event).where(Event.candidate_pk == candidate_pk)
        )

    response = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=world.service)
    assert response.status_code == 204, response.text

    async def count(model: Any, *where: Any) -> int:
        async with database.read() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*where)))

    assert await count(Candidate, Candidate.pk == candidate_pk) == 0
    assert await count(Thread, Thread.candidate_pk == candidate_pk) == 0
    assert await count(Thread, Thread.id.in_(thread_ids)) == 0
    assert await count(Message, Message.candidate_pk == candidate_pk) == 0
    assert await count(Message, Message.thread_id.in_(thread_ids)) == 0
    assert await count(Event, Event.candidate_pk == candidate_pk) == 0
    assert await count(ReadMarker, ReadMarker.thread_id.in_(thread_ids)) == 0
    assert await count(EmailOutbox, EmailOutbox.candidate_pk == candidate_pk) == 0
    assert await count(CandidateMember, CandidateMember.candidate_pk == candidate_pk) == 0
    assert await count(CandidateAgencyUser, CandidateAgencyUser.candidate_pk == candidate_pk) == 0
    # The other org's candidate of the same id is untouched.
    assert await count(Message, Message.id == kept["id"]) == 1
    missing = await world.get("acme", "ann", f"/api/v1/threads/{agency['id']}/messages")
    assert missing.status_code == 404
    # The audit trail outlives the candidate: the deletion of "oops" is still on record.
    audit = await world.client.get("/api/v1/orgs/acme/audit", headers=world.service)
    (record,) = audit.json()["records"]
    assert (record["action"], record["candidate"], record["message"]) == (
        "message.deleted",
        "c1",
        gone["id"],
    )


async def test_ids_of_an_erased_candidate_are_never_handed_out_again(
    world: Api, database: Database
) -> None:
    # The erased rows hold the newest ids; without AUTOINCREMENT SQLite would reuse them.
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    message = await world.send("acme", "ann", thread["id"], "hello")
    old_pk = await _candidate_pk(database, "acme", "c1")
    response = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=world.service)
    assert response.status_code == 204, response.text

    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )
    again = await world.open_thread("acme", "ann", "c1", {"private": False})
    resent = await world.send("acme", "ann", again["id"], "hello again")
    assert await _candidate_pk(database, "acme", "c1") > old_pk
    assert again["id"] > thread["id"]
    assert resent["id"] > message["id"]
    # The old ids find nothing, for either side.
    for user in ("ann", "mem"):
        gone = await world.get("acme", user, f"/api/v1/threads/{thread['id']}/messages")
        assert gone.status_code == 404, gone.text


async def test_the_autoincrement_migration_keeps_every_row(tmp_path: Path) -> None:
    """0003 → head on SQLite rebuilds four tables: their rows, and the rows that point at
    them (children that a rebuild with foreign keys on would cascade away), all stay."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await _sqlite_at_0003(url, _OLD_ROWS)
    db = Database(url)
    try:
        await migrate.upgrade(db)
        assert await migrate.current_revision(db) == migrate.head_revision(url)
        async with db.engine.connect() as conn:
            counts = {
                table: (await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in (
                    "candidates",
                    "threads",
                    "messages",
                    "events",
                    "read_markers",
                    "thread_posters",
                    "email_outbox",
                    "candidate_members",
                )
            }
            schema = dict((await conn.exec_driver_sql("SELECT name, sql FROM sqlite_master")).all())
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
        assert set(counts.values()) == {1}, counts
        for table in ("candidates", "threads", "messages", "email_outbox"):
            assert "AUTOINCREMENT" in schema[table], schema[table]
        # The partial unique indexes survive the rebuild with their WHERE clauses.
        assert "WHERE kind = 'agency'" in schema["uq_threads_agency"]
        assert "WHERE status = 'pending'" in schema["uq_email_outbox_pending"]
        async with db.write() as session:
            session.add(
                Message(thread_id=5, candidate_pk=1, author_pk=1, body="next", deleted=False)
            )
            await session.flush()
        async with db.read() as session:
            assert await session.scalar(select(func.max(Message.id))) == 8
    finally:
        await db.close()


async def test_a_migration_that_breaks_a_foreign_key_is_rolled_back(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'broken.db'}"
    # A message whose thread does not exist (possible only with foreign keys off).
    orphan = (
        "INSERT INTO messages (id, thread_id, candidate_pk, author_pk, body, created_at, "
        "deleted) VALUES (9, 404, 1, 1, 'x', '2026-01-01', 0)"
    )
    await _sqlite_at_0003(url, [*_OLD_ROWS[:2], orphan])
    db = Database(url)
    try:
        with pytest.raises(migrate.ForeignKeysBroken, match="messages"):
            await migrate.upgrade(db)
        assert await migrate.current_revision(db) == "0003"
    finally:
        await db.close()


async def _sqlite_at_0003(url: str, statements: list[str]) -> None:
    """A SQLite database migrated to revision 0003 (before AUTOINCREMENT), holding rows."""
    engine = create_engine(url, sqlite_foreign_keys=False, poolclass=NullPool)

    def upgrade_to_0003(connection: Connection) -> None:
        config = migrate.alembic_config(url)
        config.attributes["connection"] = connection
        alembic_command.upgrade(config, "0003")

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to_0003)
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


_OLD_ROWS = [
    "INSERT INTO orgs (pk, ext_id, name, created_at) VALUES (1, 'o', 'O', '2026-01-01')",
    "INSERT INTO users (pk, org_pk, ext_id, name, email, kind, email_muted) VALUES "
    "(1, 1, 'm', 'M', 'm@example.com', 'member', 0), "
    "(2, 1, 'a', 'A', 'a@example.com', 'agency', 0)",
    "INSERT INTO candidates (pk, org_pk, ext_id, name, last_seq) VALUES (1, 1, 'c', 'C', 1)",
    "INSERT INTO candidate_members (candidate_pk, user_pk) VALUES (1, 1)",
    "INSERT INTO threads (id, org_pk, candidate_pk, kind, agency_user_pk, created_at, "
    "last_message_id) VALUES (5, 1, 1, 'agency', 2, '2026-01-01', 7)",
    "INSERT INTO messages (id, thread_id, candidate_pk, author_pk, body, created_at, deleted) "
    "VALUES (7, 5, 1, 1, 'hi', '2026-01-01', 0)",
    "INSERT INTO thread_posters (thread_id, user_pk) VALUES (5, 1)",
    "INSERT INTO events (candidate_pk, seq, kind, thread_id, message_id, created_at) "
    "VALUES (1, 1, 'message.created', 5, 7, '2026-01-01')",
    "INSERT INTO read_markers (user_pk, thread_id, message_id) VALUES (2, 5, 7)",
    "INSERT INTO email_outbox (id, org_pk, user_pk, thread_id, candidate_pk, status, due_at, "
    "first_message_id, attempts, created_at) "
    "VALUES (3, 1, 2, 5, 1, 'pending', '2026-01-01', 7, 0, '2026-01-01')",
]
