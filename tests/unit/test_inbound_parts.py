"""Small parts of the reply receiver (mailer/inbound.py): the client id an email posts
under, and the hourly budget of answers."""

from __future__ import annotations

from email import message_from_string, policy
from email.message import EmailMessage

from mailer.inbound import MAX_CLIENT_ID_CHARS, _AnswerBudget, client_id_of


def parsed(headers: str) -> EmailMessage:
    message = message_from_string(headers + "\n\ntext\n", policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_the_message_id_is_the_client_id() -> None:
    assert client_id_of(parsed("Message-ID: <abc@mail.example>"), "t") == "<abc@mail.example>"


def test_a_missing_or_oversized_message_id_becomes_a_stable_digest() -> None:
    bare = parsed("From: a@b.example\nDate: Tue, 01 Dec 2026 15:04:00 +0000")
    first, again = client_id_of(bare, "hello"), client_id_of(bare, "hello")
    assert first == again and first.startswith("email:") and len(first) <= MAX_CLIENT_ID_CHARS
    assert client_id_of(bare, "other text") != first
    long_id = "<" + "x" * 200 + "@mail.example>"
    digest = client_id_of(parsed(f"Message-ID: {long_id}"), "t")
    assert digest.startswith("email:") and len(digest) <= MAX_CLIENT_ID_CHARS
    assert digest == client_id_of(parsed(f"Message-ID: {long_id}"), "different text")


def test_the_answer_budget_refills_after_an_hour() -> None:
    budget = _AnswerBudget(per_hour=2)
    assert budget.take(1, 0.0) and budget.take(1, 10.0)
    assert not budget.take(1, 20.0)
    assert budget.take(2, 20.0)  # another person has their own
    assert budget.take(1, 3601.0)  # the first answer is an hour old
    assert not budget.take(1, 3602.0)


def test_the_answer_budget_forgets_people_it_has_not_answered_for_an_hour() -> None:
    budget = _AnswerBudget(per_hour=1)
    for user in range(10_001):
        budget.take(user, 0.0)
    assert len(budget.sent) == 10_001
    assert budget.take(20_000, 3601.0)
    assert list(budget.sent) == [20_000]
