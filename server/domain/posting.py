"""A new message's writes, in as few round trips as the database allows.

One transaction bumps the candidate's seq (taking its row lock first, so that seqs and
message ids commit in the order they are handed out), inserts the message and its event, and
moves the thread's newest message id. The event is flagged `alerts_pending`: the alert worker
decides the alerts later from the log (server.domain.alerting), so a send writes nothing
else for them.

The seq bump is also the check that the decision still holds: it only happens while the
candidate's `access_version` is the one the rules were asked with, and while the author has
no message with this client_id. Otherwise nothing is written and the caller finds out why.

PostgreSQL: all of it is one statement (data-modifying CTEs), run in autocommit: it is its
own transaction, all or nothing, and a send costs one round trip. SQLite has no
data-modifying CTEs: four statements in one transaction, each a few microseconds on the
process's own connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, exists, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from channels import protocol
from storage.models import Candidate, Event, Message, Thread


@dataclass(frozen=True, slots=True)
class Posted:
    seq: int
    message_id: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    candidate_pk: int
    thread_id: int
    access_version: int
    author_pk: int
    body: str
    client_id: str | None
    created_at: datetime


async def post_message(conn: AsyncConnection, new: NewMessage) -> Posted | None:
    """Writes the message; None, with nothing written, when the candidate's access moved
    since `access_version`, the candidate is gone, or the author used the client_id already."""
    params = {
        "candidate": new.candidate_pk,
        "thread": new.thread_id,
        "version": new.access_version,
        "author": new.author_pk,
        "body": new.body,
        "client_id": new.client_id,
        "now": new.created_at,
    }
    if conn.dialect.name == "postgresql":
        row = (await conn.execute(_POST_POSTGRES, params)).first()
        return None if row is None else Posted(row.seq, row.message_id)
    seq = (await conn.execute(_BUMP_SEQ, params)).scalar_one_or_none()
    if seq is None:
        return None
    message_id = (await conn.execute(_INSERT_MESSAGE, params)).scalar_one()
    await conn.execute(_INSERT_EVENT, params | {"seq": seq, "message": message_id})
    await conn.execute(_SET_LAST_MESSAGE, params | {"message": message_id})
    return Posted(seq, message_id)


_POST_POSTGRES = text(
    f"""
WITH bumped AS (
    UPDATE candidates SET last_seq = last_seq + 1
    WHERE pk = CAST(:candidate AS BIGINT)
      AND access_version = CAST(:version AS BIGINT)
      AND NOT EXISTS (
          SELECT 1 FROM messages
          WHERE author_pk = CAST(:author AS BIGINT) AND client_id = CAST(:client_id AS VARCHAR)
      )
    RETURNING last_seq
), inserted AS (
    INSERT INTO messages (thread_id, candidate_pk, author_pk, body, client_id, created_at, deleted)
    SELECT CAST(:thread AS BIGINT), CAST(:candidate AS BIGINT), CAST(:author AS BIGINT),
           CAST(:body AS TEXT), CAST(:client_id AS VARCHAR), CAST(:now AS TIMESTAMPTZ), false
    FROM bumped
    RETURNING id
), logged AS (
    INSERT INTO events
        (candidate_pk, seq, kind, thread_id, message_id, created_at, alerts_pending)
    SELECT CAST(:candidate AS BIGINT), bumped.last_seq, '{protocol.MESSAGE_CREATED}',
           CAST(:thread AS BIGINT), inserted.id, CAST(:now AS TIMESTAMPTZ), true
    FROM bumped, inserted
), moved AS (
    UPDATE threads SET last_message_id = inserted.id
    FROM inserted WHERE threads.id = CAST(:thread AS BIGINT)
)
SELECT bumped.last_seq AS seq, inserted.id AS message_id FROM bumped, inserted
"""
)

_BUMP_SEQ = (
    update(Candidate)
    .where(
        Candidate.pk == bindparam("candidate"),
        Candidate.access_version == bindparam("version"),
        ~exists(
            select(Message.id).where(
                Message.author_pk == bindparam("author"),
                Message.client_id == bindparam("client_id"),
            )
        ),
    )
    .values(last_seq=Candidate.last_seq + 1)
    .returning(Candidate.last_seq)
)
_INSERT_MESSAGE = (
    insert(Message)
    .values(
        thread_id=bindparam("thread"),
        candidate_pk=bindparam("candidate"),
        author_pk=bindparam("author"),
        body=bindparam("body"),
        client_id=bindparam("client_id"),
        created_at=bindparam("now"),
        deleted=False,
    )
    .returning(Message.id)
)
_INSERT_EVENT = insert(Event).values(
    candidate_pk=bindparam("candidate"),
    seq=bindparam("seq"),
    kind=protocol.MESSAGE_CREATED,
    thread_id=bindparam("thread"),
    message_id=bindparam("message"),
    created_at=bindparam("now"),
    alerts_pending=True,
)
_SET_LAST_MESSAGE = (
    update(Thread)
    .where(Thread.id == bindparam("thread"))
    .values(last_message_id=bindparam("message"))
)
