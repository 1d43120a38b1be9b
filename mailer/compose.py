"""Builds an alert email: plain text and HTML parts from Jinja2 templates, safe headers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

SHOWN_MESSAGES = 10
# CRLF line ends, and long headers (the unsubscribe link) kept whole rather than folded
# into encoded words that mail clients would not parse.
EMAIL_POLICY = policy.SMTP.clone(max_line_length=998)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True, slots=True)
class AlertLine:
    author: str
    body: str
    created_at: datetime
    message_id: int
    author_agency: str | None = None  # the agency of an agency user; members have none

    @property
    def signed(self) -> str:
        """Who wrote it, as emails name them: an agency user with their agency."""
        if self.author_agency:
            return f"{self.author} · {self.author_agency}"
        return self.author


@dataclass(frozen=True, slots=True)
class Alert:
    """One email: the messages of one thread still unread for one recipient."""

    alert_id: int
    thread_id: int
    candidate_id: str
    candidate_name: str
    recipient_name: str
    recipient_email: str
    private: bool
    messages: list[AlertLine]  # oldest first
    time_zone: str = "UTC"  # the recipient's IANA zone: times are shown in it


def header_text(value: str, limit: int = 200) -> str:
    """Text safe for a header: no CR/LF or other controls (no header injection), bounded."""
    cleaned = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in value)
    # "=?" would start an RFC 2047 encoded-word that mail clients decode into header syntax
    # (a name could then read as "Bcc: someone"); a space keeps it plain text.
    cleaned = cleaned.replace("=?", "= ?")
    return " ".join(cleaned.split())[:limit]


def quoted(alert: Alert) -> list[AlertLine]:
    """The messages the email quotes: the newest ones, oldest first (the rest are counted)."""
    return alert.messages[-SHOWN_MESSAGES:]


def zone_named(name: str) -> tzinfo:
    """The recipient's zone; a name this system does not know falls back to UTC."""
    try:
        return ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        return UTC


def local_time(moment: datetime, zone: tzinfo) -> str:
    """`2026-12-01 15:04 CET (Europe/Paris)`: the abbreviation alone is ambiguous (CST),
    so a named zone is spelled out too. `moment` is aware (storage keeps times in UTC)."""
    shown = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    return shown if str(zone) == "UTC" else f"{shown} ({zone})"


def subject_for(alert: Alert) -> str:
    authors = sorted({m.signed for m in alert.messages})
    about = header_text(alert.candidate_name)
    if len(authors) == 1:
        word = "message" if len(alert.messages) == 1 else "messages"
        return header_text(f"New {word} from {authors[0]} about {about}")
    return header_text(f"{len(alert.messages)} new messages about {about}")


def compose(
    alert: Alert,
    *,
    link: str,
    public_url: str,
    sender: str,
    unsubscribe_link: str,
    reply_to: str | None = None,
) -> EmailMessage:
    """`link` opens the thread at the first quoted message; `public_url` (this server's)
    names the domain of the Message-ID; `reply_to`, when replies by email are on, is the
    recipient's reply address for this thread (mailer.reply_address)."""
    domain = urlsplit(public_url).hostname or "localhost"
    zone = zone_named(alert.time_zone)
    candidate = header_text(alert.candidate_name)
    shown = quoted(alert)
    context = {
        "greeting": f"Hi {header_text(alert.recipient_name)},",
        "intro": (
            f"You have {len(alert.messages)} unread "
            f"{'message' if len(alert.messages) == 1 else 'messages'} in "
            f"{'a private conversation' if alert.private else 'the agency conversation'} "
            f"about {candidate}:"
        ),
        "shown": [
            {
                "author": header_text(m.signed),
                "when": local_time(m.created_at, zone),
                "body": m.body,
                "lines": m.body.splitlines() or [""],
            }
            for m in shown
        ],
        "hidden": len(alert.messages) - len(shown),
        "link": link,
        "candidate": candidate,
        "unsubscribe_link": unsubscribe_link,
        "reply_by_email": reply_to is not None,
    }
    message = EmailMessage(policy=EMAIL_POLICY)
    message["Subject"] = subject_for(alert)
    message["From"] = sender
    message["To"] = formataddr(
        (header_text(alert.recipient_name), header_text(alert.recipient_email))
    )
    message["Date"] = format_datetime(alert.messages[-1].created_at)
    # Stable per alert: a retry sends the same Message-ID, so receivers can drop a repeat.
    message["Message-ID"] = f"<alert-{alert.alert_id}@{domain}>"
    thread_root = f"<thread-{alert.thread_id}@{domain}>"
    message["In-Reply-To"] = thread_root
    message["References"] = thread_root
    if reply_to is not None:
        message["Reply-To"] = formataddr((f"Conversation about {candidate}"[:120], reply_to))
    message["List-Unsubscribe"] = f"<{unsubscribe_link}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(TEMPLATES.get_template("alert.txt.j2").render(context))
    message.add_alternative(TEMPLATES.get_template("alert.html.j2").render(context), subtype="html")
    return message
