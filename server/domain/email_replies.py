"""Replies by email, as the domain sees them: whom a reply address leads to, and posting
the reply through the same action, rules and rate limit as every other send.

The receiver (mailer.inbound) asks through its `ReplyDesk` interface, which this implements.
"""

from __future__ import annotations

import hashlib

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select

from channels import protocol
from mailer.inbound import Posted, Recipient, Refused
from mailer.reply_address import ReplyToken
from mailer.worker import LinkBuilder
from server.domain.actions import Messaging
from server.domain.errors import AppError, NotFound, RateLimited, Unavailable
from server.domain.facts import load_principal
from server.domain.ratelimit import SendRateLimiter
from storage.database import Database
from storage.models import Candidate, Message, Org, Thread, User

_BODY = TypeAdapter(protocol.Body)
# A reply to a thread the person no longer sees meets NotFound, whose words are for a
# client that asked by id; the person reading the answer email gets these.
NO_LONGER_VISIBLE = (
    "You no longer have access to this conversation (or it was removed), so your reply "
    "could not be added to it."
)


def thread_client_id(client_id: str, recipient: Recipient) -> str:
    seed = f"{client_id}\n{recipient.thread_id}".encode()
    return f"email:{recipient.thread_id}:{hashlib.sha256(seed).hexdigest()[:40]}"


class EmailReplies:
    """The `ReplyDesk` of the receiver."""

    def __init__(
        self, db: Database, messaging: Messaging, limiter: SendRateLimiter, link: LinkBuilder
    ) -> None:
        self.db = db
        self.messaging = messaging
        self.limiter = limiter
        self.link = link

    async def recipient(self, token: ReplyToken) -> Recipient | None:
        """The token's user and thread, in one company (never across), or None."""
        newest = (
            select(func.max(Message.id)).where(Message.thread_id == Thread.id).scalar_subquery()
        )
        query = (
            select(
                User.name,
                User.email,
                Thread.id,
                Candidate.ext_id,
                Candidate.name,
                newest,
                Org.ext_id,
                User.ext_id,
            )
            .select_from(User)
            .join(Org, Org.pk == User.org_pk)
            .join(Thread, Thread.org_pk == User.org_pk)
            .join(Candidate, Candidate.pk == Thread.candidate_pk)
            .where(User.pk == token.user_pk, Thread.id == token.thread_id)
        )
        async with self.db.reading() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        name, email, thread_id, candidate_id, candidate_name, newest_id, org_id, user_id = row
        return Recipient(
            user_pk=token.user_pk,
            name=name,
            email=email,
            thread_id=thread_id,
            candidate_id=candidate_id,
            candidate_name=candidate_name,
            # Opens the thread at its newest message (0: none yet, the thread's start).
            link=self.link(candidate_id, thread_id, int(newest_id or 0)),
            org_id=org_id,
            user_id=user_id,
        )

    async def post(self, recipient: Recipient, body: str, client_id: str) -> Posted | Refused:
        async with self.db.reading() as conn:
            who = await load_principal(conn, recipient.org_id, recipient.user_id)
        if who is None or who.actor.pk != recipient.user_pk:
            return Refused(NO_LONGER_VISIBLE)
        try:
            text = _BODY.validate_python(body)
        except ValidationError:
            return Refused("The reply has no text that can be posted.")
        try:
            self.limiter.take(who.key)
            message, created = await self.messaging.send(who, recipient.thread_id, text, client_id)
            if message["thread"] != recipient.thread_id:
                # The same email answered another of this person's threads too (a client
                # id is one per author): here it posts under an id of its own for this
                # thread, as stable across redeliveries as the first.
                message, created = await self.messaging.send(
                    who, recipient.thread_id, text, thread_client_id(client_id, recipient)
                )
        except (RateLimited, Unavailable) as error:
            return Refused(error.message, temporary=True)
        except NotFound:
            return Refused(NO_LONGER_VISIBLE)
        except AppError as error:
            return Refused(error.message)
        message_id = int(message["id"])
        if created:
            # As in the browser, replying reads what came before the reply. (Should this
            # fail, the email is deferred; its redelivery finds the message posted.)
            await self.messaging.mark_read(who, recipient.thread_id, message_id)
        return Posted(message_id, created)
