"""User tokens (JWT HS256 shared with the host ATS), the session cookie and the service token."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping

import jwt

from channels.protocol import HOST_ID
from server.domain.errors import Forbidden, Unauthorized
from server.domain.facts import Principal, load_principal
from storage.database import Database

SESSION_COOKIE = "am_session"
_LEEWAY_SECONDS = 30


def decode_user_token(secret: str, token: str) -> tuple[str, str, int]:
    """Returns (org, user, exp) of a valid token, or raises Unauthorized."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "org", "sub"]},
            leeway=_LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired.") from None
    except jwt.PyJWTError:
        raise Unauthorized("The token is not valid.") from None
    org, sub, exp = claims.get("org"), claims.get("sub"), claims.get("exp")
    if not (isinstance(org, str) and HOST_ID.fullmatch(org)):
        raise Unauthorized("The token's org claim is not a valid id.")
    if not (isinstance(sub, str) and HOST_ID.fullmatch(sub)):
        raise Unauthorized("The token's sub claim is not a valid id.")
    if not isinstance(exp, int | float):
        raise Unauthorized("The token's exp claim is not a time.")
    return org, sub, int(exp)


def make_user_token(secret: str, org: str, user: str, ttl_seconds: int = 3600) -> str:
    """What the host ATS does to sign its users in (used by the demo and the tests)."""
    return jwt.encode(
        {"org": org, "sub": user, "exp": int(time.time()) + ttl_seconds}, secret, algorithm="HS256"
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    return token.strip()


async def authenticate_token(db: Database, secret: str, token: str) -> tuple[Principal, int]:
    org, user, exp = decode_user_token(secret, token)
    async with db.reading() as conn:
        principal = await load_principal(conn, org, user)
    if principal is None:
        raise Unauthorized("The token's user is not provisioned.")
    return principal, exp


def check_service_token(expected: str, headers: Mapping[str, str]) -> None:
    token = bearer_token(headers)
    if token is None:
        raise Unauthorized("The provisioning API needs the service token.")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        # A well-formed user token is a valid credential for the wrong API: 403, not 401.
        raise Forbidden("The provisioning API takes the service token only.")
