"""Builds an alert email: plain text and HTML parts from Jinja2 templates, safe headers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

SHOWN_MESSAGES = 10
# CRLF line ends, and long headers (the unsubscribe link) kept whole rather than folded
# into encoded words that mail clients would not parse.
EMAIL_POLICY = policy.SMTP.clone(max_line_length=998)
_templates = Environment(
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


def header_text(value: str, limit: int = 200) -> str:
    """Text safe for a header: no CR/LF or other controls (no header injection), bounded."""
    cleaned = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in value)
    # "=?" would start an RFC 2047 encoded-word that mail clients decode into header syntax
    # (a name could then read as "Bcc: someone"); a space keeps it plain text.
    cleaned = cleaned.replace("=?", "= ?")
    return " ".join(cleaned.split())[:limit]


def subject_for(alert: Alert) -> str:
    authors = sorted({m.author for m in alert.messages})
    about = header_text(alert.candidate_name)
    if len(authors) == 1:
        word = "message" if len(alert.messages) == 1 else "messages"
        return header_text(f"New {word} from {authors[0]} about {about}")
    return header_text(f"{len(alert.messages)} new messages about {about}")


def compose(alert: Alert, *, public_url: str, sender: str, unsubscribe_link: str) -> EmailMessage:
    domain = urlsplit(public_url).hostname or "localhost"
    link = f"{public_url}/candidates/{quote(alert.candidate_id)}"
    candidate = header_text(alert.candidate_name)
    shown = alert.messages[-SHOWN_MESSAGES:]
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
                "author": header_text(m.author),
                "when": m.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                "body": m.body,
                "lines": m.body.splitlines() or [""],
            }
            for m in shown
        ],
        "hidden": len(alert.messages) - len(shown),
        "link": link,
        "candidate": candidate,
        "unsubscribe_link": unsubscribe_link,
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
    message["List-Unsubscribe"] = f"<{unsubscribe_link}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_templates.get_template("alert.txt.j2").render(context))
    message.add_alternative(
        _templates.get_template("alert.html.j2").render(context), subtype="html"
    )
    return message
