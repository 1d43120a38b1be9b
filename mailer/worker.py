"""The alert worker: queues the alerts of new messages, claims due outbox rows, re-checks
them as things are now, sends.

It runs inside every server process, and alone as `agency-messaging worker`. Each round it
first has the domain decide the alerts of messages posted since (`derive`, reading the
event log: the send itself writes nothing for alerts), then claims what is due. At send time
each alert is checked again: the recipient still sees the thread, is not muted, and still
has unread messages in it; otherwise it is dropped. Being online is not reading: whether
the recipient has a socket open is not asked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from mailer import outbox
from mailer.compose import Alert, AlertLine, compose
from mailer.preferences import is_muted, unsubscribe_link
from mailer.transport import PermanentError, TransientError, Transport
from storage.database import Database
from storage.models import Candidate, EmailOutbox, Thread, User, utcnow

log = logging.getLogger("agency_messaging.mailer")


class ThreadAccess(Protocol):
    """What the worker asks the domain at send time; handed in by whoever builds it, so
    that the mailer knows the rules only through this interface."""

    async def sees_thread(
        self, session: AsyncSession, user: User, candidate: Candidate, thread: Thread
    ) -> bool:
        """Whether the user sees the thread now."""

    def is_private(self, thread: Thread) -> bool: ...

    async def unread_lines(
        self, session: AsyncSession, user: User, thread: Thread, from_id: int
    ) -> list[AlertLine]:
        """The thread's messages still unread for the user from message `from_id` on,
        oldest first (the domain says what "unread" is)."""


# (candidate's external id, thread id, message id) → the link that opens that message.
LinkBuilder = Callable[[str, int, int], str]
# (recipient's user key, thread id) → their reply address for that thread.
ReplyAddressBuilder = Callable[[int, int], str]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Timings of the alert worker, with production defaults."""

    poll_seconds: float = 1.0
    batch: int = 20
    lease_seconds: float = 120.0
    backoff_first_seconds: float = 30.0
    backoff_max_seconds: float = 1800.0
    max_age_seconds: float = 24 * 3600.0


class AlertWorker:
    def __init__(
        self,
        db: Database,
        transport: Transport,
        access: ThreadAccess,
        *,
        secret: str,
        public_url: str,
        link: LinkBuilder,
        sender: str,
        options: WorkerOptions | None = None,
        count: Callable[[str], None] = lambda outcome: None,
        derive: Callable[[], Awaitable[bool]] | None = None,
        reply_to: ReplyAddressBuilder | None = None,
    ) -> None:
        self.db = db
        self.transport = transport
        self.access = access
        self.secret = secret
        # This server's own address: its unsubscribe endpoint, and the Message-ID's domain.
        self.public_url = public_url
        self.link = link
        self.sender = sender
        self.options = options or WorkerOptions()
        self.count = count
        # Queues the alerts of new messages; True when it decided a full batch (more wait).
        self.derive = derive
        # Set when replies by email are on (AM_REPLY_DOMAIN).
        self.reply_to = reply_to

    async def run_forever(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except Exception:
                log.warning("The alert worker could not reach the database; retrying.")
                busy = False
            if busy:
                # A backlog is worked off batch after batch; with SQLite run inline and
                # the file mailer a batch may never yield, so yield between batches.
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(self.options.poll_seconds)

    async def run_once(self) -> bool:
        """Queues new alerts, then claims and handles one batch of due ones; returns whether
        a full batch was handled (more may be waiting)."""
        more_to_derive = await self.derive() if self.derive is not None else False
        claimed = await outbox.claim(
            self.db, limit=self.options.batch, lease_seconds=self.options.lease_seconds
        )
        for row in claimed:
            await self._handle(row)
        return more_to_derive or len(claimed) == self.options.batch

    async def _handle(self, row: EmailOutbox) -> None:
        try:
            alert, reason = await self._build(row)
        except Exception:
            log.exception("Alert %d could not be prepared; it will be retried.", row.id)
            await self._retry(row, "could not be prepared")
            return
        if alert is None:
            await outbox.finish(self.db, row.id, outbox.DROPPED, reason)
            self.count("dropped")
            return
        # The link lands on the oldest message the email is about (the page then scrolls to
        # the first one still unread when it opens).
        opens_at = alert.messages[0].message_id
        unsubscribe = unsubscribe_link(self.secret, self.public_url, row, alert.candidate_id)
        message = compose(
            alert,
            link=self.link(alert.candidate_id, alert.thread_id, opens_at),
            public_url=self.public_url,
            sender=self.sender,
            unsubscribe_link=unsubscribe,
            reply_to=self.reply_to(row.user_pk, alert.thread_id) if self.reply_to else None,
        )
        try:
            await self.transport.send(message)
        except PermanentError as error:
            log.warning("Alert %d was refused for good: %s", row.id, error)
            await outbox.finish(self.db, row.id, outbox.FAILED, str(error))
            self.count("failed")
            return
        except TransientError as error:
            log.info("Alert %d was not delivered yet: %s", row.id, error)
            await self._retry(row, str(error))
            return
        await outbox.finish(self.db, row.id, outbox.SENT)
        self.count("sent")
        log.info("Alert %d sent (%d messages).", row.id, len(alert.messages))

    async def _retry(self, row: EmailOutbox, note: str) -> None:
        age = (utcnow() - row.created_at).total_seconds()
        if age > self.options.max_age_seconds:
            await outbox.finish(
                self.db, row.id, outbox.FAILED, f"gave up after {row.attempts} tries: {note}"
            )
            self.count("failed")
            return
        delay = min(
            self.options.backoff_max_seconds,
            self.options.backoff_first_seconds * 2 ** max(0, row.attempts - 1),
        )
        delay *= 0.5 + random.random()
        if await outbox.retry_later(self.db, row, delay, note):
            self.count("retried")

    async def _build(self, row: EmailOutbox) -> tuple[Alert | None, str]:
        """The alert as things are now, or None and why there is nothing to send."""
        async with self.db.read() as session:
            user = await session.get(User, row.user_pk)
            thread = await session.get(Thread, row.thread_id)
            candidate = await session.get(Candidate, row.candidate_pk)
            if user is None or thread is None or candidate is None:
                return None, "gone"
            if not await self.access.sees_thread(session, user, candidate, thread):
                return None, "no access"
            if await is_muted(session, user.pk, candidate.pk):
                return None, "muted"
            lines = await self.access.unread_lines(session, user, thread, row.first_message_id)
        if not lines:
            return None, "read"
        return (
            Alert(
                alert_id=row.id,
                thread_id=thread.id,
                candidate_id=candidate.ext_id,
                candidate_name=candidate.name,
                recipient_name=user.name,
                recipient_email=user.email,
                private=self.access.is_private(thread),
                messages=lines,
                time_zone=user.time_zone,
            ),
            "",
        )
