"""Request bodies, validated with pydantic; their JSON Schemas also feed /openapi.json."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from server.auth import HOST_ID

MAX_BODY_CHARS = 5000


def _clean_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates are not encodable as UTF-8.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _host_id(value: str) -> str:
    if not HOST_ID.fullmatch(value):
        raise ValueError("must match [A-Za-z0-9_.-]{1,64}")
    return value


def _name(value: str) -> str:
    value = _clean_text(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# One plain address: no display name, no list, no comments or quoting, so that it can only
# ever name one mailbox (a comma or angle brackets would smuggle in a second recipient).
_EMAIL = re.compile(r"[\w!#$%&'*+/=?^`{|}~.-]+@[\w-]+(\.[\w-]+)+")


def _email(value: str) -> str:
    value = _clean_text(value).strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("must be one email address, like name@example.com")
    return value


def _body(value: str) -> str:
    value = _clean_text(value).strip()
    if not value:
        raise ValueError("must not be blank")
    if len(value) > MAX_BODY_CHARS:
        raise ValueError(f"must be at most {MAX_BODY_CHARS} characters")
    return value


def _client_id(value: str) -> str:
    value = _clean_text(value)
    if any(ord(c) < 32 for c in value):
        raise ValueError("must not contain control characters")
    return value


HostId = Annotated[StrictStr, AfterValidator(_host_id)]
Name = Annotated[StrictStr, Field(max_length=200), AfterValidator(_name)]
Email = Annotated[StrictStr, Field(max_length=254), AfterValidator(_email)]
Body = Annotated[StrictStr, Field(max_length=MAX_BODY_CHARS * 4), AfterValidator(_body)]
ClientId = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_client_id)]
MessageId = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


class Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SessionIn(Input):
    token: StrictStr = Field(max_length=8192)


class NamedIn(Input):
    name: Name


class UserIn(Input):
    name: Name
    email: Email
    kind: Literal["member", "agency"]
    agency: HostId | None = None


class CandidateIn(Input):
    name: Name
    coordinator: HostId | None = None
    members: list[HostId] = Field(default_factory=list, max_length=10_000)
    agency_users: list[HostId] = Field(default_factory=list, max_length=1_000)


class OpenThreadIn(Input):
    private: StrictBool = False
    agency_user: HostId | None = None
    member: HostId | None = None


class SendIn(Input):
    body: Body
    client_id: ClientId | None = None


class ReadIn(Input):
    message_id: MessageId


class NotificationsIn(Input):
    muted: StrictBool | None = None
    muted_candidates: list[HostId] | None = Field(default=None, max_length=10_000)
