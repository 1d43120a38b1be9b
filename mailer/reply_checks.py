"""What an incoming reply must pass before its text is read: written by a person (not an
auto-reply, a bounce or our own mail), from the person the reply address was made for, and,
when the receiving mail server says so, authenticated.

Pure functions of the message's headers; the receiver (mailer.inbound) calls them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.message import EmailMessage
from email.utils import getaddresses

# RFC 3834 `Auto-Submitted`, and the headers that common auto-responders and list servers set.
_AUTOMATIC_HEADERS = (
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress-reply",
    "list-id",
    "list-unsubscribe",
    "x-loop",
)
_BULK_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}


def is_automatic(message: EmailMessage, mail_from: str, own_addresses: Iterable[str]) -> str | None:
    """Why the message was sent by a machine (so it is neither posted nor answered, which
    could start a loop), or None for a message a person wrote."""
    if not mail_from.strip("<> "):
        return "a delivery report (null sender)"
    auto = str(message.get("auto-submitted", "no")).strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto[:40]}"
    precedence = str(message.get("precedence", "")).strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in _AUTOMATIC_HEADERS:
        if name in message:
            return f"{name} header"
    own = {a.lower() for a in own_addresses}
    if from_address(message) in own or mail_from.strip("<> ").lower() in own:
        return "our own address"
    return None


def from_address(message: EmailMessage) -> str | None:
    """The one address in `From`, lowercased; None when there is not exactly one."""
    try:
        values = message.get_all("from") or []
    except (ValueError, IndexError):  # a malformed header the parser could not read
        return None
    found = [addr for _, addr in getaddresses([str(v) for v in values]) if addr]
    if len(found) != 1 or "@" not in found[0]:
        return None
    return found[0].strip().lower()


def address_of(display: str) -> str:
    """`Ann <ann@x.example>` → `ann@x.example`, lowercased."""
    found = [addr for _, addr in getaddresses([display]) if addr]
    return found[0].lower() if found else display.strip().lower()


def same_mailbox(a: str, b: str) -> bool:
    """Addresses are compared whole, without case: providers treat local parts that way."""
    return a.strip().lower() == b.strip().lower()


# --- Authentication-Results (RFC 8601) ----------------------------------------------------

PASS, FAIL, NONE = "pass", "fail", "none"
_RESULT = re.compile(r"\b(dmarc|dkim|spf)\s*=\s*([a-z]+)([^;]*)", re.IGNORECASE)
_PROPERTY = re.compile(r"\b(header\.d|header\.i|header\.from|smtp\.mailfrom)\s*=\s*([^\s;()]+)")
_COMMENT = re.compile(r"\([^()]*\)")


def _domain(value: str) -> str:
    return value.rsplit("@", 1)[-1].strip().strip('"').lower().rstrip(".")


def _aligned(domain: str, author_domain: str) -> bool:
    """Relaxed alignment (DMARC): the same domain, or one a subdomain of the other."""
    return bool(domain) and (
        domain == author_domain
        or author_domain.endswith("." + domain)
        or domain.endswith("." + author_domain)
    )


def authentication_verdict(message: EmailMessage, authserv_id: str, author: str) -> str:
    """PASS when a header added by our own mail server (`authserv_id`) reports DMARC, or
    DKIM or SPF aligned with the author's domain, as pass; FAIL when it reports a failure
    and nothing aligned passed; NONE when it says nothing. Headers with another authserv-id
    are ignored: anyone can write one (RFC 8601, section 5)."""
    author_domain = _domain(author)
    passed = failed = False
    for header in message.get_all("authentication-results") or []:
        text = _COMMENT.sub("", str(header))
        server_id, _, results = text.partition(";")
        if server_id.strip().lower().split()[:1] != [authserv_id.lower()]:
            continue
        for method, result, rest in _RESULT.findall(results):
            method, result = method.lower(), result.lower()
            props: dict[str, str] = {k.lower(): v for k, v in _PROPERTY.findall(rest)}
            if method == "dmarc":
                aligned = True
            elif method == "dkim":
                signer = props.get("header.d") or props.get("header.i") or ""
                aligned = _aligned(_domain(signer), author_domain)
            else:
                aligned = _aligned(_domain(props.get("smtp.mailfrom") or ""), author_domain)
            if result == PASS and aligned:
                passed = True
            elif result in (FAIL, "permerror"):
                failed = True
    if passed:
        return PASS
    return FAIL if failed else NONE
