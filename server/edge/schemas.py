"""REST request bodies and parameters, validated with pydantic; their JSON Schemas also feed
/openapi.json. The value types they share with WebSocket frames come from `channels.protocol`."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)

from channels.protocol import Body, ClientId, HostId, Id, clean_text

# The `limit` bounds of the list endpoints (tests/test_openapi.py probes both ends), and the
# page sizes without one.
MAX_MESSAGE_PAGE = 100
MAX_CANDIDATE_PAGE = 500
MAX_AUDIT_PAGE = 500
MAX_CONVERSATION_PAGE = 100
DEFAULT_MESSAGE_PAGE = 50
DEFAULT_CANDIDATE_PAGE = 100
DEFAULT_AUDIT_PAGE = 100
DEFAULT_CONVERSATION_PAGE = 50
MessagePageLimit = Annotated[
    StrictInt, Field(ge=1, le=MAX_MESSAGE_PAGE, default=DEFAULT_MESSAGE_PAGE)
]
CandidatePageLimit = Annotated[
    StrictInt, Field(ge=1, le=MAX_CANDIDATE_PAGE, default=DEFAULT_CANDIDATE_PAGE)
]
AuditPageLimit = Annotated[StrictInt, Field(ge=1, le=MAX_AUDIT_PAGE, default=DEFAULT_AUDIT_PAGE)]
ConversationPageLimit = Annotated[
    StrictInt, Field(ge=1, le=MAX_CONVERSATION_PAGE, default=DEFAULT_CONVERSATION_PAGE)
]
# The orders of GET /api/v1/candidates (server.domain.inbox names them).
CandidateOrder = Annotated[Literal["id", "activity"], Field(default="id")]


def _name(value: str) -> str:
    value = clean_text(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# One plain address: no display name, no list, no comments or quoting, so that it can only
# ever name one mailbox (a comma or angle brackets would smuggle in a second recipient).
_EMAIL = re.compile(r"[\w!#$%&'*+/=?^`{|}~.-]+@[\w-]+(\.[\w-]+)+")


def _email(value: str) -> str:
    value = clean_text(value).strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("must be one email address, like name@example.com")
    return value


def _time_zone(value: str) -> str:
    value = value.strip()
    try:
        ZoneInfo(value)
    except (ValueError, ZoneInfoNotFoundError):
        raise ValueError("must be an IANA time zone name, like Europe/Paris or UTC") from None
    return value


Name = Annotated[StrictStr, Field(max_length=200), AfterValidator(_name)]
TimeZone = Annotated[StrictStr, Field(max_length=64), AfterValidator(_time_zone)]
Email = Annotated[StrictStr, Field(max_length=254), AfterValidator(_email)]


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
    time_zone: TimeZone = "UTC"


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
    message_id: Id


class NotificationsIn(Input):
    muted: StrictBool | None = None
    muted_candidates: list[HostId] | None = Field(default=None, max_length=10_000)
