"""The answer to a reply by email that could not be posted: why, where to answer instead,
and the person's own text, so that nothing they wrote is lost."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from urllib.parse import urlsplit

from mailer.compose import EMAIL_POLICY, TEMPLATES, header_text

_MESSAGE_ID_CHARS = 200


def _message_id(original: EmailMessage) -> str | None:
    """The original's Message-ID when it is one (`<…>`, no spaces): to thread the answer."""
    try:
        value = str(original.get("message-id", "") or "").strip()
    except (ValueError, IndexError):
        return None
    ok = value.startswith("<") and value.endswith(">") and len(value) <= _MESSAGE_ID_CHARS
    return value if ok and value.isprintable() and " " not in value else None


def _subject(original: EmailMessage) -> str:
    try:
        return header_text(str(original.get("subject", "") or ""), limit=120)
    except (ValueError, IndexError):
        return ""


def compose_answer(
    *,
    recipient_name: str,
    recipient_email: str,
    candidate_name: str,
    reason: str,
    link: str,
    quoted: str,
    original: EmailMessage,
    sender: str,
    public_url: str,
) -> EmailMessage:
    domain = urlsplit(public_url).hostname or "localhost"
    candidate = header_text(candidate_name)
    context = {
        "greeting": f"Hi {header_text(recipient_name)},",
        "candidate": candidate,
        "reason": reason,
        "link": link,
        "lines": quoted.splitlines(),
        "subject": _subject(original),
    }
    answer = EmailMessage(policy=EMAIL_POLICY)
    answer["Subject"] = header_text(f"Your reply about {candidate} was not posted")
    answer["From"] = sender
    answer["To"] = formataddr((header_text(recipient_name), header_text(recipient_email)))
    answer["Date"] = formatdate(usegmt=True)
    answer["Message-ID"] = f"<reply-answer-{uuid.uuid4().hex}@{domain}>"
    original_id = _message_id(original)
    if original_id:
        answer["In-Reply-To"] = original_id
        answer["References"] = original_id
    # RFC 3834: an automatic answer, which auto-responders must not answer in turn.
    answer["Auto-Submitted"] = "auto-replied"
    answer["X-Auto-Response-Suppress"] = "All"
    answer.set_content(TEMPLATES.get_template("reply_not_posted.txt.j2").render(context))
    return answer
