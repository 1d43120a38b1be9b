"""The WebSocket protocol: every frame in both directions, the close codes, and the value
types that REST shares with it. docs/protocol.md describes this module; a test holds the two
together.

Client frames are JSON objects with an `op` (and an optional `ref`, echoed in the answer);
`parse_client_frame` validates them. Server frames are built only by the functions below,
each encoded once however many sockets receive it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    WithJsonSchema,
)

# --- value types --------------------------------------------------------------------------

MAX_ID: Final = 2**63 - 1  # ids and seqs are stored as signed 64-bit integers
MAX_BODY_CHARS: Final = 5000
MAX_REF_CHARS: Final = 128
MAX_FRAME_BYTES: Final = 64 * 1024  # a larger frame closes the socket (1009)
# The WebSocket subprotocol a client offers (Sec-WebSocket-Protocol) to get protocol 2:
# the same frames, but the unread counts that changed in a window in one `unread.batch`
# frame instead of one `unread` frame per thread. Without it, protocol 1 as ever.
SUBPROTOCOL_V2: Final = "agency-messaging.v2"
# Candidates in one batch `subscribe`: a tab's worth, with a few KiB of frame at most.
MAX_BATCH_CANDIDATES: Final = 100
HOST_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the host ATS's ids of orgs, users...
HOST_ID_RULE: Final = f"must match {HOST_ID.pattern}"  # what an error says of a bad one


def clean_text(value: str) -> str:
    """Text that every store can hold: PostgreSQL text cannot hold NUL. (Lone surrogates,
    which UTF-8 cannot encode, are refused by pydantic's own string validation.)"""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _host_id(value: str) -> str:
    if not HOST_ID.fullmatch(value):
        raise ValueError(HOST_ID_RULE)
    return value


def _body(value: str) -> str:
    value = clean_text(value).strip()
    if not value:
        raise ValueError("must not be blank")
    if len(value) > MAX_BODY_CHARS:
        raise ValueError(f"must be at most {MAX_BODY_CHARS} characters")
    return value


def _client_id(value: str) -> str:
    value = clean_text(value)
    if any(ord(c) < 32 for c in value):
        raise ValueError("must not contain control characters")
    return value


# Checked by a function (for its error message); documented as the pattern it checks.
HostId = Annotated[
    StrictStr,
    AfterValidator(_host_id),
    WithJsonSchema({"type": "string", "pattern": f"^{HOST_ID.pattern}$"}),
]
Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
Seq = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
# The raw length bound (4 bytes a character) refuses a huge body before it is stripped.
Body = Annotated[StrictStr, Field(max_length=MAX_BODY_CHARS * 4), AfterValidator(_body)]
ClientId = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_client_id)]
Ref = Annotated[StrictStr, Field(max_length=MAX_REF_CHARS)] | StrictInt | None

# --- client frames ------------------------------------------------------------------------


class Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    ref: Ref = None


class Subscribe(Frame):
    """Follow a candidate's events; with `after`, first replay what came after that seq."""

    op: Literal["subscribe"]
    candidate: HostId
    after: Seq | None = None


class SubscribeItem(BaseModel):
    """One candidate of a batch `subscribe`."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    candidate: HostId
    after: Seq | None = None


def _distinct_candidates(items: list[SubscribeItem]) -> list[SubscribeItem]:
    if len({item.candidate for item in items}) < len(items):
        raise ValueError("must not name a candidate twice")
    return items


class SubscribeBatch(Frame):
    """Follow many candidates at once (a tab resuming all it shows): one ack, with a result
    per candidate."""

    op: Literal["subscribe"]
    candidates: Annotated[
        list[SubscribeItem],
        Field(min_length=1, max_length=MAX_BATCH_CANDIDATES),
        AfterValidator(_distinct_candidates),
    ]


class Unsubscribe(Frame):
    op: Literal["unsubscribe"]
    candidate: HostId


class Send(Frame):
    op: Literal["send"]
    thread: Id
    body: Body
    client_id: ClientId | None = None


class Read(Frame):
    op: Literal["read"]
    thread: Id
    message_id: Id


class Delete(Frame):
    op: Literal["delete"]
    message: Id


class Ping(Frame):
    op: Literal["ping"]


SUBSCRIBE_BATCH: Final = "subscribe (batch)"  # the batch form's name in docs/protocol.md


def op(raw: Any) -> Any:
    """Which frame a raw one is: its `op`, and the batch form of `subscribe` by its list."""
    if not isinstance(raw, dict):
        return None
    if raw.get("op") == "subscribe" and "candidates" in raw:
        return SUBSCRIBE_BATCH
    return raw.get("op")


# Every client frame by the name docs/protocol.md gives it (its op, but for the batch form).
CLIENT_FRAMES: Final = {
    "subscribe": Subscribe,
    SUBSCRIBE_BATCH: SubscribeBatch,
    "unsubscribe": Unsubscribe,
    "send": Send,
    "read": Read,
    "delete": Delete,
    "ping": Ping,
}
ClientFrame = Annotated[
    Annotated[Subscribe, Tag("subscribe")]
    | Annotated[SubscribeBatch, Tag(SUBSCRIBE_BATCH)]
    | Annotated[Unsubscribe, Tag("unsubscribe")]
    | Annotated[Send, Tag("send")]
    | Annotated[Read, Tag("read")]
    | Annotated[Delete, Tag("delete")]
    | Annotated[Ping, Tag("ping")],
    Discriminator(op),
]
_client_frames: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


def parse_client_frame(raw: dict[str, Any]) -> ClientFrame:
    """The validated frame; raises pydantic's ValidationError."""
    return _client_frames.validate_python(raw)


def echoable_ref(value: Any) -> Any:
    """The client's ref if it can be echoed (a short string or an integer), else None, so
    that even an invalid frame's error answers the right request when it can."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= MAX_REF_CHARS):
        return value
    return None


# --- server frames ------------------------------------------------------------------------

MESSAGE_CREATED: Final = "message.created"
MESSAGE_DELETED: Final = "message.deleted"
THREAD_READ: Final = "thread.read"
SERVER_FRAME_TYPES: Final = (
    "ack",
    "error",
    "pong",
    MESSAGE_CREATED,
    MESSAGE_DELETED,
    THREAD_READ,
    "unsubscribed",
    "candidate.updated",
    "unread",
    "unread.summary",
    "unread.batch",  # protocol 2 only
)


def _dumps(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def _ack(ref: Any, fields: dict[str, Any]) -> str:
    return _dumps({"type": "ack", "ref": ref, **fields})


# What each op's ack carries besides `type` and `ref` (docs/protocol.md, "ack carries").
ACK_FIELDS: Final = {
    "subscribe": ("candidate", "seq", "reset"),
    SUBSCRIBE_BATCH: ("candidates",),
    "unsubscribe": ("candidate",),
    "send": ("message",),
    "read": ("unread",),
    "delete": ("message_id",),
}


def ack_subscribe(ref: Any, candidate_id: str, seq: int, reset: bool) -> str:
    """`reset`: the log no longer reaches back to `after`; reload over REST."""
    return _ack(ref, {"candidate": candidate_id, "seq": seq, "reset": reset})


def subscribed(candidate_id: str, seq: int, reset: bool) -> dict[str, Any]:
    """One candidate's result in a batch `subscribe` ack: as the single form's ack says."""
    return {"candidate": candidate_id, "seq": seq, "reset": reset}


def not_subscribed(candidate_id: str, code: str, message: str) -> dict[str, Any]:
    """One candidate's result in a batch `subscribe` ack: the error its single form gets."""
    return {"candidate": candidate_id, "error": {"code": code, "message": message}}


def ack_subscribe_batch(ref: Any, results: list[dict[str, Any]]) -> str:
    """`results`: one per candidate asked for, in the frame's order (`subscribed` or
    `not_subscribed`)."""
    return _ack(ref, {"candidates": results})


def ack_unsubscribe(ref: Any, candidate_id: str) -> str:
    return _ack(ref, {"candidate": candidate_id})


def ack_send(ref: Any, message: dict[str, Any]) -> str:
    """`message`: the stored message, as REST answers it."""
    return _ack(ref, {"message": message})


def ack_read(ref: Any, unread: int) -> str:
    """`unread`: the thread's count for the caller after the read."""
    return _ack(ref, {"unread": unread})


def ack_delete(ref: Any, message_id: int) -> str:
    return _ack(ref, {"message_id": message_id})


def error(ref: Any, code: str, message: str) -> str:
    return _dumps({"type": "error", "ref": ref, "code": code, "message": message})


def pong(ref: Any) -> str:
    return _dumps({"type": "pong", "ref": ref})


def candidate_event(
    kind: str,
    candidate_id: str,
    seq: int,
    thread_id: int,
    message_id: int,
    message: dict[str, Any] | None,
) -> str:
    """A candidate event (`message.created` carries the message, `message.deleted` its id),
    built the same way for live fan-out and for replay."""
    body: dict[str, Any] = {
        "type": kind,
        "candidate": candidate_id,
        "seq": seq,
        "thread": thread_id,
    }
    if kind == MESSAGE_CREATED:
        body["message"] = message
    else:
        body["message_id"] = message_id
    return _dumps(body)


# `candidate_event` writes these keys first and in this order, so that a frame's head tells
# its thread without parsing the message it carries.
_EVENT_HEAD: Final = re.compile(
    r'\{"type":"message\.(?:created|deleted)","candidate":"[A-Za-z0-9_.-]{1,64}",'
    r'"seq":\d+,"thread":(\d+)[,}]'
)
_DELETED_HEAD: Final = f'{{"type":"{MESSAGE_DELETED}"'
_CREATED_HEAD: Final = f'{{"type":"{MESSAGE_CREATED}"'


def event_thread_id(frame: str) -> int | None:
    """The thread of a candidate event's frame (None for any other frame)."""
    head = _EVENT_HEAD.match(frame)
    return int(head.group(1)) if head else None


def deleted_message_id(frame: str) -> int | None:
    """The message a `message.deleted` frame deletes (None for any other frame)."""
    if not frame.startswith(_DELETED_HEAD):
        return None
    message_id = orjson.loads(frame).get("message_id")
    return message_id if isinstance(message_id, int) else None


def tombstone(frame: str, message_id: int) -> str | None:
    """The `message.created` frame of this message as the event log replays it once the
    message is deleted (no body); None if the frame is not that message's creation."""
    if not frame.startswith(_CREATED_HEAD) or f'"id":{message_id}' not in frame:
        return None  # (a cheap test first: this runs over many frames per deletion)
    body = orjson.loads(frame)
    message = body.get("message")
    if not isinstance(message, dict) or message.get("id") != message_id:
        return None
    body["message"] = {**message, "body": None, "deleted": True}
    return _dumps(body)


def thread_read(
    candidate_id: str, thread_id: int, reader: dict[str, Any] | None, message_id: int, at: str
) -> str:
    """Someone else's read marker moved ("seen by"): `reader` names them, or is None when
    the hiring team as a whole is meant (`team` true). No seq: it is not replayed."""
    return _dumps(
        {
            "type": THREAD_READ,
            "candidate": candidate_id,
            "thread": thread_id,
            "reader": reader,
            "team": reader is None,
            "message_id": message_id,
            "at": at,
        }
    )


def unsubscribed(candidate_id: str, reason: str) -> str:
    return _dumps({"type": "unsubscribed", "candidate": candidate_id, "reason": reason})


def candidate_updated(candidate_id: str) -> str:
    """Who sees the candidate changed: a view of its threads and people is to be reloaded."""
    return _dumps({"type": "candidate.updated", "candidate": candidate_id})


def unread(
    candidate_id: str, thread_id: int, unread: int, candidate_unread: int, total: int
) -> str:
    return _dumps(
        {
            "type": "unread",
            "candidate": candidate_id,
            "thread": thread_id,
            "unread": unread,
            "candidate_unread": candidate_unread,
            "total_unread": total,
        }
    )


def unread_summary(candidates: list[tuple[str, int]], total: int) -> str:
    """Every candidate with unread messages, after the user's counts could have drifted."""
    return _dumps(
        {
            "type": "unread.summary",
            "candidates": [{"candidate": c, "unread": n} for c, n in candidates],
            "total_unread": total,
        }
    )


def unread_batch(
    threads: Sequence[tuple[str, int, int, int]],
    total: int,
    summary: Sequence[tuple[str, int]] | None,
) -> str:
    """Protocol 2: every change of one batch in one frame. `threads`: (candidate, thread,
    unread, candidate_unread) of each thread whose count moved; `summary`: after the counts
    could have drifted, every candidate with unread messages (None otherwise)."""
    return _dumps(
        {
            "type": "unread.batch",
            "threads": [
                {"candidate": c, "thread": t, "unread": n, "candidate_unread": cn}
                for c, t, n, cn in threads
            ],
            "total_unread": total,
            "summary": None
            if summary is None
            else [{"candidate": c, "unread": n} for c, n in summary],
        }
    )


# --- close codes --------------------------------------------------------------------------
# RFC 6455 codes, and this server's own in the 4000-4999 private range.

CLOSE_NORMAL: Final = 1000
CLOSE_CLIENT_GONE: Final = 1006  # never sent: the client closed or vanished
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_IDLE: Final = 4000
CLOSE_SESSION_EXPIRED: Final = 4001  # also when the host ATS erases the user
CLOSE_TOO_SLOW: Final = 4008
CLOSE_TOO_MANY_CONNECTIONS: Final = 4029

# Every code a client may see, with why; 1007 and 1012 are sent by the WebSocket server
# underneath (uvicorn), not by this code.
CLOSE_CODES: Final = {
    CLOSE_NORMAL: "normal close",
    1007: "a text frame that is not valid UTF-8",
    CLOSE_TOO_BIG: f"a frame over {MAX_FRAME_BYTES // 1024} KiB",
    CLOSE_INTERNAL_ERROR: "an internal error",
    1012: "the server process is restarting",
    CLOSE_IDLE: "no frame within the idle timeout",
    CLOSE_SESSION_EXPIRED: "the session has ended: its token expired, or its user was erased",
    CLOSE_TOO_SLOW: "the client read too slowly and its send queue overflowed",
    CLOSE_TOO_MANY_CONNECTIONS: "too many open sockets for this user, or from this address",
}
