"""Reply addresses: one per recipient and thread, signed and expiring.

An alert's `Reply-To` is `reply-<token>@<AM_REPLY_DOMAIN>`. The token carries the
recipient's user key, the thread id and an expiry hour, sealed with an HMAC whose key is
derived from `AM_SECRET`: a forged or altered address is refused from the address alone,
before any database lookup. The token is lowercase base32, because mail systems may change
the case of a local part, and short enough for the 64-character limit on one (RFC 5321).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

LOCAL_PREFIX = "reply-"
MAC_BYTES = 10  # 80 bits: a forger has one chance in 2**80 a guess
_KEY_PURPOSE = b"agency-messaging/reply-address/v1"
_VERSION = 1
MAX_LOCAL_PART = 64


class ReplyAddressError(ValueError):
    """An address that does not lead to a conversation; its message says why, for the
    sender's mail server to show them."""


class NotAReplyAddress(ReplyAddressError):
    """Not an address of the reply domain, or not shaped like a reply address."""


class ForgedAddress(ReplyAddressError):
    """The token's seal does not match: made up or altered."""


class ExpiredAddress(ReplyAddressError):
    """A genuine address past its expiry; it still says whose and which thread."""

    def __init__(self, message: str, token: ReplyToken) -> None:
        super().__init__(message)
        self.token = token


@dataclass(frozen=True, slots=True)
class ReplyToken:
    user_pk: int
    thread_id: int
    expires_at: int  # Unix time, to the hour


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varints(data: bytes, count: int) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
    if shift or len(values) != count:
        raise ValueError("wrong number of fields")
    return values


class ReplyAddresses:
    """Makes and reads the reply addresses of one domain."""

    def __init__(self, secret: str, domain: str, ttl_seconds: float) -> None:
        self.domain = domain.lower()
        self.ttl_seconds = ttl_seconds
        self._key = hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()

    def _seal(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def address(self, user_pk: int, thread_id: int, now: float | None = None) -> str:
        """The address for `user_pk` to reply into `thread_id`, valid for the TTL."""
        now = time.time() if now is None else now
        expires_hour = int((now + self.ttl_seconds) // 3600) + 1
        payload = bytes([_VERSION]) + _varint(user_pk) + _varint(thread_id) + _varint(expires_hour)
        token = base64.b32encode(payload + self._seal(payload)).decode().rstrip("=").lower()
        return f"{LOCAL_PREFIX}{token}@{self.domain}"

    def read(self, address: str, now: float | None = None) -> ReplyToken:
        """The token of a reply address; raises a ReplyAddressError subclass saying why not."""
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower().rstrip(".") != self.domain:
            raise NotAReplyAddress(f"This server takes replies for @{self.domain} only.")
        local = local.lower()
        if not local.startswith(LOCAL_PREFIX) or len(local) > MAX_LOCAL_PART:
            raise NotAReplyAddress("There is no such reply address.")
        encoded = local[len(LOCAL_PREFIX) :].upper()
        try:
            raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
        except (binascii.Error, ValueError):
            raise NotAReplyAddress("There is no such reply address.") from None
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(payload) < 4 or not hmac.compare_digest(mac, self._seal(payload)):
            raise ForgedAddress("This reply address is not valid: it was not made by this server.")
        if payload[0] != _VERSION:
            raise ForgedAddress("This reply address is of a version this server does not read.")
        try:
            user_pk, thread_id, expires_hour = _read_varints(payload[1:], 3)
        except ValueError:
            raise ForgedAddress("This reply address is not valid.") from None
        token = ReplyToken(user_pk, thread_id, expires_hour * 3600)
        if (time.time() if now is None else now) >= token.expires_at:
            raise ExpiredAddress(
                "This reply address has expired; answer from the conversation itself.", token
            )
        return token
