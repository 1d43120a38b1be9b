"""Replies by email, wired: the receiver (mailer.inbound) posting through the domain.

`agency-messaging inbound` runs it in a process of its own, which publishes what it posts
through the broker, so that viewers on every `serve` process get a reply live (with several
processes, that is Redis). `serve --inbound-port P` runs it inside the server instead, as the
demo does: one process, the in-process broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from channels.backends import create_broker
from channels.protocol import MAX_BODY_CHARS
from mailer.inbound import InboundLimits, ReplyReceiver, SenderPolicy, start_receiver
from mailer.reply_address import ReplyAddresses
from mailer.reply_checks import address_of
from mailer.transport import Transport, create_transport
from server.domain.actions import Messaging
from server.domain.email_replies import EmailReplies
from server.domain.fanout import BrokerSink
from server.domain.ratelimit import SendRateLimiter
from server.settings import ConfigError, Settings
from storage import migrate
from storage.database import Database

log = logging.getLogger("agency_messaging.inbound.process")


def reply_addresses(settings: Settings) -> ReplyAddresses | None:
    """The reply addresses of alerts, or None when replies by email are off."""
    if not settings.reply_domain:
        return None
    return ReplyAddresses(settings.secret, settings.reply_domain, settings.reply_ttl_days * 86400)


def receiver(
    settings: Settings,
    db: Database,
    messaging: Messaging,
    limiter: SendRateLimiter,
    *,
    lmtp: bool = False,
    transport: Transport | None = None,
    count: Callable[[str], None] = lambda outcome: None,
) -> ReplyReceiver:
    addresses = reply_addresses(settings)
    if addresses is None:
        raise ConfigError("AM_REPLY_DOMAIN must be set to receive replies by email.")
    if not settings.reply_authserv_id and not settings.demo:
        log.warning(
            "Replies by email are checked by their From address only, which a sender can "
            "forge: set AM_REPLY_AUTHSERV_ID so that your mail server's SPF/DKIM/DMARC "
            "verdicts are checked too."
        )
    return ReplyReceiver(
        addresses,
        EmailReplies(db, messaging, limiter, settings.link),
        transport
        or create_transport(settings.smtp_url, settings.mail_dir, settings.smtp_timeout_seconds),
        sender=settings.sender,
        own_addresses=(address_of(settings.sender),),
        max_chars=MAX_BODY_CHARS,
        public_url=settings.public_url,
        lmtp=lmtp,
        policy=SenderPolicy(settings.reply_authserv_id, settings.reply_require_auth),
        limits=InboundLimits(max_message_bytes=settings.reply_max_bytes),
        count=count,
    )


async def listen(
    settings: Settings, reply_receiver: ReplyReceiver, host: str, port: int
) -> asyncio.Server:
    server = await start_receiver(reply_receiver, host, port, hostname=settings.reply_domain)
    kind = "LMTP" if reply_receiver.lmtp else "SMTP"
    log.info("Receiving replies for @%s over %s on %s:%d.", settings.reply_domain, kind, host, port)
    return server


async def run_inbound(settings: Settings, host: str, port: int, *, lmtp: bool = False) -> None:
    """The `agency-messaging inbound` command: until SIGTERM or SIGINT."""
    if settings.broker_url.startswith("memory://"):
        log.warning(
            "AM_BROKER_URL is memory://: replies are stored, but pages open on a `serve` "
            "process see them only when they reload. Use redis:// to share a broker, or "
            "run the receiver inside the server with `serve --inbound-port`."
        )
    db = Database(settings.database_url)
    broker = create_broker(settings.broker_url)
    try:
        if settings.database_is_default:
            await migrate.upgrade(db)
        else:
            await migrate.check_up_to_date(db)
        messaging = Messaging(db, BrokerSink(broker))
        limiter = SendRateLimiter(settings.send_rate_per_minute)
        server = await listen(
            settings, receiver(settings, db, messaging, limiter, lmtp=lmtp), host, port
        )
        kind = "LMTP" if lmtp else "SMTP"
        print(
            f"Receiving replies for @{settings.reply_domain} over {kind} on {host}:{port}.",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()
            server.close()
            # Sessions in the middle of a message get a moment to finish.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 10)
    finally:
        await broker.close()
        await db.close()
