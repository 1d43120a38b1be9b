"""Email alerts, end to end: the app in process, a real SMTP server (aiosmtpd), both databases.

Who gets an alert (the involved users of a thread other than the author who have not read
it, online or not, not muted, still able to see it), batching a burst into one email, what
the email says (links that open the message, times in the recipient's zone, agencies
named), cancellation (read, muted, lost access), the unsubscribe link, header safety, and
delivery through SMTP
failures (421 retried, 550 given up, a stalled relay timed out and retried, a worker that
died holding a claim). Also the `.eml` file transport and `agency-messaging send-test-email`.

The org (`populate_world` in tests/support/world.py): coordinator `coord`, member `mem` with
access, member `out` without, agency `ag` with `ann` (linked to c1 and c2) and `abe` (not
linked). Candidates c1 and c2 share that team.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import html
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select, update
from starlette.applications import Starlette

from harness.services import VENV_BIN
from mailer import outbox
from mailer.transport import SmtpTransport
from mailer.worker import WorkerOptions
from server.app import alert_worker, create_app
from server.edge.services import Services
from server.settings import Settings
from storage.models import EmailOutbox, User, utcnow
from tests.support.realtime import WsClient, serve
from tests.support.smtp import Received, SmtpServer
from tests.support.world import SECRET, SERVICE_TOKEN, Api, make_settings

ORG = "acme"
ANN = "ann@ag.example"
ABE = "abe@ag.example"
COORD = "coord@acme.example"
MEM = "mem@acme.example"
OUT = "out@acme.example"
EVIL = "evil@example.com"
INJECTION = "\r\nBcc: evil@example.com"

WORKER = WorkerOptions(
    poll_seconds=0.1,
    lease_seconds=2,
    backoff_first_seconds=0.2,
    backoff_max_seconds=1,
    max_age_seconds=30,
)
# Alerts wait an hour unless `Env.settle` makes them due: what a test does "before the delay
# runs out" then always happens before it, however slow the machine. (The delay running out
# by itself is covered by tests/test_email_cluster.py, with real processes.)
DELAY = 3600.0
BURST_DELAY = DELAY
# The headers every alert carries, and nothing else (an injected header would show here).
ALERT_HEADERS = {
    "subject",
    "from",
    "to",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "auto-submitted",
    "content-type",
    "mime-version",
}


# --- the app ------------------------------------------------------------------------------


@dataclass
class Env:
    app: Starlette
    api: Api
    settings: Settings
    smtp: SmtpServer

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def rows(self) -> list[tuple[str, EmailOutbox]]:
        """Every outbox row with its recipient's user id, oldest first (the alerts of every
        message sent so far decided first, as the worker's next round would)."""
        await self.services.alerts.run_all()
        async with self.services.db.read() as session:
            result = await session.execute(
                select(User.ext_id, EmailOutbox)
                .join(User, User.pk == EmailOutbox.user_pk)
                .order_by(EmailOutbox.id)
            )
            return [(user, row) for user, row in result.all()]

    async def rows_for(self, user: str) -> list[EmailOutbox]:
        return [row for who, row in await self.rows() if who == user]

    async def release(self) -> None:
        """The delay runs out now for every pending alert."""
        await self.services.alerts.run_all()
        async with self.services.db.write() as session:
            await session.execute(
                update(EmailOutbox)
                .where(EmailOutbox.status == outbox.PENDING, EmailOutbox.due_at > utcnow())
                .values(due_at=utcnow())
            )

    async def settle(self, timeout: float = 15.0) -> None:
        """Lets the delay run out, then waits until no alert is pending or being sent:
        every decision has been made."""
        await self.release()
        deadline = time.monotonic() + timeout
        while True:
            open_rows = [
                (who, row.status)
                for who, row in await self.rows()
                if row.status in (outbox.PENDING, outbox.SENDING)
            ]
            if not open_rows:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"alerts still open after {timeout}s: {open_rows}")
            await asyncio.sleep(0.05)

    async def metric(self, outcome: str) -> float:
        response = await self.api.client.get("/metrics")
        assert response.status_code == 200
        pattern = rf'^am_emails_total\{{outcome="{outcome}"\}} (\S+)$'
        found = re.search(pattern, response.text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    async def send(self, user: str, thread: int, body: str) -> dict[str, Any]:
        """Posts, then has the message's alerts decided at once (as the worker's next round
        would), so that what a test does next happens after that decision."""
        sent = await self.api.send(ORG, user, thread, body)
        await self.services.alerts.run_all()
        return sent

    async def agency_thread(self, cand: str = "c1", agent: str = "ann") -> int:
        thread = await self.api.open_thread(ORG, agent, cand, {"private": False})
        return int(thread["id"])

    async def read(self, user: str, thread: int, message_id: int) -> None:
        response = await self.api.post(
            ORG, user, f"/api/v1/threads/{thread}/read", {"message_id": message_id}
        )
        assert response.status_code == 200, response.text

    async def put_notifications(self, user: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.api.client.put(
            "/api/v1/me/notifications", json=body, headers=self.api.as_user(ORG, user)
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get_notifications(self, user: str) -> dict[str, Any]:
        response = await self.api.get(ORG, user, "/api/v1/me/notifications")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def candidate(
        self, cand: str, *, members: list[str], agency_users: list[str], coordinator: str = "coord"
    ) -> None:
        await self.api.candidate(
            ORG, cand, coordinator=coordinator, members=members, agency_users=agency_users
        )


async def provision(api: Api) -> None:
    await api.org(ORG)
    await api.agency(ORG, "ag")
    for user in ("coord", "mem", "out"):
        await api.member(ORG, user)
    await api.agency_user(ORG, "ann", "ag")
    await api.agency_user(ORG, "abe", "ag")
    for cand in ("c1", "c2"):
        await api.candidate(
            ORG, cand, coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
        )


Launch = Callable[..., Awaitable[Env]]


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def launch(db_url: str, tmp_path: Path, smtp: SmtpServer) -> AsyncIterator[Launch]:
    """Starts the app (lifespan running) with the alert settings of these tests; keyword
    arguments override settings. Everything is stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Env:
            values: dict[str, Any] = {"smtp_url": smtp.url, "email_delay_seconds": DELAY}
            values.update(overrides)
            settings = make_settings(db_url, tmp_path, **values)
            app = create_app(settings, auto_migrate=False, worker_options=WORKER)
            await stack.enter_async_context(LifespanManager(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://testserver"
                )
            )
            api = Api(client)
            await provision(api)
            return Env(app, api, settings, smtp)

        yield start


@pytest.fixture
async def env(launch: Launch) -> Env:
    return await launch()


def text_of(received: Received) -> str:
    return received.text()


def positions(text: str, needles: list[str]) -> list[int]:
    found = [text.find(n) for n in needles]
    assert all(p >= 0 for p in found), (needles, text)
    return found


def unsubscribe_url(received: Received) -> str:
    header = str(received.message["List-Unsubscribe"])
    assert header.startswith("<") and header.endswith(">"), header
    return header[1:-1]


# --- batching and the email itself -----------------------------------------------------


async def test_a_burst_is_one_email_with_every_message(launch: Launch) -> None:
    env = await launch(email_delay_seconds=BURST_DELAY)
    thread = await env.agency_thread()
    bodies = [f"burst message {i}" for i in range(1, 6)]
    sent = [await env.send("coord", thread, body) for body in bodies]
    await env.release()
    await env.smtp.wait_for(1, to=ANN, timeout=10)
    await env.settle()

    assert len(env.smtp.messages()) == 1, [r.rcpt_tos for r in env.smtp.messages()]
    (alert,) = env.smtp.to(ANN)
    assert env.smtp.to(COORD) == []  # never about one's own messages
    message = alert.message
    assert alert.rcpt_tos == (ANN,)
    assert message["Subject"] == "New messages from Coord about C1"
    assert "Ann" in str(message["To"]) and ANN in str(message["To"])
    text = text_of(alert)
    order = positions(text, bodies)
    assert order == sorted(order), "messages must be quoted oldest first"
    assert "5 unread messages" in text
    # The link opens the thread at the first message the email is about.
    opening = f"http://testserver/candidates/c1?thread={thread}&message={sent[0]['id']}"
    assert f"Reply on the candidate's profile: {opening}" in text.splitlines()
    assert f'<a href="{html.escape(opening)}">' in alert.html()
    assert "more message" not in text
    assert "burst message 5" in alert.html()

    rows = await env.rows_for("ann")
    assert [row.status for row in rows] == [outbox.SENT]
    assert rows[0].first_message_id == sent[0]["id"]
    domain = "testserver"
    assert message["Message-ID"] == f"<alert-{rows[0].id}@{domain}>"
    assert message["References"] == f"<thread-{thread}@{domain}>"
    assert message["In-Reply-To"] == message["References"]
    link = unsubscribe_url(alert)
    assert link.startswith("http://testserver/unsubscribe?token=")
    assert link in text
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    assert {p.get_content_type() for p in message.iter_parts()} == {"text/plain", "text/html"}
    assert {k.lower() for k in message.keys()} <= ALERT_HEADERS  # noqa: SIM118


async def test_twelve_messages_show_the_newest_ten_and_a_count(launch: Launch) -> None:
    env = await launch(email_delay_seconds=BURST_DELAY)
    thread = await env.agency_thread()
    bodies = [f"note {i:02d}" for i in range(1, 13)]
    sent = [await env.send("coord", thread, body) for body in bodies]
    await env.release()
    await env.smtp.wait_for(1, to=ANN, timeout=10)
    await env.settle()
    (alert,) = env.smtp.messages()
    text = text_of(alert)
    assert "note 01" not in text and "note 02" not in text
    order = positions(text, bodies[2:])
    assert order == sorted(order)
    assert "and 2 more" in text
    assert "12 unread messages" in text
    # The link lands on the oldest unread message, even when it is not quoted.
    opening = f"http://testserver/candidates/c1?thread={thread}&message={sent[0]['id']}"
    assert f"Reply on the candidate's profile: {opening}" in text.splitlines()
    html = alert.html()
    assert "note 01" not in html and "note 12" in html and "and 2 more" in html


# --- links, times and names ------------------------------------------------------------

ATS_LINKS = "https://ats.example.com/candidates/{candidate}?thread={thread}&message={message}"


async def test_links_follow_the_link_template_to_the_first_unread_message(
    launch: Launch,
) -> None:
    env = await launch(link_template=ATS_LINKS)
    thread = await env.agency_thread()
    older = await env.send("coord", thread, "older one")
    newer = await env.send("coord", thread, "newer one")
    await env.send("coord", thread, "newest one")
    await env.read("ann", thread, older["id"])
    await env.settle()
    (alert,) = env.smtp.to(ANN)
    opening = f"https://ats.example.com/candidates/c1?thread={thread}&message={newer['id']}"
    assert f"Reply on the candidate's profile: {opening}" in alert.text().splitlines()
    assert f'<a href="{html.escape(opening)}">' in alert.html()
    assert "testserver/candidates" not in alert.text() + alert.html()
    # Unsubscribing is this server's own endpoint, wherever the other links point.
    assert unsubscribe_url(alert).startswith("http://testserver/unsubscribe?token=")


def shown_at(created_at: str, zone: str) -> str:
    """How an email should show a message's time (from the API's ISO time) in `zone`."""
    local = datetime.fromisoformat(created_at).astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


async def test_times_are_shown_in_the_recipients_time_zone(env: Env) -> None:
    await env.api.provision(
        f"{ORG}/users/ann",
        {
            "name": "Ann",
            "email": ANN,
            "kind": "agency",
            "agency": "ag",
            "time_zone": "Europe/Paris",
        },
    )
    async with env.services.db.write() as session:  # a zone this system does not know
        await session.execute(
            update(User).where(User.ext_id == "coord").values(time_zone="Mars/Olympus_Mons")
        )
    thread = await env.agency_thread()
    sent = await env.send("mem", thread, "what time is it?")
    await env.settle()

    (to_ann,) = env.smtp.to(ANN)
    paris = shown_at(sent["created_at"], "Europe/Paris")
    utc = shown_at(sent["created_at"], "UTC")
    assert paris.split()[-1] in ("CET", "CEST") and paris[:16] != utc[:16]
    assert f"Mem wrote at {paris} (Europe/Paris):" in to_ann.text()
    assert f"{paris} (Europe/Paris)" in to_ann.html()
    assert utc[:16] not in to_ann.text() + to_ann.html()
    (to_coord,) = env.smtp.to(COORD)
    assert f"Mem wrote at {utc}:" in to_coord.text(), "an unknown zone falls back to UTC"
    assert utc in to_coord.html()


async def test_agency_users_are_named_with_their_agency(env: Env) -> None:
    thread = await env.agency_thread()
    await env.send("ann", thread, "from the agency")
    await env.settle()
    (to_coord,) = env.smtp.to(COORD)
    assert to_coord.message["Subject"] == "New message from Ann · Ag about C1"
    assert "\nAnn · Ag wrote at " in to_coord.text()
    assert "<strong>Ann · Ag</strong>" in to_coord.html()

    await env.send("mem", thread, "from the team")  # members: by name alone
    await env.send("ann", thread, "and the agency again")
    await env.settle()
    (to_mem,) = env.smtp.to(MEM)
    assert "Ann · Ag wrote at " in to_mem.text()
    to_ann = env.smtp.to(ANN)[-1]
    assert to_ann.message["Subject"] == "New message from Mem about C1"
    assert "\nMem wrote at " in to_ann.text() and "<strong>Mem</strong>" in to_ann.html()
    # Two authors in one email: counted in the subject, each named with the agency in text.
    assert env.smtp.to(COORD)[-1].message["Subject"] == "2 new messages about C1"
    assert [
        line.split(" wrote at")[0]
        for line in env.smtp.to(COORD)[-1].text().splitlines()
        if " wrote at " in line
    ] == ["Mem", "Ann · Ag"]


# --- who is involved --------------------------------------------------------------------


async def test_involvement_in_an_agency_thread(env: Env) -> None:
    thread = await env.agency_thread()
    await env.send("ann", thread, "hello team")
    await env.settle()
    assert len(env.smtp.to(COORD)) == 1, "the coordinator is involved"
    assert env.smtp.to(MEM) == [], "a member who never posted and is not the coordinator is not"
    assert env.smtp.to(ANN) == [] and env.smtp.to(OUT) == []
    assert "hello team" in text_of(env.smtp.to(COORD)[0])
    assert await env.rows_for("mem") == []

    await env.send("mem", thread, "mem here")
    await env.settle()
    assert len(env.smtp.to(ANN)) == 1
    assert len(env.smtp.to(COORD)) == 2
    assert env.smtp.to(MEM) == []
    assert env.smtp.to(COORD)[1].message["Subject"] == "New message from Mem about C1"

    await env.send("ann", thread, "thanks both")
    await env.settle()
    to_mem = env.smtp.to(MEM)
    assert len(to_mem) == 1, "once a member posted, later messages involve them"
    assert "thanks both" in text_of(to_mem[0])
    assert "hello team" not in text_of(to_mem[0])  # from the message that started this alert
    assert len(env.smtp.to(COORD)) == 3
    assert len(env.smtp.to(ANN)) == 1
    assert env.smtp.to(ABE) == [] and env.smtp.to(OUT) == []

    ids = env.smtp.message_ids()
    assert len(ids) == len(set(ids)), "each email has its own Message-ID"
    assert {str(r.message["References"]) for r in env.smtp.messages()} == {
        f"<thread-{thread}@testserver>"
    }


async def test_private_threads_alert_only_the_other_person(env: Env) -> None:
    with_coord = await env.api.open_thread(ORG, "ann", "c1", {"private": True, "member": "coord"})
    await env.send("ann", with_coord["id"], "just between us")
    await env.settle()
    assert [r.rcpt_tos for r in env.smtp.messages()] == [(COORD,)]
    assert "a private conversation" in text_of(env.smtp.to(COORD)[0])

    await env.send("coord", with_coord["id"], "sure")
    await env.settle()
    assert [r.rcpt_tos for r in env.smtp.messages()] == [(COORD,), (ANN,)]

    with_mem = await env.api.open_thread(ORG, "mem", "c1", {"private": True, "agency_user": "ann"})
    await env.send("mem", with_mem["id"], "a word from mem")
    await env.settle()
    assert [r.rcpt_tos for r in env.smtp.messages()] == [(COORD,), (ANN,), (ANN,)]
    assert "a word from mem" in text_of(env.smtp.messages()[-1])
    assert env.smtp.to(MEM) == []


# --- nothing to say ---------------------------------------------------------------------


async def test_reading_before_the_delay_cancels_the_alert(env: Env) -> None:
    thread = await env.agency_thread()
    first = await env.send("coord", thread, "read me")
    last = await env.send("coord", thread, "me too")
    await env.read("ann", thread, last["id"])
    await env.settle()
    assert env.smtp.messages() == []
    rows = await env.rows_for("ann")
    assert [(r.status, r.last_error) for r in rows] == [(outbox.DROPPED, "read")]
    assert rows[0].first_message_id == first["id"]

    # Reading only part of it: the email covers what is still unread.
    one = await env.send("coord", thread, "older one")
    await env.send("coord", thread, "newer one")
    await env.read("ann", thread, one["id"])
    await env.settle()
    (alert,) = env.smtp.to(ANN)
    assert "newer one" in text_of(alert) and "older one" not in text_of(alert)


async def test_an_open_socket_is_not_reading_whoever_has_not_read_gets_the_alert(
    env: Env,
) -> None:
    """The ATS left open in a forgotten tab: the reply is still emailed. Reading is what
    spares someone the email, online or not."""
    thread = await env.agency_thread()
    presence = env.services.realtime.presence
    async with serve(env.app, lifespan="off") as base_url:
        sockets = [
            await WsClient.connect(base_url, env.api.token(ORG, user)) for user in ("ann", "coord")
        ]
        try:
            for socket in sockets:
                assert (await socket.request("ping"))["type"] == "pong"  # registered by now
            sent = await env.send("mem", thread, "anyone there?")
            await env.read("coord", thread, sent["id"])
            await env.settle()

            ann, coord = (await env.rows_for("ann"))[0], (await env.rows_for("coord"))[0]
            online = {(await org_pk(env), row.user_pk) for row in (ann, coord)}
            assert await presence.online(sorted(online)) == online, "both online all along"
            (alert,) = env.smtp.messages()
            assert alert.rcpt_tos == (ANN,), "online and unread: emailed"
            assert "anyone there?" in text_of(alert)
            assert (ann.status, coord.status) == (outbox.SENT, outbox.DROPPED)
            assert coord.last_error == "read", "online and read: no email"
        finally:
            for socket in sockets:
                await socket.close()


async def org_pk(env: Env) -> int:
    async with env.services.db.read() as session:
        user = await session.scalar(select(User).where(User.ext_id == "ann"))
        assert user is not None
        return user.org_pk


async def test_muting_everything_or_one_candidate(env: Env) -> None:
    c1 = await env.agency_thread("c1")
    c2 = await env.agency_thread("c2")
    assert await env.get_notifications("ann") == {"muted": False, "muted_candidates": []}

    assert await env.put_notifications("ann", {"muted": True}) == {
        "muted": True,
        "muted_candidates": [],
    }
    await env.send("coord", c1, "muted everywhere")
    await env.send("coord", c2, "muted everywhere too")
    await env.settle()
    assert env.smtp.messages() == []

    state = await env.put_notifications("ann", {"muted": False, "muted_candidates": ["c1"]})
    assert state == {"muted": False, "muted_candidates": ["c1"]}
    await env.send("coord", c1, "c1 is muted")
    await env.send("coord", c2, "c2 is not")
    await env.settle()
    (alert,) = env.smtp.messages()
    assert alert.rcpt_tos == (ANN,) and "c2 is not" in text_of(alert)
    assert alert.message["Subject"] == "New message from Coord about C2"

    # Muted after the message was posted but before the delay ran out: dropped at send time.
    await env.send("coord", c2, "mute me in time")
    await env.put_notifications("ann", {"muted_candidates": ["c1", "c2"]})
    await env.settle()
    assert len(env.smtp.messages()) == 1
    assert (await env.rows_for("ann"))[-1].last_error == "muted"

    response = await env.api.client.put(
        "/api/v1/me/notifications",
        json={"muted_candidates": ["nope"]},
        headers=env.api.as_user(ORG, "ann"),
    )
    assert response.status_code == 422


async def test_the_unsubscribe_link_works_without_signing_in(env: Env) -> None:
    c1 = await env.agency_thread("c1")
    c2 = await env.agency_thread("c2")
    await env.send("coord", c1, "first")
    await env.settle()
    (alert,) = env.smtp.to(ANN)
    link = unsubscribe_url(alert)
    parts = urlsplit(link)
    token = parse_qs(parts.query)["token"][0]

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=env.app), base_url="http://testserver"
    ) as anonymous:
        page = await anonymous.get(f"{parts.path}?{parts.query}")
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["content-type"]
        assert '<form method="post" action="/unsubscribe">' in page.text
        assert f'value="{token}"' in page.text
        assert "C1" in page.text
        # GET changes nothing (mail scanners follow links).
        assert await env.get_notifications("ann") == {"muted": False, "muted_candidates": []}

        done = await anonymous.post("/unsubscribe", data={"token": token, "scope": "candidate"})
        assert done.status_code == 200, done.text
        assert "no more alert emails about this candidate" in done.text
    assert await env.get_notifications("ann") == {"muted": False, "muted_candidates": ["c1"]}

    await env.send("coord", c1, "muted now")
    await env.send("coord", c2, "still on")
    await env.settle()
    assert [text_of(r).count("still on") for r in env.smtp.to(ANN)[1:]] == [1]
    assert len(env.smtp.to(ANN)) == 2


async def test_one_click_unsubscribe_and_tampered_tokens(env: Env) -> None:
    c1 = await env.agency_thread("c1")
    await env.send("coord", c1, "first")
    await env.settle()
    link = unsubscribe_url(env.smtp.to(ANN)[0])
    parts = urlsplit(link)
    token = parse_qs(parts.query)["token"][0]
    head, payload, signature = token.split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    tampered = f"{head}.{payload}.{flipped}"

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=env.app), base_url="http://testserver"
    ) as anonymous:
        for bad in (tampered, "not-a-token", ""):
            page = await anonymous.get("/unsubscribe", params={"token": bad})
            assert page.status_code == 400, page.text
            assert "not valid" in page.text and "<form" not in page.text
            posted = await anonymous.post("/unsubscribe", data={"token": bad, "scope": "all"})
            assert posted.status_code == 400, posted.text
        assert await env.get_notifications("ann") == {"muted": False, "muted_candidates": []}

        # A mail client's one-click unsubscribe (RFC 8058) posts to the link itself.
        click = await anonymous.post(
            f"{parts.path}?{parts.query}",
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert click.status_code == 200, click.text
    assert await env.get_notifications("ann") == {"muted": False, "muted_candidates": ["c1"]}


async def test_losing_access_before_the_delay_means_no_email(env: Env) -> None:
    thread = await env.agency_thread()
    await env.send("mem", thread, "mem joins in")  # mem is now involved
    await env.settle()
    before = len(env.smtp.messages())
    assert before == 2  # ann and coord

    await env.send("ann", thread, "for the team")
    await env.candidate("c1", members=["coord"], agency_users=["ann"])  # mem loses access
    await env.settle()
    assert env.smtp.to(MEM) == []
    assert [(r.status, r.last_error) for r in await env.rows_for("mem")] == [
        (outbox.DROPPED, "no access")
    ]
    assert len(env.smtp.to(COORD)) == 2

    await env.send("coord", thread, "for ann")
    await env.candidate("c1", members=["coord"], agency_users=[])  # ann is unlinked
    await env.settle()
    assert len(env.smtp.to(ANN)) == 1
    assert (await env.rows_for("ann"))[-1].last_error == "no access"
    assert len(env.smtp.messages()) == before + 1


# --- safety -----------------------------------------------------------------------------


async def test_no_header_injection_and_the_html_part_escapes(env: Env) -> None:
    await env.api.provision(
        f"{ORG}/users/eve",
        {"name": "Eve" + INJECTION, "email": "eve@acme.example", "kind": "member", "agency": None},
    )
    await env.api.provision(f"{ORG}/agencies/evil", {"name": "Evil" + INJECTION})
    await env.api.provision(
        f"{ORG}/users/ivy",
        {"name": "Ivy" + INJECTION, "email": "ivy@ag.example", "kind": "agency", "agency": "evil"},
    )
    await env.api.provision(
        f"{ORG}/candidates/cx",
        {
            "name": "Cand" + INJECTION,
            "coordinator": "eve",
            "members": ["eve"],
            "agency_users": ["ivy"],
        },
    )
    thread = await env.agency_thread("cx", agent="ivy")
    body = "<script>alert('x')</script> & <b>bold</b>"
    await env.send("ivy", thread, body)  # to eve (coordinator): author name injected
    await env.send("eve", thread, body)  # to ivy: recipient name injected
    await env.settle()

    received = env.smtp.messages()
    assert sorted(r.rcpt_tos for r in received) == [("eve@acme.example",), ("ivy@ag.example",)]
    for alert in received:
        message = alert.message
        assert message.get_all("Bcc") is None
        assert {k.lower() for k in message.keys()} <= ALERT_HEADERS, message.keys()  # noqa: SIM118
        assert EVIL not in alert.rcpt_tos
        header_lines = alert.header_block.split(b"\r\n")
        assert not any(line.lower().startswith(b"bcc") for line in header_lines)
        for name in ("Subject", "To", "From"):
            assert "\r" not in str(message[name]) and "\n" not in str(message[name])
        assert "Cand" in str(message["Subject"])
        text = alert.text()
        html = alert.html()
        assert body in text, "the text part keeps the body verbatim"
        assert "<script>" not in html and "<b>bold</b>" not in html
        assert "&lt;script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    (to_eve,) = env.smtp.to("eve@acme.example")
    assert to_eve.message["Subject"] == (
        "New message from Ivy Bcc: evil@example.com · Evil Bcc: evil@example.com "
        "about Cand Bcc: evil@example.com"
    ), "the author's agency is named, on one line"
    (to_ivy,) = env.smtp.to("ivy@ag.example")
    addresses = [a for _, a in email.utils.getaddresses([str(to_ivy.message["To"])])]
    assert addresses == ["ivy@ag.example"]


# --- delivery through failures ---------------------------------------------------------


@pytest.mark.parametrize("at", ["DATA", "RCPT"])
async def test_a_deferred_alert_is_retried_and_delivered_once(env: Env, at: str) -> None:
    env.smtp.fail_next(421, count=2, at=at)  # type: ignore[arg-type]
    retried_before = await env.metric("retried")
    thread = await env.agency_thread()
    await env.send("coord", thread, "through the outage")
    await env.release()
    await env.smtp.wait_for(1, to=ANN, timeout=15)
    await env.settle()
    await asyncio.sleep(0.3)  # nothing more comes

    assert len(env.smtp.messages()) == 1
    assert env.smtp.transactions == 3
    assert await env.metric("retried") - retried_before == 2
    assert await env.metric("sent") == 1
    (row,) = await env.rows_for("ann")
    assert (row.status, row.attempts) == (outbox.SENT, 3)
    if at == "DATA":  # a retry is the same email: receivers can drop a repeat
        ids = env.smtp.attempted_message_ids()
        assert len(ids) == 3 and len(set(ids)) == 1


@pytest.mark.parametrize("at", ["DATA", "RCPT"])
async def test_a_refused_alert_fails_and_is_never_retried(env: Env, at: str) -> None:
    env.smtp.fail_next(550, count=1, at=at)  # type: ignore[arg-type]
    thread = await env.agency_thread()
    await env.send("coord", thread, "refused for good")
    await env.settle()
    await asyncio.sleep(0.8)  # well past the first backoff (at most 0.3 s): no retry comes

    (row,) = await env.rows_for("ann")
    assert env.smtp.transactions == 1, f"the relay saw {env.smtp.transactions} attempts"
    assert env.smtp.messages() == []
    assert row.status == outbox.FAILED, (row.status, row.last_error, row.attempts)
    assert row.attempts == 1
    assert await env.metric("failed") == 1
    assert await env.metric("retried") == 0


async def test_a_stalled_relay_times_out_and_is_retried(launch: Launch) -> None:
    """A relay that never answers: the worker's transport gives up after its timeout
    (AM_SMTP_TIMEOUT_SECONDS; 1 s here) and the alert is retried, then delivered once."""
    env = await launch(run_email_worker=False)
    assert env.settings.smtp_url is not None
    transport = SmtpTransport.from_url(env.settings.smtp_url, timeout=1.0)
    counts: list[str] = []
    worker = alert_worker(
        env.settings, env.services.db, transport=transport, options=WORKER, count=counts.append
    )
    env.smtp.stall_next(1)
    task = asyncio.create_task(worker.run_forever())
    try:
        thread = await env.agency_thread()
        await env.send("coord", thread, "slow relay")
        await env.release()
        await env.smtp.wait_for(1, to=ANN, timeout=15)
        await env.settle()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(env.smtp.messages()) == 1
    assert env.smtp.data_commands == 2
    assert counts == ["retried", "sent"]
    (row,) = await env.rows_for("ann")
    assert (row.status, row.attempts) == (outbox.SENT, 2)
    assert "Timeout" in (row.last_error or "")


async def test_a_worker_stopped_mid_send_does_not_wait_for_the_relay(launch: Launch) -> None:
    """A process that stops while a relay sits on an alert's DATA: the send is dropped at
    once (the alert stays claimed, and is taken over once its lease runs out), never held
    for the relay's answer to a parting QUIT, which here would take the whole timeout."""
    env = await launch(run_email_worker=False)
    assert env.settings.smtp_url is not None
    transport = SmtpTransport.from_url(env.settings.smtp_url, timeout=600.0)
    worker = alert_worker(env.settings, env.services.db, transport=transport, options=WORKER)
    env.smtp.stall_next(1)
    task = asyncio.create_task(worker.run_forever())
    thread = await env.agency_thread()
    await env.send("coord", thread, "the relay is slow today")
    await env.release()
    deadline = time.monotonic() + 15
    while env.smtp.data_commands < 1:  # the relay now holds the DATA
        assert time.monotonic() < deadline, "the alert never reached the relay"
        await asyncio.sleep(0.05)
    task.cancel()
    # Far below the transport's 600 s: only a stop that waits for the relay gets here.
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 60)
    env.smtp.release_stalls()
    assert task.cancelled()
    assert env.smtp.messages() == []
    (row,) = await env.rows_for("ann")
    assert row.status == outbox.SENDING  # claimed; another worker takes it after the lease


async def test_a_worker_that_died_holding_a_claim_is_taken_over(launch: Launch) -> None:
    env = await launch(run_email_worker=False)
    db = env.services.db
    thread = await env.agency_thread()
    await env.send("coord", thread, "claimed then orphaned")
    await env.release()

    claimed: list[EmailOutbox] = []
    deadline = time.monotonic() + 10
    while not claimed:  # the dying worker claims the row once it is due, then vanishes
        assert time.monotonic() < deadline
        claimed = await outbox.claim(db, limit=10, lease_seconds=1.0)
        await asyncio.sleep(0.05)
    claimed_at = time.monotonic()
    assert len(claimed) == 1 and claimed[0].status == outbox.SENDING

    worker = alert_worker(
        env.settings, db, transport=SmtpTransport.from_url(env.smtp.url), options=WORKER
    )
    assert await worker.run_once() is False  # the lease holds: nothing to take yet
    assert env.smtp.messages() == []
    while not env.smtp.messages():
        assert time.monotonic() - claimed_at < 10, "the expired lease was never taken over"
        await worker.run_once()
        await asyncio.sleep(0.1)
    assert time.monotonic() - claimed_at >= 0.9, "taken over before the lease ran out"
    for _ in range(5):
        await worker.run_once()
    assert len(env.smtp.messages()) == 1
    (row,) = await env.rows_for("ann")
    assert (row.status, row.attempts) == (outbox.SENT, 2)
    assert "claimed then orphaned" in text_of(env.smtp.messages()[0])


# --- without SMTP, and the command line ------------------------------------------------


async def test_without_smtp_alerts_are_eml_files(launch: Launch, tmp_path: Path) -> None:
    env = await launch(smtp_url=None)
    mail_dir = env.settings.mail_dir
    assert mail_dir == tmp_path / "var" / "mail"
    thread = await env.agency_thread()
    await env.send("coord", thread, "written to a file")
    await env.settle()
    files = sorted(mail_dir.glob("*.eml"))
    assert len(files) == 1, list(mail_dir.iterdir()) if mail_dir.exists() else "no mail dir"
    assert list(mail_dir.glob("*.part")) == []
    message = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert ANN in str(message["To"])
    assert message["Subject"] == "New message from Coord about C1"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and "written to a file" in body.get_content()
    assert env.smtp.transactions == 0


def cli_env(smtp: SmtpServer, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AM_SMTP_URL": smtp.url,
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_VAR_DIR": str(tmp_path / "var"),
        "AM_LOG_LEVEL": "WARNING",
    }


def send_test_email(smtp: SmtpServer, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "agency-messaging"), "send-test-email", "you@example.com"],
        env=cli_env(smtp, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_send_test_email_delivers_one_message(smtp: SmtpServer, tmp_path: Path) -> None:
    done = send_test_email(smtp, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "you@example.com" in done.stdout
    (received,) = smtp.messages()
    assert received.rcpt_tos == ("you@example.com",)
    assert received.message["To"] == "you@example.com"
    assert "test" in str(received.message["Subject"]).lower()


def test_send_test_email_reports_a_refusal(smtp: SmtpServer, tmp_path: Path) -> None:
    smtp.fail_next(550)
    done = send_test_email(smtp, tmp_path)
    assert done.returncode != 0
    assert "550" in done.stderr and "refused" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert smtp.messages() == []
