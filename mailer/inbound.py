"""The receiver of replies to alerts: an SMTP or LMTP server (aiosmtpd) for the reply domain.

At `RCPT TO` an address is accepted only when its token is genuine, unexpired, and names a
user and a thread that exist (mailer.reply_address; the desk looks them up). Anything else
is refused there with 550 and a sentence saying why, which the sending mail server passes
on to the person in its bounce.

After `DATA`, each accepted address gets one outcome:
- sent by a machine (auto-reply, delivery report, our own mail): accepted and dropped,
  never answered, so that two robots never talk to each other;
- from another address than the one the reply address was made for, or failing the
  configured sender authentication: refused with 550, never posted;
- posted through the same action as every other send (the desk), with the email's
  Message-ID as the client id, so that a message delivered twice posts once;
- refused for now (rate limit, database away): 451, and the sending server tries again;
- not postable (no text of its own, too long, access lost, thread gone): one answer email
  to the person saying why, with a link to the conversation and their text quoted.

The domain is reached only through `ReplyDesk`, which whoever runs the receiver hands in
(server.inbound), as the alert worker reaches it through its `ThreadAccess`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.answer import compose_answer
from mailer.reply_address import ExpiredAddress, ReplyAddressError, ReplyAddresses, ReplyToken
from mailer.reply_checks import (
    FAIL,
    PASS,
    authentication_verdict,
    from_address,
    is_automatic,
    same_mailbox,
)
from mailer.reply_text import ReplyTextError, reply_text
from mailer.transport import PermanentError, TransientError, Transport

log = logging.getLogger("agency_messaging.inbound")

MAX_CLIENT_ID_CHARS = 128
# Messages parsed at once: each holds a few copies of a message of up to max_message_bytes.
PARSING_AT_ONCE = 2
_LOOKUP_FAILED = "451 4.3.0 The reply address cannot be checked now; try again later."


def _lookup_failed() -> str:
    log.warning("A reply address could not be looked up; the sender will retry.")
    return _LOOKUP_FAILED


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom a reply address was made for, and where it leads, as things are now."""

    user_pk: int
    name: str
    email: str
    thread_id: int
    candidate_id: str
    candidate_name: str
    link: str  # opens the thread
    # The host's ids of the user and their org: whom to post as.
    org_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Posted:
    message_id: int
    created: bool  # False: this email was posted before (a redelivery)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # a sentence for the person
    temporary: bool = False  # True: the same email may be posted later (451)


class ReplyDesk(Protocol):
    """What the receiver asks of the domain."""

    async def recipient(self, token: ReplyToken) -> Recipient | None:
        """The token's user and thread, or None when either is gone."""

    async def post(self, recipient: Recipient, body: str, client_id: str) -> Posted | Refused:
        """Posts `body` into the thread as the recipient, by the rules of every send."""


@dataclass(frozen=True, slots=True)
class InboundLimits:
    """Bounds of the receiver, with safe defaults."""

    max_message_bytes: int = 25 * 1024 * 1024
    max_sessions: int = 50
    idle_timeout_seconds: float = 300.0
    # Failure answers one person may get an hour: a guard against loops the
    # auto-reply checks miss.
    max_answers_per_hour: int = 10


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """Sender authentication: the `Authentication-Results` headers of our own mail server
    (`authserv_id`) are read; a failure is always refused, and with `require_pass` so is
    a reply they do not vouch for."""

    authserv_id: str = ""
    require_pass: bool = False


@dataclass
class _AnswerBudget:
    per_hour: int
    sent: dict[int, deque[float]] = field(default_factory=dict)

    def take(self, user_pk: int, now: float) -> bool:
        if len(self.sent) > 10_000:
            self._forget_before(now - 3600)
        stamps = self.sent.setdefault(user_pk, deque())
        while stamps and now - stamps[0] > 3600:
            stamps.popleft()
        if len(stamps) >= self.per_hour:
            return False
        stamps.append(now)
        return True

    def _forget_before(self, moment: float) -> None:
        for user_pk in [k for k, stamps in self.sent.items() if stamps[-1] < moment]:
            del self.sent[user_pk]


@dataclass(frozen=True, slots=True)
class _Read:
    """What the worker thread made of the raw message."""

    message: EmailMessage
    text: str | None
    problem: ReplyTextError | None


def _read(raw: bytes, max_chars: int) -> _Read:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    try:
        return _Read(message, reply_text(message, max_chars=max_chars), None)
    except ReplyTextError as problem:
        return _Read(message, None, problem)


def client_id_of(message: EmailMessage, text: str) -> str:
    """The email's Message-ID, which a redelivery repeats; a digest when it is missing or
    too long to be a client id."""
    try:
        raw = str(message.get("message-id", "") or "")
    except (ValueError, IndexError):
        raw = ""
    message_id = " ".join(raw.split())
    if 0 < len(message_id) <= MAX_CLIENT_ID_CHARS and message_id.isprintable():
        return message_id
    seed = message_id or f"{message.get('from', '')}\n{message.get('date', '')}\n{text}"
    return "email:" + hashlib.sha256(seed.encode(errors="replace")).hexdigest()


class ReplyReceiver:
    """The aiosmtpd handler: its `handle_RCPT` and `handle_DATA` hooks."""

    def __init__(
        self,
        addresses: ReplyAddresses,
        desk: ReplyDesk,
        transport: Transport,
        *,
        sender: str,
        own_addresses: tuple[str, ...],
        max_chars: int,
        public_url: str,
        lmtp: bool = False,
        policy: SenderPolicy | None = None,
        limits: InboundLimits | None = None,
        count: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.addresses = addresses
        self.desk = desk
        self.transport = transport
        self.sender = sender
        self.own_addresses = own_addresses
        self.max_chars = max_chars
        self.public_url = public_url
        self.lmtp = lmtp
        self.policy = policy or SenderPolicy()
        self.limits = limits or InboundLimits()
        self.count = count
        self._answers = _AnswerBudget(self.limits.max_answers_per_hour)
        self._parsing = asyncio.Semaphore(PARSING_AT_ONCE)

    # --- RCPT TO ------------------------------------------------------------------------

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        recipients: list[Recipient] = envelope.__dict__.setdefault("recipients", [])
        if recipients:
            # One recipient a transaction: its one answer, after DATA, is then that
            # recipient's, in SMTP as in LMTP. The sending server tries the others again
            # at once, in transactions of their own (RFC 5321, 4.5.3.1.10).
            return "452 4.5.3 One reply address a message; the others will be tried again."
        try:
            token = self.addresses.read(address)
        except ExpiredAddress as error:
            self.count("expired")
            try:
                found = await self.desk.recipient(error.token)
            except Exception:
                return _lookup_failed()
            where = f" Open the conversation: {found.link}" if found else ""
            return f"550 5.1.1 {error}{where}"
        except ReplyAddressError as error:
            self.count("forged")
            return f"550 5.1.1 {error}"
        try:
            found = await self.desk.recipient(token)
        except Exception:
            return _lookup_failed()
        if found is None:
            self.count("unknown")
            return "550 5.1.1 This conversation no longer exists."
        recipients.append(found)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_exception(self, error: Exception) -> str:
        """Whatever went wrong on our side is worth a retry, never a bounce."""
        log.error("The reply receiver failed on a command (%s).", type(error).__name__)
        return "451 4.3.0 Something went wrong on our side; try again later."

    # --- DATA ---------------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        (recipient,) = envelope.__dict__["recipients"]
        try:
            # Parsing a large message is CPU work: off the loop, which may also serve
            # sockets, and a couple at a time, each holding copies of the message.
            async with self._parsing:
                read = await asyncio.to_thread(_read, raw, self.max_chars)
        except Exception:
            log.warning("An email to a reply address could not be parsed.")
            self.count("unreadable")
            return "554 5.6.0 This email could not be read."
        try:
            return await self._deliver(read, str(envelope.mail_from or ""), recipient)
        except Exception:
            log.exception("A reply could not be handled; the sender will retry.")
            return "451 4.3.0 The reply could not be handled now; try again later."

    async def _deliver(self, read: _Read, mail_from: str, recipient: Recipient) -> str:
        message = read.message
        automatic = is_automatic(message, mail_from, self.own_addresses)
        if automatic is not None:
            self.count("automatic")
            log.info("Dropped an automatic email to a reply address (%s).", automatic)
            return "250 2.0.0 Automatic email: not posted and not answered."
        author = from_address(message)
        if author is None or not same_mailbox(author, recipient.email):
            self.count("wrong_sender")
            return (
                "550 5.7.1 This reply address belongs to another person; reply from the "
                "address the alert was sent to."
            )
        if self.policy.authserv_id:
            verdict = authentication_verdict(message, self.policy.authserv_id, author)
            if verdict == FAIL or (self.policy.require_pass and verdict != PASS):
                self.count("unauthenticated")
                return "550 5.7.1 The sender of this reply could not be verified (SPF/DKIM)."
        if read.text is None:
            assert read.problem is not None
            return await self._answer(
                recipient, message, str(read.problem), quoted=read.problem.text
            )
        client_id = client_id_of(message, read.text)
        outcome = await self.desk.post(recipient, read.text, client_id)
        if isinstance(outcome, Posted):
            self.count("posted" if outcome.created else "repeated")
            log.info(
                "Posted a reply by email as message %d%s.",
                outcome.message_id,
                "" if outcome.created else " (delivered before)",
            )
            return f"250 2.0.0 Posted as message {outcome.message_id}."
        if outcome.temporary:
            self.count("deferred")
            return f"451 4.7.1 {outcome.reason}"
        return await self._answer(recipient, message, outcome.reason, quoted=read.text)

    async def _answer(
        self, recipient: Recipient, original: EmailMessage, reason: str, quoted: str
    ) -> str:
        """Tells the person why their reply was not posted; the SMTP status to give."""
        if not self._answers.take(recipient.user_pk, time.monotonic()):
            self.count("capped")
            return f"550 5.7.1 Not posted: {reason}"
        answer = compose_answer(
            recipient_name=recipient.name,
            recipient_email=recipient.email,
            candidate_name=recipient.candidate_name,
            reason=reason,
            link=recipient.link,
            quoted=quoted,
            original=original,
            sender=self.sender,
            public_url=self.public_url,
        )
        try:
            await self.transport.send(answer)
        except TransientError:
            log.warning("The answer to a reply that was not posted could not be sent yet.")
            return "451 4.3.0 The reply could not be answered now; try again later."
        except PermanentError:
            log.warning("The answer to a reply that was not posted was refused.")
            self.count("refused")
            return f"550 5.7.1 Not posted: {reason}"
        self.count("answered")
        log.info("A reply was not posted; its sender was told why.")
        return "250 2.0.0 Not posted; the sender was told why by email."


# --- the listener -----------------------------------------------------------------------


class SessionCount:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


def _session_class(lmtp: bool, sessions: SessionCount) -> type[SMTP]:
    base: type[SMTP] = LMTP if lmtp else SMTP

    class BoundedSession(base):  # type: ignore[valid-type,misc]
        """Refuses a connection beyond the limit at once (421), before it can hold a
        message in memory."""

        counted = False

        def connection_made(self, transport: Any) -> None:
            if sessions.limit and sessions.open >= sessions.limit:
                transport.write(b"421 4.3.2 Too many connections; try again later.\r\n")
                transport.close()
                return
            sessions.open += 1
            self.counted = True
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if self.counted:
                self.counted = False
                sessions.open -= 1
                super().connection_lost(error)

    return BoundedSession


async def start_receiver(
    receiver: ReplyReceiver, host: str, port: int, *, hostname: str
) -> asyncio.Server:
    """Listens on host:port; close the returned server to stop."""
    # aiosmtpd logs each command line at INFO, reply addresses (tokens) included.
    mail_log = logging.getLogger("mail.log")
    mail_log.setLevel(max(logging.WARNING, mail_log.getEffectiveLevel()))
    sessions = SessionCount(receiver.limits.max_sessions)
    session_class = _session_class(receiver.lmtp, sessions)
    loop = asyncio.get_running_loop()

    def session() -> SMTP:
        smtp: SMTP = session_class(
            receiver,
            data_size_limit=receiver.limits.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident="Agency Messaging",
            timeout=receiver.limits.idle_timeout_seconds,
            loop=loop,
        )
        return smtp

    return await loop.create_server(session, host, port)
