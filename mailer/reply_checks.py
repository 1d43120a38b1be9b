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
    """What our own mail server (`authserv_id`) says of the author's domain: PASS when it
    reports DMARC, or DKIM or SPF aligned with that domain, as pass; FAIL when it reports one
    of those as failed and none as passed; NONE when it says nothing of them. Only its
    topmost header is read: it adds its own on top, and one with its id further down came
    from outside (RFC 8601, section 5); headers of other ids are anyone's."""
    author_domain = _domain(author)
    ours = [
        text
        for text in (
            _COMMENT.sub("", str(h)) for h in message.get_all("authentication-results") or []
        )
        if text.partition(";")[0].strip().lower().split()[:1] == [authserv_id.lower()]
    ]
    if not ours:
        return NONE
    passed = failed = False
    for method, result, rest in _RESULT.findall(ours[0].partition(";")[2]):
        method, result = method.lower(), result.lower()
        props: dict[str, str] = {k.lower(): v for k, v in _PROPERTY.findall(rest)}
        if method == "dmarc":
            signer = props.get("header.from") or author_domain
        elif method == "dkim":
            signer = props.get("header.d") or props.get("header.i") or ""
        else:
            signer = props.get("smtp.mailfrom") or ""
        if not _aligned(_domain(signer), author_domain):
            continue  # a verdict about another domain says nothing of this author
        if result == PASS:
            passed = True
        elif result in (FAIL, "permerror"):
            failed = True
    if passed:
        return PASS
    return FAIL if failed else NONE
