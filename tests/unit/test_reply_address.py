"""Reply addresses (mailer/reply_address.py): genuine ones read back; forged, altered, foreign
and expired ones are refused from the address alone, each with its reason."""

from __future__ import annotations

import base64

import pytest

from mailer.reply_address import (
    ExpiredAddress,
    ForgedAddress,
    NotAReplyAddress,
    ReplyAddresses,
    ReplyToken,
)

SECRET = "a secret of at least thirty-two characters!"
DOMAIN = "reply.acme.example"
NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture
def addresses() -> ReplyAddresses:
    return ReplyAddresses(SECRET, DOMAIN, ttl_seconds=30 * DAY)


def test_an_address_reads_back_as_its_user_and_thread(addresses: ReplyAddresses) -> None:
    address = addresses.address(42, 7, now=NOW)
    assert address.startswith("reply-") and address.endswith("@" + DOMAIN)
    token = addresses.read(address, now=NOW)
    assert (token.user_pk, token.thread_id) == (42, 7)
    assert NOW + 30 * DAY <= token.expires_at <= NOW + 30 * DAY + 2 * 3600


@pytest.mark.parametrize(("user", "thread"), [(1, 1), (2**31, 2**31), (2**63 - 1, 2**63 - 1)])
def test_the_local_part_fits_the_smtp_limit_for_any_key(
    addresses: ReplyAddresses, user: int, thread: int
) -> None:
    address = addresses.address(user, thread, now=NOW)
    assert len(address.split("@")[0]) <= 64
    assert addresses.read(address, now=NOW) == ReplyToken(
        user, thread, addresses.read(address, now=NOW).expires_at
    )


def test_case_and_angle_brackets_do_not_matter(addresses: ReplyAddresses) -> None:
    address = addresses.address(5, 9, now=NOW)
    assert addresses.read(f"<{address.upper()}>", now=NOW).thread_id == 9
    assert addresses.read(address + ".", now=NOW).thread_id == 9  # a fully qualified domain


def test_every_altered_character_is_caught(addresses: ReplyAddresses) -> None:
    address = addresses.address(5, 9, now=NOW)
    local, _, domain = address.partition("@")
    for i in range(len("reply-"), len(local)):
        other = "b" if local[i] == "a" else "a"
        altered = f"{local[:i]}{other}{local[i + 1 :]}@{domain}"
        with pytest.raises((ForgedAddress, NotAReplyAddress)):
            addresses.read(altered, now=NOW)


def test_another_secret_makes_addresses_this_server_refuses(addresses: ReplyAddresses) -> None:
    other = ReplyAddresses("another secret, just as long as the first one", DOMAIN, 30 * DAY)
    with pytest.raises(ForgedAddress, match="not made by this server"):
        addresses.read(other.address(5, 9, now=NOW), now=NOW)


def test_a_token_with_the_seal_of_another_payload_is_forged(addresses: ReplyAddresses) -> None:
    mine = addresses.address(5, 9, now=NOW).split("@")[0][len("reply-") :]
    raw = base64.b32decode(mine.upper() + "=" * (-len(mine) % 8))
    # Same seal, the thread id changed: what an attacker would try.
    swapped = raw[:1] + bytes([5, 10]) + raw[3:]
    token = base64.b32encode(swapped).decode().rstrip("=").lower()
    with pytest.raises(ForgedAddress):
        addresses.read(f"reply-{token}@{DOMAIN}", now=NOW)


def test_an_expired_address_says_so_and_still_names_its_thread(
    addresses: ReplyAddresses,
) -> None:
    address = addresses.address(5, 9, now=NOW)
    with pytest.raises(ExpiredAddress, match="has expired") as caught:
        addresses.read(address, now=NOW + 32 * DAY)
    assert (caught.value.token.user_pk, caught.value.token.thread_id) == (5, 9)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("reply-abc@elsewhere.example", "@reply.acme.example only"),
        ("postmaster@reply.acme.example", "no such reply address"),
        ("reply-!!!@reply.acme.example", "no such reply address"),
        ("reply-" + "a" * 70 + "@reply.acme.example", "no such reply address"),
        ("reply-aaaa@reply.acme.example", "not valid"),
        ("no-at-sign", "only"),
    ],
)
def test_addresses_that_lead_nowhere_are_refused_with_a_reason(
    addresses: ReplyAddresses, address: str, reason: str
) -> None:
    with pytest.raises((NotAReplyAddress, ForgedAddress)) as caught:
        addresses.read(address, now=NOW)
    assert reason in str(caught.value).lower() or reason in str(caught.value)


def test_a_sealed_payload_of_an_unknown_version_or_shape_is_refused(
    addresses: ReplyAddresses,
) -> None:
    def sealed(payload: bytes) -> str:
        token = base64.b32encode(payload + addresses._seal(payload)).decode()
        return f"reply-{token.rstrip('=').lower()}@{DOMAIN}"

    with pytest.raises(ForgedAddress, match="version"):
        addresses.read(sealed(bytes([9, 1, 1, 1])), now=NOW)
    with pytest.raises(ForgedAddress, match="not valid"):
        addresses.read(sealed(bytes([1, 1, 1, 1, 1])), now=NOW)  # four fields, not three
    with pytest.raises(ForgedAddress, match="not valid"):
        addresses.read(sealed(bytes([1, 0x80, 0x80, 0x80])), now=NOW)  # cut short
    with pytest.raises(ForgedAddress, match="not valid"):
        addresses.read(sealed(bytes([1]) + bytes([0xFF] * 10) + b"\x01\x01\x01"), now=NOW)
