"""What travels through the broker between server processes.

An envelope is one line of JSON header, a newline, then (for events) the client frame as
it will be sent, encoded once by the publisher and passed through untouched (for a read,
its two frames, one a line).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

# Every process follows this channel: the events of users (unread counts, sign-outs).
UNREAD_CHANNEL = "am.unread"

# What moved a user's unread counts. Only a new message is applied as a delta; any other
# change makes the receiving process read the user's counts again.
UNREAD_CREATED = "created"
UNREAD_CHANGED = "changed"  # a read, a delete, or an access change (thread 0)


def candidate_channel(candidate_pk: int) -> str:
    return f"am.cand.{candidate_pk}"


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    candidate_pk: int
    seq: int
    audience: frozenset[int]
    frame: str


@dataclass(frozen=True, slots=True)
class ReadEnvelope:
    """A read marker moved (not an event of the log: no seq). Built once per read: users of
    `named` get `named_frame`, users of `team` get `team_frame` ("" when nobody does)."""

    candidate_pk: int
    named: frozenset[int]
    team: frozenset[int]
    named_frame: str
    team_frame: str


@dataclass(frozen=True, slots=True)
class RevokedEnvelope:
    candidate_pk: int
    user_pks: frozenset[int]
    erased: bool


@dataclass(frozen=True, slots=True)
class UnreadEnvelope:
    org_pk: int
    candidate_pk: int
    thread_id: int  # 0: the users' access to the candidate changed
    user_pks: frozenset[int]
    change: str = UNREAD_CHANGED
    message_id: int = 0  # the new message, for UNREAD_CREATED


@dataclass(frozen=True, slots=True)
class SignedOutEnvelope:
    """This user's sockets close, on every process (on UNREAD_CHANNEL)."""

    org_pk: int
    user_pk: int


Envelope = EventEnvelope | ReadEnvelope | RevokedEnvelope | UnreadEnvelope | SignedOutEnvelope


def encode(message: Envelope) -> bytes:
    if isinstance(message, EventEnvelope):
        header = {
            "k": "e",
            "c": message.candidate_pk,
            "s": message.seq,
            "a": sorted(message.audience),
        }
        return orjson.dumps(header) + b"\n" + message.frame.encode()
    if isinstance(message, ReadEnvelope):
        header = {
            "k": "t",
            "c": message.candidate_pk,
            "n": sorted(message.named),
            "t": sorted(message.team),
        }
        # Encoded JSON holds no raw newline: the two frames follow the header, one a line.
        frames = f"{message.named_frame}\n{message.team_frame}".encode()
        return orjson.dumps(header) + b"\n" + frames
    if isinstance(message, RevokedEnvelope):
        header = {
            "k": "r",
            "c": message.candidate_pk,
            "u": sorted(message.user_pks),
            "x": message.erased,
        }
        return orjson.dumps(header)
    if isinstance(message, SignedOutEnvelope):
        return orjson.dumps({"k": "s", "o": message.org_pk, "u": message.user_pk})
    header = {
        "k": "u",
        "o": message.org_pk,
        "c": message.candidate_pk,
        "t": message.thread_id,
        "u": sorted(message.user_pks),
        "x": message.change,
        "m": message.message_id,
    }
    return orjson.dumps(header)


def decode(payload: bytes) -> Envelope | None:
    head, _, rest = payload.partition(b"\n")
    try:
        header = orjson.loads(head)
        kind = header["k"]
        if kind == "e":
            return EventEnvelope(header["c"], header["s"], frozenset(header["a"]), rest.decode())
        if kind == "t":
            named, _, team = rest.decode().partition("\n")
            return ReadEnvelope(
                header["c"], frozenset(header["n"]), frozenset(header["t"]), named, team
            )
        if kind == "r":
            return RevokedEnvelope(header["c"], frozenset(header["u"]), bool(header["x"]))
        if kind == "s":
            return SignedOutEnvelope(int(header["o"]), int(header["u"]))
        if kind == "u":
            return UnreadEnvelope(
                header["o"],
                header["c"],
                header["t"],
                frozenset(header["u"]),
                header.get("x", UNREAD_CHANGED),
                int(header.get("m", 0)),
            )
    except (orjson.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return None
