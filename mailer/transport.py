"""Where emails go: an SMTP relay (aiosmtplib), or `.eml` files when no relay is configured.

TransportError            the email was not delivered
├── TransientError        try again later (connection refused or lost, timeout, 4xx)
└── PermanentError        never retry (5xx: the relay refused the message for good)
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

SMTP_TIMEOUT_SECONDS = 30.0


class TransportError(Exception):
    """The email was not delivered."""


class TransientError(TransportError):
    """Delivery failed for now; the same email may be tried again later."""


class PermanentError(TransportError):
    """The relay refused the email for good; trying again would not help."""


class Transport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...

    @property
    def description(self) -> str: ...


@dataclass(frozen=True)
class SmtpTransport:
    """`smtp://[user:pass@]host:port` (STARTTLS when the relay offers it) or `smtps://` (TLS)."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    timeout: float = SMTP_TIMEOUT_SECONDS

    @classmethod
    def from_url(cls, url: str, timeout: float = SMTP_TIMEOUT_SECONDS) -> SmtpTransport:
        parts = urlsplit(url)
        implicit_tls = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname or "localhost",
            port=parts.port or (465 if implicit_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
            timeout=timeout,
        )

    @property
    def description(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"{scheme}://{self.hostname}:{self.port}"

    async def send(self, message: EmailMessage) -> None:
        recipients = _one_recipient(message)
        client = aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.implicit_tls,
            start_tls=None if not self.implicit_tls else False,  # None: if offered
            timeout=self.timeout,
        )
        try:
            await self._deliver(client, message, recipients)
        except BaseException:
            # Failed, or cancelled because the process stops: drop the connection. A polite
            # QUIT would wait up to the timeout on a relay that may be why we stopped.
            client.close()
            raise
        try:
            await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()  # the email was accepted; QUIT is a courtesy

    async def _deliver(
        self, client: aiosmtplib.SMTP, message: EmailMessage, recipients: list[str]
    ) -> None:
        try:
            await client.connect()
            await client.send_message(message, recipients=recipients)
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refusal.code for refusal in error.recipients]
            if codes and all(500 <= code < 600 for code in codes):
                raise PermanentError(f"The relay refused the recipient ({codes[0]}).") from None
            raise TransientError(f"The relay deferred the recipient ({codes[:1]}).") from None
        except aiosmtplib.SMTPResponseException as error:
            if 500 <= error.code < 600:
                raise PermanentError(f"The relay refused the email ({error.code}).") from None
            raise TransientError(f"The relay deferred the email ({error.code}).") from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            raise TransientError(
                f"The relay could not be reached ({type(error).__name__})."
            ) from None


@dataclass(frozen=True)
class FileTransport:
    """Writes each email as an .eml file: what `make run` uses, to show alerts without SMTP."""

    directory: Path

    @property
    def description(self) -> str:
        return f"files under {self.directory}/"

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._write, message)

    def _write(self, message: EmailMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ident = (
            str(message["Message-ID"] or "").strip("<>").replace("/", "_") or os.urandom(8).hex()
        )
        final = self.directory / f"{ident}.eml"
        partial = final.with_suffix(".eml.part")
        partial.write_bytes(bytes(message))
        partial.replace(final)  # readers never see half a file; a resend overwrites it


def create_transport(
    smtp_url: str | None, mail_dir: Path, timeout: float = SMTP_TIMEOUT_SECONDS
) -> Transport:
    if smtp_url:
        return SmtpTransport.from_url(smtp_url, timeout)
    return FileTransport(mail_dir)


def _one_recipient(message: EmailMessage) -> list[str]:
    """The envelope recipient, given explicitly: never whatever else the To header might
    be read as. An alert goes to exactly one address."""
    addresses = [address for _, address in getaddresses([str(message["To"] or "")]) if address]
    if len(addresses) != 1:
        raise PermanentError("An alert must have exactly one recipient.")
    return addresses
