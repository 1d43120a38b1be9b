"""A real SMTP server for the tests: aiosmtpd's Controller on a free loopback port.

It stores each accepted message as an `email.message.EmailMessage` (with its raw bytes and
envelope), counts every transaction (each MAIL FROM), and can be told to misbehave for the
next N RCPT or DATA commands: answer 421 (try later), 550 (refused for good), or stall (never
answer, until the server stops), so that the product's timeouts fire.

    with SmtpServer() as smtp:
        settings = make_settings(..., smtp_url=smtp.url)
        smtp.fail_next(421, count=2)          # the next two DATA commands are deferred
        smtp.fail_next(550, at="RCPT")        # the next RCPT is refused for good
        smtp.stall_next()                     # the next DATA never gets an answer
        await smtp.wait_for(1)                # until one message was accepted
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.controller import Controller

from harness.services import free_port

Command = Literal["RCPT", "DATA"]
STALL = "stall"
STALL_LIMIT_SECONDS = 120.0


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage

    @property
    def header_block(self) -> bytes:
        """The raw header section, as it came over the wire."""
        return self.raw.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in self.raw else self.raw

    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return str(part.get_content())

    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        assert part is not None, "no text/html part"
        return str(part.get_content())


@dataclass
class _Handler:
    owner: SmtpServer

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        self.owner._note_transaction()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = await self.owner._misbehave("RCPT")
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        self.owner._note_data(raw)
        refusal = await self.owner._misbehave("DATA")
        if refusal is not None:
            return refusal
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.owner._accept(
            Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), raw, message)
        )
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    transactions: int = 0  # MAIL FROM commands: one per delivery attempt
    data_commands: int = 0  # DATA contents received (accepted or not)
    rcpt_commands: int = 0
    data_raw: list[bytes] = field(default_factory=list)  # every DATA content, accepted or not
    _plans: dict[str, deque[str | int]] = field(
        default_factory=lambda: {"RCPT": deque(), "DATA": deque()}
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)
    _controller: Controller | None = None

    def __repr__(self) -> str:
        return f"SmtpServer({self.url}, {len(self.received)} received)"

    # --- life -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> SmtpServer:
        self._released.clear()
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._released.set()  # stalled commands give up, so that the loop can stop
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour ----------------------------------------------------------------------

    def fail_next(self, code: int, count: int = 1, at: Command = "DATA") -> None:
        """The next `count` commands `at` are answered with `code` (421, 550, ...)."""
        with self._lock:
            self._plans[at].extend([code] * count)

    def stall_next(self, count: int = 1, at: Command = "DATA") -> None:
        """The next `count` commands `at` get no answer at all (until the server stops)."""
        with self._lock:
            self._plans[at].extend([STALL] * count)

    def release_stalls(self) -> None:
        """Commands stalled so far are answered (with 421) and stop stalling."""
        self._released.set()

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.data_raw.clear()
            self.transactions = self.data_commands = self.rcpt_commands = 0
            for plan in self._plans.values():
                plan.clear()
        self._released.clear()

    # --- what came ----------------------------------------------------------------------

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def to(self, address: str) -> list[Received]:
        """Accepted messages whose envelope includes `address`."""
        return [r for r in self.messages() if address in r.rcpt_tos]

    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.messages()]

    async def wait_for(self, count: int, timeout: float = 10.0, to: str | None = None) -> None:
        """Waits until at least `count` messages (to `to`, if given) were accepted."""
        deadline = time.monotonic() + timeout
        while True:
            have = len(self.to(to)) if to else len(self.messages())
            if have >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} messages{' to ' + to if to else ''} within {timeout}s, "
                    f"got {have}: {[(r.rcpt_tos, r.message['Subject']) for r in self.messages()]}"
                )
            await asyncio.sleep(0.05)

    def attempted_message_ids(self) -> list[str]:
        """The Message-ID of every DATA content received, accepted or refused."""
        with self._lock:
            raws = list(self.data_raw)
        return [str(message_from_bytes(raw, policy=policy.default)["Message-ID"]) for raw in raws]

    # --- called from the server's thread ----------------------------------------------

    def _note_transaction(self) -> None:
        with self._lock:
            self.transactions += 1

    def _note_data(self, raw: bytes) -> None:
        with self._lock:
            self.data_commands += 1
            self.data_raw.append(raw)

    def _accept(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    async def _misbehave(self, command: Command) -> str | None:
        with self._lock:
            if command == "RCPT":
                self.rcpt_commands += 1
            plan = self._plans[command]
            action = plan.popleft() if plan else None
        if action is None:
            return None
        if action == STALL:
            await asyncio.to_thread(self._released.wait, STALL_LIMIT_SECONDS)
            return "421 4.3.0 Stalled on purpose; try again later"
        if int(action) >= 500:
            return f"{action} 5.7.1 Refused on purpose"
        return f"{action} 4.3.0 Deferred on purpose; try again later"


def send_reply(
    port: int, *, sender: str, to: str, body: str, host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """A person's reply to an alert, over one SMTP session as `swaks --server HOST:PORT
    --from SENDER --to TO --body BODY` sends it; the answer to its DATA."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Re: New message"
    message["Message-ID"] = f"<reply-{time.time_ns()}@{sender.rsplit('@', 1)[-1]}>"
    message.set_content(body)
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo("mx.sender.example")
        client.mail(sender)
        code, text = client.rcpt(to)
        assert code == 250, (code, text)
        return client.data(message.as_bytes(policy=policy.SMTP))
