"""Edges of the domain that need no server: user tokens with ill-typed claims, the send rate
limiter's refill and pruning, and, on an SQLite file database, the event log of an erased
candidate, the unread and user look-ups of nothing, and integrity errors that are not a
client_id race."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from server.domain import actions, views
from server.domain.actions import Messaging, OpenThreadRequest
from server.domain.auth import decode_user_token
from server.domain.errors import NotFound, RateLimited, Unauthorized
from server.domain.eventlog import SqlEventSource
from server.domain.events import CandidateEvent, DiscardingSink, DomainEvent
from server.domain.facts import Principal, load_principal
from server.domain.provisioning import CandidateSpec, Provisioning, UserSpec
from server.domain.ratelimit import SendRateLimiter
from storage.database import Database
from storage.models import Message

SECRET = "unit-secret-0123456789abcdef-0123456789abcdef"
FAR_FUTURE = 4_102_444_800  # 2100-01-01


# --- user tokens --------------------------------------------------------------------------


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({"org": 42, "sub": "ann", "exp": FAR_FUTURE}, "org claim is not a valid id"),
        ({"org": ["acme"], "sub": "ann", "exp": FAR_FUTURE}, "org claim is not a valid id"),
        ({"org": "acme", "sub": 7, "exp": FAR_FUTURE}, "token is not valid"),  # PyJWT's own check
        ({"org": "acme", "sub": "ann smith", "exp": FAR_FUTURE}, "sub claim is not a valid id"),
        # PyJWT checks a numeric string as a time; the claim itself must be a number.
        ({"org": "acme", "sub": "ann", "exp": str(FAR_FUTURE)}, "exp claim is not a time"),
    ],
)
def test_a_token_with_an_ill_typed_claim_is_refused(claims: dict[str, Any], refusal: str) -> None:
    with pytest.raises(Unauthorized, match=refusal):
        decode_user_token(SECRET, token(**claims))


def test_a_well_formed_token_is_accepted() -> None:
    assert decode_user_token(SECRET, token(org="acme", sub="ann", exp=FAR_FUTURE)) == (
        "acme",
        "ann",
        FAR_FUTURE,
    )


# --- the send rate limiter ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_disabled_limiter_never_limits_and_keeps_nothing() -> None:
    limiter = SendRateLimiter(0)
    assert not limiter.enabled
    for _ in range(1000):
        limiter.take("ann")
    assert limiter._buckets == {}


def test_a_bucket_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = SendRateLimiter(60, clock=clock)  # one a second, bursts of 30
    for _ in range(30):
        limiter.take("ann")
    with pytest.raises(RateLimited) as limited:
        limiter.take("ann")
    assert limited.value.retry_after == pytest.approx(1.0)
    limiter.take("bob")  # each user has a bucket of their own
    clock.now += 0.5
    with pytest.raises(RateLimited) as limited:
        limiter.take("ann")
    assert limited.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    limiter.take("ann")  # one token back after a second
    clock.now += 3600
    for _ in range(30):  # a long pause refills to the burst, never beyond
        limiter.take("ann")
    with pytest.raises(RateLimited):
        limiter.take("ann")


def test_at_the_key_bound_only_buckets_that_are_full_again_are_pruned() -> None:
    clock = Clock()
    limiter = SendRateLimiter(60, clock=clock, max_keys=2)  # a bucket refills in 30 s
    limiter.take("idle")
    clock.now += 20
    for _ in range(30):
        limiter.take("busy")  # empty now, and still owing at the prune
    clock.now += 10
    limiter.take("new")  # the bound is reached: "idle" is full again and goes
    assert set(limiter._buckets) == {"busy", "new"}
    # Pruning a full bucket loses nothing, and the busy user is still limited: ten seconds
    # gave it ten tokens, not a fresh burst of thirty.
    for _ in range(10):
        limiter.take("busy")
    with pytest.raises(RateLimited):
        limiter.take("busy")


# --- on an SQLite database ----------------------------------------------------------------


@pytest.fixture
async def db(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty SQLite file: a copy of conftest's session-wide template."""
    path = tmp_path / "test.db"
    shutil.copyfile(sqlite_template, path)
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        yield database
    finally:
        await database.close()


async def provision(db: Database) -> Provisioning:
    """Org acme: member mia coordinates candidate c1, with ann of agency ag."""
    provisioning = Provisioning(db, DiscardingSink())
    await provisioning.put_org("acme", "Acme")
    await provisioning.put_agency("acme", "ag", "Ag")
    await provisioning.put_user("acme", "mia", UserSpec("Mia", "mia@acme.example", "member", None))
    await provisioning.put_user("acme", "ann", UserSpec("Ann", "ann@ag.example", "agency", "ag"))
    await provisioning.put_candidate("acme", "c1", CandidateSpec("C1", "mia", ["mia"], ["ann"]))
    return provisioning


async def principal(db: Database, user: str) -> Principal:
    async with db.read() as session:
        found = await load_principal(session, "acme", user)
    assert found is not None
    return found


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[DomainEvent] = []

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        self.published.extend(events)


async def test_the_event_log_of_an_erased_candidate_is_empty(db: Database) -> None:
    provisioning = await provision(db)
    ann = await principal(db, "ann")
    sink = RecordingSink()
    messaging = Messaging(db, sink)
    thread, _ = await messaging.open_thread(ann, "c1", OpenThreadRequest(private=False))
    await messaging.send(ann, int(str(thread["id"])), "hello", None)
    (candidate_pk,) = {e.candidate_pk for e in sink.published if isinstance(e, CandidateEvent)}
    source = SqlEventSource(db)
    assert [e.seq for e in await source.events_after(candidate_pk, 0, 10)] == [1]
    # Erased while a process still follows it: the hub's catch-up finds nothing to send.
    await provisioning.erase_candidate("acme", "c1")
    assert await source.events_after(candidate_pk, 0, 10) == []
    window = await source.window(candidate_pk)
    assert (window.first_retained, window.last_seq) == (None, None)


async def test_looking_up_nothing_answers_nothing_without_a_query(db: Database) -> None:
    async with db.read() as session:
        before = db.statements
        assert await views.unread_by_thread(session, 1, []) == {}
        assert await views.users_by_pk(session, []) == {}
        assert db.statements == before


async def failing_write(conn: Any, new: Any) -> None:
    """A send's write that breaks a constraint other than the client_id's."""
    raise IntegrityError("INSERT INTO messages ...", {}, Exception("a constraint"))


@pytest.mark.parametrize("client_id", [None, "retry-1"])
async def test_an_integrity_error_that_is_not_a_client_id_race_is_raised(
    db: Database, client_id: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await provision(db)
    ann = await principal(db, "ann")
    opener = Messaging(db, RecordingSink())
    thread, _ = await opener.open_thread(ann, "c1", OpenThreadRequest(private=False))
    sink = RecordingSink()
    messaging = Messaging(db, sink)
    monkeypatch.setattr(actions, "post_message", failing_write)
    with pytest.raises(IntegrityError, match="a constraint"):
        await messaging.send(ann, int(str(thread["id"])), "hello", client_id)
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 0
    assert sink.published == []


async def test_the_message_a_client_id_race_answers_with_is_read_as_access_is_now(
    db: Database,
) -> None:
    """The loser of a client_id race answers with the winner's message, found by its
    client_id; like a repeat found inside the transaction, only while its author may still
    read it where it is."""
    provisioning = await provision(db)
    ann = await principal(db, "ann")
    messaging = Messaging(db, RecordingSink())
    thread, _ = await messaging.open_thread(ann, "c1", OpenThreadRequest(private=False))
    sent, _ = await messaging.send(ann, int(str(thread["id"])), "hello", "tab-1")
    async with db.read() as session:
        found = await actions._repeat(session, ann, "tab-1")
    assert found is not None and found["id"] == sent["id"]
    await provisioning.put_candidate("acme", "c1", CandidateSpec("C1", "mia", ["mia"], []))
    with pytest.raises(NotFound):
        async with db.read() as session:
            await actions._repeat(session, ann, "tab-1")
