"""REST response bodies as pydantic models: /openapi.json documents them, and
tests/test_openapi.py validates real answers against them (strictly, no extra field).

The handlers still build plain dicts (server.domain.views writes the shared shapes); these
models only describe them. The docstrings and descriptions appear in the document.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt, StrictStr

from channels.protocol import MAX_BODY_CHARS, ClientId, HostId, Id, Seq
from server.domain.provisioning import ERASED_ID_PREFIX
from server.edge.schemas import Email, Name

UserKind = Literal["member", "agency"]
MessageBody = Annotated[StrictStr, Field(max_length=MAX_BODY_CHARS)]


class Output(BaseModel):
    # Exact shapes: a field the code adds without documenting it fails the tests.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- errors ---------------------------------------------------------------------------------


class ErrorDetail(Output):
    code: StrictStr = Field(description="Stable and machine-readable, e.g. `not_found`.")
    message: StrictStr = Field(description="A sentence for a developer reading logs.")


class Error(Output):
    """Every error of the API."""

    error: ErrorDetail


# --- people and messages --------------------------------------------------------------------


class AgencyRef(Output):
    """An agency user's agency."""

    id: HostId
    name: Name


# An erased person stays the author of its tombstones, under an id outside the host id
# syntax (docs/api.md, "Erasing a person"); the prefix holds no regex metacharacter.
ErasedUserId = Annotated[StrictStr, Field(pattern=f"^{ERASED_ID_PREFIX}[0-9]+$")]


class User(Output):
    id: HostId | ErasedUserId
    name: Name
    kind: UserKind
    agency: AgencyRef | None = Field(description="The agency of an agency user; null for a member.")


class Me(User):
    """The signed-in user and its org."""

    org: HostId


class Session(Output):
    """The user the session cookie now signs in."""

    user: User
    org: HostId


class Message(Output):
    """A post in a thread; a deleted one is a tombstone (`deleted`, `body` null)."""

    id: Id
    thread: Id
    candidate: HostId
    author: User
    body: MessageBody | None
    created_at: AwareDatetime
    deleted: bool
    client_id: ClientId | None


class MessagePage(Output):
    """A page of history, oldest first."""

    messages: list[Message]
    has_more: bool = Field(description="More messages exist in the paging direction.")


class Seen(Output):
    """How far someone else has read a thread ("seen by"): a member is shown each other
    person who sees the thread by name; an agency user only the hiring team as a whole."""

    reader: User | None = Field(
        description="Who read; null for the hiring team as a whole (shown to an agency user)."
    )
    team: bool = Field(
        description="The entry stands for the hiring team: how far its furthest member read."
    )
    message_id: Id = Field(description="The newest message of the thread read.")
    at: AwareDatetime | None = Field(
        description="When the marker moved there (UTC); null if it moved before that was recorded."
    )


class Thread(Output):
    id: Id
    candidate: HostId
    kind: Literal["agency", "private"]
    agency_user: User
    member: User | None = Field(description="The member of a private thread.")
    agency_user_linked: bool = Field(
        description="The agency user is still linked to the candidate. When false, the "
        "members still read the thread, but nobody may post in it (403 `forbidden`)."
    )
    unread: NonNegativeInt
    last_message: Message | None
    seen: list[Seen] = Field(
        description="How far the others (never the caller) have read the thread, furthest "
        "first; only people who see the thread now count."
    )


class ThreadList(Output):
    threads: list[Thread]


class Conversation(Thread):
    """A thread of the inbox: the contract's `Thread` with its candidate's name."""

    candidate_name: Name
    last_message: Message = Field(
        description="The thread's newest message (a tombstone if deleted): its id is the "
        "cursor of the next page."
    )


class ConversationPage(Output):
    """The caller's threads across candidates, newest activity first."""

    conversations: list[Conversation]
    has_more: bool = Field(description="Threads with older activity follow the last one.")


class UnreadCount(Output):
    """The thread's unread count after the marker moved."""

    unread: NonNegativeInt


# --- candidates -----------------------------------------------------------------------------


class CandidateSummary(Output):
    id: HostId
    name: Name
    unread: NonNegativeInt
    last_message: Message | None = Field(
        description="The newest message the caller may see on the candidate (a tombstone "
        "if deleted); null when there is none."
    )


class CandidateList(Output):
    candidates: list[CandidateSummary]
    has_more: bool


class Candidate(Output):
    """A candidate as the caller sees it."""

    id: HostId
    name: Name
    coordinator: User | None
    agency_users: list[User]
    private_contacts: list[User]
    unread: NonNegativeInt
    seq: Seq = Field(description="The candidate's newest event seq (for /ws resume).")


class UnreadCandidate(Output):
    candidate: HostId
    unread: NonNegativeInt
    latest: Message = Field(description="The candidate's newest unread message.")


class UnreadSummary(Output):
    """The blue dots: candidates with unread messages, newest activity first."""

    candidates: list[UnreadCandidate]


class Notifications(Output):
    muted: bool = Field(description="No alert emails at all.")
    muted_candidates: list[HostId]


# --- provisioning: each answer repeats the stored values ------------------------------------


class Org(Output):
    id: HostId
    name: Name


class Agency(Output):
    id: HostId
    name: Name


class ProvisionedUser(Output):
    id: HostId
    name: Name
    kind: UserKind
    email: Email
    agency: HostId | None
    time_zone: str


class ProvisionedCandidate(Output):
    id: HostId
    name: Name
    coordinator: HostId | None
    members: list[HostId]
    agency_users: list[HostId]


class AuditRecord(Output):
    """One entry of the audit trail; a field that does not apply to its action is null."""

    id: Id = Field(description="Grows with time: the cursor of the next page.")
    at: AwareDatetime
    action: Literal["message.deleted", "user.erased"]
    actor: HostId | None = Field(
        description="The user who acted (the author, for `message.deleted`); null: the host ATS."
    )
    user: HostId | None = Field(description="The person erased, for `user.erased`.")
    candidate: HostId | None
    thread: Id | None
    message: Id | None


class AuditPage(Output):
    """Audit records after the cursor, oldest first."""

    records: list[AuditRecord]
    has_more: bool = Field(description="More records follow the last one.")


# --- operations -----------------------------------------------------------------------------


class Health(Output):
    status: Literal["ok"]


class Ready(Output):
    status: Literal["ok"]
    checks: list[StrictStr] = Field(description="The checks that answered.")


class NotReady(Output):
    status: Literal["unavailable"]
    failing: list[StrictStr] = Field(description="The checks that did not answer in time.")
    error: ErrorDetail
