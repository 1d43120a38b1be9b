"""Input validation at the schema level, without HTTP: the request models of REST and the
client frames of the WebSocket protocol accept exactly what the contract allows. The
endpoint tests (tests/test_api_input.py, tests/test_hostile.py) check that each endpoint
uses these models and stores nothing on a refusal."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from channels import protocol
from server.edge.schemas import CandidateIn, OpenThreadIn, ReadIn, SendIn, UserIn

MAX_ID = protocol.MAX_ID


def _refused(model: type[BaseModel], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(data)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   ",
        " \t\r\n \u00a0\u2003 ",
        "x" * 5001,
        "  " + "y" * 5001 + "  ",
        "hello\x00world",
        "\ud800",
        42,
        4.2,
        True,
        None,
        ["hello"],
        {"text": "hello"},
    ],
)
def test_a_message_body_must_be_non_blank_text_of_at_most_5000_characters(body: Any) -> None:
    _refused(SendIn, {"body": body})
    _refused(protocol.Send, {"op": "send", "thread": 1, "body": body})


def test_a_body_is_trimmed_and_counted_in_characters() -> None:
    assert SendIn.model_validate({"body": "  hi there  "}).body == "hi there"
    assert len(SendIn.model_validate({"body": "é" * 5000}).body) == 5000
    assert SendIn.model_validate({"body": " " + "x" * 5000 + " "}).body == "x" * 5000


@pytest.mark.parametrize("client_id", ["", 7, "a\x01b", "x" * 129, "\ud800"])
def test_a_client_id_is_short_printable_text(client_id: Any) -> None:
    _refused(SendIn, {"body": "hello", "client_id": client_id})


@pytest.mark.parametrize("value", [0, -1, MAX_ID + 1, 2**64, "7", 1.0, True, None])
def test_ids_are_positive_64_bit_integers(value: Any) -> None:
    _refused(ReadIn, {"message_id": value})
    _refused(protocol.Read, {"op": "read", "thread": value, "message_id": 1})
    _refused(protocol.Delete, {"op": "delete", "message": value})


def test_the_largest_id_is_accepted() -> None:
    assert ReadIn.model_validate({"message_id": MAX_ID}).message_id == MAX_ID
    frame = protocol.parse_client_frame({"op": "subscribe", "candidate": "c1", "after": MAX_ID})
    assert isinstance(frame, protocol.Subscribe) and frame.after == MAX_ID


@pytest.mark.parametrize("candidate", ["bad$id", "bad id", "x" * 65, "caf\u00e9", "a,b", "", 5])
def test_host_ids_are_short_plain_names(candidate: Any) -> None:
    _refused(protocol.Subscribe, {"op": "subscribe", "candidate": candidate})
    _refused(OpenThreadIn, {"agency_user": candidate})


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "admin"},
        {"kind": "Member"},
        {"kind": None},
        {"email": "zed.example.com"},
        {"email": ""},
        {"email": 7},
        {"email": "z@x.example\r\nBcc: all@x.example"},
        {"email": "Zed <z@x.example>"},
        {"email": "a@x.example, b@x.example"},
        {"name": " "},
        {"name": "x" * 201},
        {"agency": "a g"},
    ],
)
def test_a_user_needs_a_name_one_plain_address_and_a_kind(fields: dict[str, Any]) -> None:
    good = {"name": "Zed", "email": "zed@x.example", "kind": "member"}
    assert UserIn.model_validate(good).email == "zed@x.example"
    _refused(UserIn, {**good, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"members": "mem"},
        {"members": [5]},
        {"members": ["m m"]},
        {"agency_users": None},
        {"coordinator": 1},
        {"name": ""},
    ],
)
def test_a_candidate_has_a_name_and_lists_of_host_ids(fields: dict[str, Any]) -> None:
    good = {"name": "Carl", "coordinator": "coord", "members": ["mem"], "agency_users": []}
    assert CandidateIn.model_validate(good).members == ["mem"]
    _refused(CandidateIn, {**good, **fields})


@pytest.mark.parametrize(
    "frame",
    [
        {"op": "frobnicate"},
        {},
        {"op": "subscribe"},
        {"op": "subscribe", "candidate": "c1", "after": -1},
        {"op": "send", "thread": 1},
        {"op": "read", "thread": 1},
        {"op": "delete"},
        {"op": "ping", "ref": "x" * 129},
        {"op": "ping", "ref": 1.5},
    ],
)
def test_malformed_frames_are_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        protocol.parse_client_frame(frame)


def test_unknown_fields_are_ignored_and_refs_echoed_when_they_can_be() -> None:
    frame = protocol.parse_client_frame({"op": "ping", "ref": 7, "extra": [1, 2]})
    assert isinstance(frame, protocol.Ping) and frame.ref == 7
    assert protocol.echoable_ref("r" * 128) == "r" * 128
    assert protocol.echoable_ref("r" * 129) is None
    assert protocol.echoable_ref(True) is None
    assert protocol.echoable_ref({"a": 1}) is None
