"""Replies by email, end to end, through real SMTP and LMTP sessions (smtplib, raw sockets)
against the receiver running inside the app, on both databases where storage matters.

An alert carries a signed `Reply-To`; a reply to it lands in the thread, live for the
viewers, posted through the same action as any send. Refused at `RCPT TO` (550, with a
reason): forged, altered, expired and unknown addresses. Never posted: a reply from another
sender, an automatic email, a message over the size limit. Answered by one email saying
why: a reply with nothing of its own, or whose writer lost access. Posted once however
often it is delivered. The two-process setup (a separate `agency-messaging inbound` beside
`serve`, through Redis) is in tests/test_email_replies_cluster.py.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select, update
from starlette.applications import Starlette

from harness.services import free_port
from mailer import outbox
from mailer.reply_address import ReplyAddresses
from mailer.worker import WorkerOptions
from server.app import create_app
from server.edge.services import Services
from server.settings import Settings
from storage.models import EmailOutbox, User, utcnow
from tests.support.realtime import WsClient, serve
from tests.support.reply_fixtures import EXPECTED, load_reply
from tests.support.smtp import Received, SmtpServer
from tests.support.world import SECRET, Api, make_settings

ORG = "acme"
DOMAIN = "reply.testserver"
ANN = "ann@ag.example"
COORD = "coord@acme.example"
WORKER = WorkerOptions(poll_seconds=0.1, lease_seconds=2, backoff_first_seconds=0.2)


@dataclass(frozen=True)
class Session:
    """What the receiver answered in one SMTP session."""

    rcpt: list[tuple[int, str]]
    data: tuple[int, str] | None  # None: no recipient was accepted, so no DATA

    @property
    def data_code(self) -> int:
        assert self.data is not None, self.rcpt
        return self.data[0]


def smtp_session(port: int, mail_from: str, rcpts: list[str], raw: bytes) -> Session:
    raw = re.sub(rb"\r?\n", b"\r\n", raw)  # on the wire, lines end in CRLF
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("mx.sender.example")
        code, text = client.mail(mail_from)
        assert code == 250, (code, text)
        answers = [client.rcpt(r) for r in rcpts]
        rcpt = [(code, text.decode()) for code, text in answers]
        if not any(code == 250 for code, _ in rcpt):
            client.rset()
            return Session(rcpt, None)
        code, text = client.data(raw)
        return Session(rcpt, (code, text.decode()))


def reply(
    body: str,
    *,
    sender: str = ANN,
    to: str,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = f"Ann <{sender}>"
    message["To"] = to
    message["Subject"] = "Re: New message from Coord about C1"
    message["Message-ID"] = message_id or make_msgid(domain="ag.example")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes()


@dataclass
class Env:
    app: Starlette
    api: Api
    settings: Settings
    smtp: SmtpServer
    port: int
    addresses: ReplyAddresses

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def agency_thread(self, cand: str = "c1") -> int:
        thread = await self.api.open_thread(ORG, "ann", cand, {"private": False})
        return int(thread["id"])

    async def user_pk(self, user: str) -> int:
        async with self.services.db.read() as session:
            pk = await session.scalar(select(User.pk).where(User.ext_id == user))
        assert pk is not None
        return int(pk)

    async def address(self, user: str, thread: int, now: float | None = None) -> str:
        return self.addresses.address(await self.user_pk(user), thread, now=now)

    async def send_mail(self, raw: bytes, to: str | list[str], mail_from: str = ANN) -> Session:
        rcpts = [to] if isinstance(to, str) else to
        return await asyncio.to_thread(smtp_session, self.port, mail_from, rcpts, raw)

    async def history(self, thread: int, user: str = "coord") -> list[dict[str, Any]]:
        response = await self.api.get(ORG, user, f"/api/v1/threads/{thread}/messages")
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages

    async def bodies(self, thread: int) -> list[str]:
        return [m["body"] for m in await self.history(thread)]

    async def alert(self, thread: int, body: str = "Could you send the updated CV?") -> Received:
        """Coord writes; the alert to Ann is sent at once."""
        await self.api.send(ORG, "coord", thread, body)
        await self.services.alerts.run_all()
        async with self.services.db.write() as session:
            await session.execute(
                update(EmailOutbox)
                .where(EmailOutbox.status == outbox.PENDING)
                .values(due_at=utcnow())
            )
        await self.smtp.wait_for(1, to=ANN, timeout=15)
        # The worker has finished with it (marked it sent) before the test goes on: no
        # SMTP session of the worker's is still open when the app stops.
        deadline = time.monotonic() + 15
        while await self._alerts_in_flight():
            assert time.monotonic() < deadline, "the alert was never marked sent"
            await asyncio.sleep(0.05)
        (alert,) = self.smtp.to(ANN)
        return alert

    async def _alerts_in_flight(self) -> int:
        async with self.services.db.read() as session:
            rows = await session.scalars(
                select(EmailOutbox.id).where(
                    EmailOutbox.status.in_([outbox.PENDING, outbox.SENDING])
                )
            )
            return len(rows.all())


Launch = Callable[..., Awaitable[Env]]


@pytest.fixture
async def launch(db_url: str, tmp_path: Path) -> AsyncIterator[Launch]:
    async with AsyncExitStack() as stack:
        smtp = stack.enter_context(SmtpServer())

        async def start(**overrides: Any) -> Env:
            port = free_port()
            values: dict[str, Any] = {
                "smtp_url": smtp.url,
                "email_delay_seconds": 3600.0,
                "reply_domain": DOMAIN,
            }
            values.update(overrides)
            settings = make_settings(db_url, tmp_path, **values)
            app = create_app(
                settings,
                auto_migrate=False,
                worker_options=WORKER,
                inbound=("127.0.0.1", port) if settings.reply_domain else None,
            )
            await stack.enter_async_context(LifespanManager(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://testserver"
                )
            )
            api = Api(client)
            await provision(api)
            addresses = ReplyAddresses(SECRET, DOMAIN, settings.reply_ttl_days * 86400)
            return Env(app, api, settings, smtp, port, addresses)

        yield start


async def provision(api: Api) -> None:
    await api.org(ORG)
    await api.agency(ORG, "ag")
    for user in ("coord", "mem"):
        await api.member(ORG, user)
    await api.agency_user(ORG, "ann", "ag")
    await api.agency_user(ORG, "abe", "ag")
    for cand in ("c1", "c2"):
        await api.candidate(
            ORG, cand, coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
        )


@pytest.fixture
async def env(launch: Launch) -> Env:
    return await launch()


# --- the happy path -----------------------------------------------------------------------


async def test_a_reply_to_an_alert_lands_in_its_thread_live(env: Env) -> None:
    thread = await env.agency_thread()
    alert = await env.alert(thread)
    reply_to = str(alert.message["Reply-To"])
    address = reply_to[reply_to.index("<") + 1 : reply_to.index(">")]
    assert address.startswith("reply-") and address.endswith("@" + DOMAIN)
    assert len(address.split("@")[0]) <= 64
    assert "Reply to this email to answer in the conversation" in alert.text()

    async with serve(env.app, lifespan="off") as base:
        watcher = await WsClient.connect(base, env.api.token(ORG, "coord"))
        try:
            await watcher.request("subscribe", candidate="c1")
            raw = load_reply(
                "gmail", sender=f"Ann <{ANN}>", to=address, message_id="<g1@mail.example>"
            )
            session = await env.send_mail(raw, address)
            assert session.rcpt == [(250, "2.1.5 OK")]
            assert session.data_code == 250 and "Posted as message" in session.data[1]  # type: ignore[index]
            event = await watcher.next_event(type="message.created")
        finally:
            await watcher.close()
    message = event["message"]
    assert message["body"] == EXPECTED["gmail"]
    assert message["author"]["id"] == "ann"
    assert message["thread"] == thread
    assert message["client_id"] == "<g1@mail.example>"
    assert (await env.bodies(thread))[-1] == EXPECTED["gmail"]
    # Replying read what came before, as it does in the browser.
    unread = (await env.api.get(ORG, "ann", "/api/v1/unread")).json()
    assert unread == {"candidates": []}, unread


async def test_without_a_reply_domain_alerts_have_no_reply_address(launch: Launch) -> None:
    env = await launch(reply_domain="")
    thread = await env.agency_thread()
    alert = await env.alert(thread)
    assert alert.message["Reply-To"] is None
    assert "Reply on the candidate's profile:" in alert.text()


@pytest.mark.parametrize(
    "fixture",
    ["gmail", "outlook", "apple_mail", "html_only", "latin1", "iso2022jp", "with_attachment"],
)
async def test_replies_from_real_mail_clients_post_only_what_was_written(
    env: Env, fixture: str
) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = load_reply(fixture, sender=f"Ann Agent <{ANN}>", to=address, message_id=f"<{fixture}@x>")
    session = await env.send_mail(raw, address)
    assert session.data_code == 250, session
    assert await env.bodies(thread) == [EXPECTED[fixture]]


async def test_a_redelivered_reply_posts_once(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = reply("Tuesday works for us.", to=address, message_id="<once@ag.example>")
    first = await env.send_mail(raw, address)
    again = await env.send_mail(raw, address)
    assert first.data_code == 250 and again.data_code == 250
    assert "delivered before" not in first.data[1]  # type: ignore[index]
    assert await env.bodies(thread) == ["Tuesday works for us."]


async def test_a_ten_megabyte_reply_posts_its_text(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    message = EmailMessage()
    message["From"] = ANN
    message["To"] = address
    message["Subject"] = "Re: CV"
    message["Message-ID"] = "<big@ag.example>"
    message.set_content("Here is the CV you asked for.")
    message.add_attachment(
        bytes(range(256)) * (10 * 1024 * 1024 // 256),
        maintype="application",
        subtype="pdf",
        filename="cv.pdf",
    )
    raw = message.as_bytes()
    assert len(raw) > 10 * 1024 * 1024
    session = await env.send_mail(raw, address)
    assert session.data_code == 250, session
    assert await env.bodies(thread) == ["Here is the CV you asked for."]


async def test_a_message_over_the_size_limit_is_refused_and_not_posted(launch: Launch) -> None:
    env = await launch(reply_max_bytes=256 * 1024)
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = reply("Too big.\n" + ("x" * 70 + "\n") * 4096, to=address)
    session = await env.send_mail(raw, address)
    assert session.data_code == 552, session
    assert await env.bodies(thread) == []


# --- refused at RCPT TO -------------------------------------------------------------------


async def test_forged_altered_expired_and_unknown_addresses_are_refused_at_rcpt(env: Env) -> None:
    thread = await env.agency_thread()
    good = await env.address("ann", thread)
    local, _, domain = good.partition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    forger = ReplyAddresses("another secret that is long enough to be a key", DOMAIN, 86400)
    expired = await env.address("ann", thread, now=time.time() - 31 * 86400)
    unknown = env.addresses.address(await env.user_pk("ann"), thread + 1000)
    cases = {
        f"{flipped}@{domain}": "not valid",
        forger.address(await env.user_pk("ann"), thread): "not valid",
        f"reply-{'a' * 32}@{DOMAIN}": "not valid",
        "someone@" + DOMAIN: "no such reply address",
        good.replace(DOMAIN, "elsewhere.example"): f"@{DOMAIN} only",
        expired: "has expired",
        unknown: "no longer exists",
    }
    for address, reason in cases.items():
        raw = reply("Should never be posted.", to=address)
        session = await env.send_mail(raw, address)
        ((code, text),) = session.rcpt
        assert code == 550, (address, session)
        assert reason in text.lower() or reason in text, (address, text)
        assert session.data is None
    # An expired address still says where to answer.
    session = await env.send_mail(reply("x", to=expired), expired)
    assert f"thread={thread}" in session.rcpt[0][1]
    assert await env.bodies(thread) == []


async def test_an_address_is_read_whatever_the_case(env: Env) -> None:
    thread = await env.agency_thread()
    address = (await env.address("ann", thread)).upper()
    session = await env.send_mail(reply("Shouting, but fine.", to=address), address)
    assert session.data_code == 250, session
    assert await env.bodies(thread) == ["Shouting, but fine."]


# --- never posted -------------------------------------------------------------------------


async def test_a_reply_from_another_sender_is_refused_and_never_posted(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = reply("I am not Ann.", sender="mallory@evil.example", to=address)
    session = await env.send_mail(raw, address, mail_from="mallory@evil.example")
    assert session.data_code == 550, session
    assert "another person" in session.data[1]  # type: ignore[index]
    # The envelope alone does not make a sender: the From header must be the recipient's.
    raw = reply("Still not Ann.", sender="mallory@evil.example", to=address)
    assert (await env.send_mail(raw, address, mail_from=ANN)).data_code == 550
    assert await env.bodies(thread) == []
    assert env.smtp.messages() == []  # and nobody was emailed about it


@pytest.mark.parametrize(
    ("headers", "mail_from"),
    [
        ({"Auto-Submitted": "auto-replied"}, ANN),
        ({"Precedence": "bulk"}, ANN),
        ({"X-Autoreply": "yes"}, ANN),
        ({}, ""),  # a delivery report: null sender
    ],
)
async def test_automatic_emails_are_neither_posted_nor_answered(
    env: Env, headers: dict[str, str], mail_from: str
) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = reply("I am out of the office until Monday.", to=address, headers=headers)
    session = await env.send_mail(raw, address, mail_from=mail_from)
    assert session.data_code == 250 and "Automatic" in session.data[1], session  # type: ignore[index]
    assert await env.bodies(thread) == []
    assert env.smtp.messages() == []


async def test_an_outlook_auto_reply_is_not_posted(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = load_reply("auto_reply", sender=f"Ann <{ANN}>", to=address, message_id="<oof@x>")
    session = await env.send_mail(raw, address)
    assert session.data_code == 250, session
    assert await env.bodies(thread) == []
    assert env.smtp.messages() == []


async def test_mail_from_our_own_address_is_dropped(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("coord", thread)
    own = "alerts@testserver"
    raw = reply("An alert that came back.", sender=own, to=address)
    session = await env.send_mail(raw, address, mail_from=own)
    assert session.data_code == 250, session
    assert await env.bodies(thread) == []


# --- answered -----------------------------------------------------------------------------


async def test_a_reply_with_nothing_of_its_own_is_answered_once_with_why(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = load_reply("quoted_only", sender=f"Ann <{ANN}>", to=address, message_id="<q@x>")
    session = await env.send_mail(raw, address)
    assert session.data_code == 250 and "told why" in session.data[1], session  # type: ignore[index]
    await env.smtp.wait_for(1, to=ANN)
    (answer,) = env.smtp.to(ANN)
    text = answer.text()
    assert answer.message["Subject"] == "Your reply about C1 was not posted"
    assert answer.message["Auto-Submitted"] == "auto-replied"
    assert answer.message["In-Reply-To"] == "<q@x>"
    assert "no text of its own" in text
    assert f"/candidates/c1?thread={thread}" in text
    assert await env.bodies(thread) == []


async def test_a_reply_by_someone_who_lost_access_is_answered_and_not_posted(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    await env.api.candidate(
        ORG, "c1", coordinator="coord", members=["coord", "mem"], agency_users=[]
    )
    raw = reply("Any news about the interview?", to=address, message_id="<lost@ag.example>")
    session = await env.send_mail(raw, address)
    assert session.data_code == 250, session
    await env.smtp.wait_for(1, to=ANN)
    (answer,) = env.smtp.to(ANN)
    text = answer.text()
    assert "was not posted" in text
    assert "> Any news about the interview?" in text  # nothing the person wrote is lost
    assert await env.bodies(thread) == []


async def test_a_reply_over_the_rate_limit_is_deferred_not_lost(launch: Launch) -> None:
    env = await launch(send_rate_per_minute=2)  # a burst of one
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    first = await env.send_mail(reply("First.", to=address, message_id="<r1@x>"), address)
    second = await env.send_mail(reply("Second.", to=address, message_id="<r2@x>"), address)
    assert first.data_code == 250
    assert second.data_code == 451, second  # the sending server tries again later
    assert "Too many messages" in second.data[1]  # type: ignore[index]
    assert await env.bodies(thread) == ["First."]
    assert env.smtp.messages() == []


# --- sender authentication ----------------------------------------------------------------


async def test_required_authentication_trusts_only_our_own_mail_server(launch: Launch) -> None:
    env = await launch(reply_authserv_id="mx.acme.example", reply_require_auth=True)
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    cases = [
        ({}, 550),
        ({"Authentication-Results": "mx.evil.example; dkim=pass header.d=ag.example"}, 550),
        ({"Authentication-Results": "mx.acme.example; dkim=pass header.d=other.example"}, 550),
        ({"Authentication-Results": "mx.acme.example; spf=fail smtp.mailfrom=ag.example"}, 550),
        ({"Authentication-Results": "mx.acme.example; dkim=pass header.d=ag.example"}, 250),
    ]
    for i, (headers, code) in enumerate(cases):
        raw = reply(f"Attempt {i}.", to=address, headers=headers, message_id=f"<a{i}@x>")
        session = await env.send_mail(raw, address)
        assert session.data_code == code, (headers, session)
    assert await env.bodies(thread) == ["Attempt 4."]


# --- LMTP ---------------------------------------------------------------------------------


async def lmtp_session(
    port: int, mail_from: str, rcpts: list[str], raw: bytes
) -> tuple[list[str], list[str]]:
    """A raw LMTP session: the answers to each RCPT, and those after DATA, one per accepted
    recipient."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply_line() -> str:
        lines = []
        while True:
            line = (await reader.readline()).decode()
            lines.append(line.strip())
            if line[3:4] != "-":
                return lines[-1]

    async def command(text: str) -> str:
        writer.write(text.encode() + b"\r\n")
        await writer.drain()
        return await reply_line()

    try:
        assert (await reply_line()).startswith("220")
        assert (await command("LHLO mx.acme.example")).startswith("250")
        assert (await command(f"MAIL FROM:<{mail_from}>")).startswith("250")
        rcpt_answers = [await command(f"RCPT TO:<{r}>") for r in rcpts]
        accepted = [a for a in rcpt_answers if a.startswith("250")]
        assert (await command("DATA")).startswith("354")
        body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        await writer.drain()
        answers = [await reply_line() for _ in accepted]
        await command("QUIT")
        return rcpt_answers, answers
    finally:
        writer.close()


async def test_lmtp_takes_one_reply_address_a_message_and_answers_for_it(env: Env) -> None:
    from server import inbound

    services = env.services
    receiver = inbound.receiver(
        env.settings, services.db, services.messaging, services.send_limiter, lmtp=True
    )
    port = free_port()
    server = await inbound.listen(env.settings, receiver, "127.0.0.1", port)
    try:
        thread = await env.agency_thread()
        for_ann = await env.address("ann", thread)
        for_coord = await env.address("coord", thread)
        raw = reply("Posted for Ann only.", to=for_ann, message_id="<lmtp@x>")
        rcpt, answers = await lmtp_session(port, ANN, [for_ann, for_coord], raw)
        # The second address waits for a transaction of its own, as the MTA retries it.
        assert [a[:3] for a in rcpt] == ["250", "452"], rcpt
        assert [a[:3] for a in answers] == ["250"], answers
        rcpt, answers = await lmtp_session(port, ANN, [for_coord], raw)
    finally:
        server.close()
        await server.wait_closed()
    assert [a[:3] for a in answers] == ["550"], answers  # Ann's email, Coord's address
    assert await env.bodies(thread) == ["Posted for Ann only."]


async def test_a_connection_beyond_the_session_limit_is_turned_away(env: Env) -> None:
    from mailer.inbound import InboundLimits
    from server import inbound

    services = env.services
    receiver = inbound.receiver(
        env.settings, services.db, services.messaging, services.send_limiter
    )
    receiver.limits = InboundLimits(max_sessions=1)
    port = free_port()
    server = await inbound.listen(env.settings, receiver, "127.0.0.1", port)
    try:
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        assert (await first_reader.readline()).startswith(b"220")
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert (await second_reader.readline()).startswith(b"421")
        first.close()
        second.close()
        await asyncio.sleep(0.1)
        third_reader, third = await asyncio.open_connection("127.0.0.1", port)
        assert (await third_reader.readline()).startswith(b"220")  # the slot came back
        third.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_member_replying_after_the_agency_user_was_unlinked_is_told_why(
    env: Env,
) -> None:
    thread = await env.agency_thread()
    await env.api.send(ORG, "ann", thread, "Here is the CV.")
    await env.api.candidate(
        ORG, "c1", coordinator="coord", members=["coord", "mem"], agency_users=[]
    )
    address = await env.address("coord", thread)
    raw = reply("Thanks!", sender=COORD, to=address, message_id="<unlinked@acme.example>")
    session = await env.send_mail(raw, address, mail_from=COORD)
    assert session.data_code == 250, session
    await env.smtp.wait_for(1, to=COORD)
    (answer,) = env.smtp.to(COORD)
    assert "no longer has access to the candidate" in answer.text()
    assert await env.bodies(thread) == ["Here is the CV."]


async def test_the_desk_refuses_what_the_socket_path_would(env: Env) -> None:
    """The desk's own refusals, asked directly: a person gone since the address was
    checked, and a text that no send could carry."""
    from mailer.inbound import Recipient, Refused
    from server.domain.email_replies import EmailReplies

    thread = await env.agency_thread()
    services = env.services
    desk = EmailReplies(services.db, services.messaging, services.send_limiter, env.settings.link)
    token = env.addresses.read(await env.address("ann", thread))
    recipient = await desk.recipient(token)
    assert recipient is not None and recipient.email == ANN
    assert recipient.link == f"http://testserver/candidates/c1?thread={thread}&message=0"
    gone = Recipient(
        10**9, "Nobody", "no@x.example", thread, "c1", "C1", recipient.link, ORG, "nobody"
    )
    assert await desk.post(gone, "Hello", "<gone@x>") == Refused(
        "You no longer have access to this conversation (or it was removed), so your reply "
        "could not be added to it."
    )
    refused = await desk.post(recipient, "nul \x00 inside", "<nul@x>")
    assert isinstance(refused, Refused) and not refused.temporary
    assert await env.bodies(thread) == []
    # Another company's thread is never found, whatever the token says.
    await env.api.org("other")
    await env.api.member("other", "olga")
    olga = await env.user_pk("olga")
    assert await desk.recipient(type(token)(olga, thread, token.expires_at)) is None


# --- when the answer itself cannot go, or too many would ---------------------------------


async def test_an_answer_the_relay_defers_defers_the_reply_and_one_refused_bounces_it(
    env: Env,
) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    raw = load_reply("quoted_only", sender=f"Ann <{ANN}>", to=address, message_id="<d@x>")
    env.smtp.fail_next(421)
    deferred = await env.send_mail(raw, address)
    assert deferred.data_code == 451, deferred  # the sending server will try again
    env.smtp.fail_next(550)
    refused = await env.send_mail(raw, address)
    assert refused.data_code == 550, refused  # its server then tells the person
    assert "no text of its own" in refused.data[1]  # type: ignore[index]
    assert env.smtp.messages() == []
    assert await env.bodies(thread) == []


async def test_at_most_so_many_answers_an_hour_go_to_one_person(env: Env) -> None:
    from mailer.inbound import InboundLimits

    receiver = env.services.extras["reply_receiver"]
    receiver.limits = InboundLimits(max_answers_per_hour=2)
    receiver._answers.per_hour = 2
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    codes = []
    for i in range(3):
        raw = load_reply("quoted_only", sender=f"Ann <{ANN}>", to=address, message_id=f"<b{i}@x>")
        codes.append((await env.send_mail(raw, address)).data_code)
    assert codes == [250, 250, 550]
    await env.smtp.wait_for(2, to=ANN)
    await asyncio.sleep(0.2)
    assert len(env.smtp.to(ANN)) == 2


async def test_one_email_to_two_threads_posts_in_each_once(env: Env) -> None:
    """Replying to two alerts at once: each address gets its own transaction (452 for the
    second in the first), and each thread its message, however often it is delivered."""
    first = await env.agency_thread("c1")
    second = await env.agency_thread("c2")
    to_first, to_second = await env.address("ann", first), await env.address("ann", second)
    raw = reply("One answer for both.", to=to_first, message_id="<both@ag.example>")
    session = await env.send_mail(raw, [to_first, to_second])
    assert [code for code, _ in session.rcpt] == [250, 452]
    assert session.data_code == 250
    for _ in range(2):  # the retry of the deferred address, then a redelivery of both
        assert (await env.send_mail(raw, to_second)).data_code == 250
        assert (await env.send_mail(raw, to_first)).data_code == 250
    assert await env.bodies(first) == ["One answer for both."]
    assert await env.bodies(second) == ["One answer for both."]
    (on_second,) = await env.history(second)
    assert on_second["client_id"].startswith(f"email:{second}:")


async def test_a_reply_too_long_to_post_is_given_back_whole(env: Env) -> None:
    thread = await env.agency_thread()
    address = await env.address("ann", thread)
    long_text = "\n".join(f"Line {i} of a very long answer." for i in range(300))
    session = await env.send_mail(reply(long_text, to=address, message_id="<long@x>"), address)
    assert session.data_code == 250, session
    await env.smtp.wait_for(1, to=ANN)
    (answer,) = env.smtp.to(ANN)
    text = answer.text()
    assert "the limit is 5,000" in text
    assert "> Line 0 of a very long answer." in text and "> Line 299 of a very long answer." in text
    assert await env.bodies(thread) == []


class BrokenDesk:
    """A desk whose database is away."""

    def __init__(self, fail_lookup: bool) -> None:
        self.fail_lookup = fail_lookup

    async def recipient(self, token: Any) -> Any:
        from mailer.inbound import Recipient

        if self.fail_lookup:
            raise OSError("database away")
        return Recipient(
            token.user_pk, "Ann", ANN, token.thread_id, "c1", "C1", "http://x/", ORG, "ann"
        )

    async def post(self, recipient: Any, body: str, client_id: str) -> Any:
        raise OSError("database away")


@pytest.mark.parametrize("fail_lookup", [True, False])
async def test_a_database_outage_defers_never_bounces(env: Env, fail_lookup: bool) -> None:
    from mailer.inbound import ReplyReceiver, start_receiver

    receiver = ReplyReceiver(
        env.addresses,
        BrokenDesk(fail_lookup),
        env.services.extras["reply_receiver"].transport,
        sender=env.settings.sender,
        own_addresses=(),
        max_chars=5000,
        public_url=env.settings.public_url,
    )
    port = free_port()
    server = await start_receiver(receiver, "127.0.0.1", port, hostname=DOMAIN)
    try:
        thread = await env.agency_thread()
        fresh = await env.address("ann", thread)
        expired = await env.address("ann", thread, now=time.time() - 40 * 86400)
        for address in (fresh, expired):
            raw = reply("Hello?", to=address)
            session = await asyncio.to_thread(smtp_session, port, ANN, [address], raw)
            if fail_lookup:
                assert session.rcpt[0][0] == 451, session
            elif address == fresh:
                assert session.data_code == 451, session
    finally:
        server.close()
        await server.wait_closed()
    assert await receiver.handle_exception(RuntimeError("boom")) == (
        "451 4.3.0 Something went wrong on our side; try again later."
    )
