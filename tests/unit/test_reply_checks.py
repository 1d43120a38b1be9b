"""The checks a reply passes before its text is read (mailer/reply_checks.py): machines are
recognised, the sender is one mailbox, and Authentication-Results are trusted only from our
own mail server."""

from __future__ import annotations

from email import message_from_string, policy
from email.message import EmailMessage

import pytest

from mailer.reply_checks import (
    FAIL,
    NONE,
    PASS,
    address_of,
    authentication_verdict,
    from_address,
    is_automatic,
    same_mailbox,
)

OWN = ("alerts@messaging.example",)


def message(headers: str) -> EmailMessage:
    parsed = message_from_string(headers + "\n\nbody\n", policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


PERSON = "From: Ann <ann@ag.example>"


def test_a_message_a_person_wrote_is_not_automatic() -> None:
    assert is_automatic(message(PERSON), "ann@ag.example", OWN) is None
    assert is_automatic(message(PERSON + "\nAuto-Submitted: no"), "ann@ag.example", OWN) is None
    assert is_automatic(message(PERSON + "\nPrecedence: first-class"), "a@b.c", OWN) is None


@pytest.mark.parametrize(
    ("headers", "mail_from", "why"),
    [
        (PERSON, "", "null sender"),
        (PERSON, "<>", "null sender"),
        (PERSON + "\nAuto-Submitted: auto-replied", "ann@ag.example", "auto-replied"),
        (PERSON + "\nAuto-Submitted: auto-generated", "ann@ag.example", "auto-generated"),
        (PERSON + "\nPrecedence: bulk", "ann@ag.example", "bulk"),
        (PERSON + "\nPrecedence: junk", "ann@ag.example", "junk"),
        (PERSON + "\nPrecedence: list", "ann@ag.example", "list"),
        (PERSON + "\nX-Autoreply: yes", "ann@ag.example", "x-autoreply"),
        (PERSON + "\nX-Autorespond: yes", "ann@ag.example", "x-autorespond"),
        (PERSON + "\nList-Id: <team.lists.example>", "ann@ag.example", "list-id"),
        ("From: Agency Messaging <Alerts@Messaging.example>", "x@y.z", "our own"),
        (PERSON, "alerts@messaging.example", "our own"),
    ],
)
def test_machines_are_recognised(headers: str, mail_from: str, why: str) -> None:
    found = is_automatic(message(headers), mail_from, OWN)
    assert found is not None and why in found.lower()


def test_the_from_header_must_hold_exactly_one_address() -> None:
    assert from_address(message(PERSON)) == "ann@ag.example"
    assert from_address(message("From: ANN@AG.EXAMPLE")) == "ann@ag.example"
    assert from_address(message("From: a@x.example, b@y.example")) is None
    assert from_address(message("From: nobody")) is None
    assert from_address(message("Subject: no from")) is None


def test_mailboxes_compare_whole_and_without_case() -> None:
    assert same_mailbox("Ann@AG.example", "ann@ag.example ")
    assert not same_mailbox("ann@ag.example", "ann@ag.example.evil")
    assert address_of("Agency Messaging <alerts@m.example>") == "alerts@m.example"
    assert address_of("plain@m.example") == "plain@m.example"


def verdict(*results: str, author: str = "ann@ag.example") -> str:
    headers = PERSON + "".join(f"\nAuthentication-Results: {r}" for r in results)
    return authentication_verdict(message(headers), "mx.acme.example", author)


def test_an_aligned_pass_from_our_server_passes() -> None:
    assert verdict("mx.acme.example; dkim=pass header.d=ag.example") == PASS
    assert verdict("mx.acme.example; dkim=pass header.i=@mail.ag.example") == PASS
    assert verdict("mx.acme.example; spf=pass smtp.mailfrom=bounce@ag.example") == PASS
    assert verdict("mx.acme.example; dmarc=pass header.from=ag.example") == PASS
    assert verdict("MX.ACME.EXAMPLE 1; dkim=pass (good signature) header.d=ag.example") == PASS
    assert (
        verdict("mx.acme.example; spf=fail smtp.mailfrom=ag.example; dkim=pass header.d=ag.example")
        == PASS
    )


def test_failures_and_silence_are_told_apart() -> None:
    assert verdict("mx.acme.example; spf=fail smtp.mailfrom=ag.example") == FAIL
    assert verdict("mx.acme.example; dmarc=fail header.from=ag.example") == FAIL
    assert verdict("mx.acme.example; dkim=permerror header.d=ag.example") == FAIL
    assert verdict("mx.acme.example; dkim=none") == NONE
    assert verdict() == NONE


def test_a_pass_for_another_domain_or_from_another_server_counts_for_nothing() -> None:
    assert verdict("mx.acme.example; dkim=pass header.d=evil.example") == NONE
    assert verdict("mx.acme.example; spf=pass smtp.mailfrom=evil.example") == NONE
    # Anyone can write an Authentication-Results header: only ours is read.
    assert verdict("mx.evil.example; dkim=pass header.d=ag.example") == NONE
    assert verdict("mx.acme.example.evil; dmarc=pass") == NONE


def test_only_our_servers_topmost_header_counts() -> None:
    # A header with our id below our own came from outside: its pass counts for nothing.
    assert (
        verdict(
            "mx.acme.example; dkim=fail header.d=ag.example",
            "mx.acme.example; dkim=pass header.d=ag.example",
        )
        == FAIL
    )
    assert (
        verdict("mx.other.example; dkim=fail", "mx.acme.example; spf=pass smtp.mailfrom=ag.example")
        == PASS
    )


def test_a_failure_about_another_domain_is_not_the_authors() -> None:
    # A mailing list's broken signature, say: it says nothing of ann's domain.
    assert verdict("mx.acme.example; dkim=fail header.d=lists.example") == NONE
    assert verdict("mx.acme.example; dmarc=pass header.from=evil.example") == NONE
