"""docs/protocol.md against `channels.protocol`: every op with its fields, every server
frame type and every close code the module defines is documented, and the document names
none that the module lacks.

In the table of ops, a row names a frame as `CLIENT_FRAMES` does (an op, or `subscribe`
(batch)), and a field holding a list of objects is followed by their fields in parentheses.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from channels import protocol
from server.domain import errors

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def _table_rows(first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `first_header`."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _frame_name(cell: str) -> str:
    """`subscribe` (batch) → "subscribe (batch)"."""
    return cell.replace("`", "")


def _outside_parentheses(cell: str) -> str:
    return re.sub(r"\([^)]*\)", "", cell)


def _inside_parentheses(cell: str) -> dict[str, str]:
    """`candidates` (each: `candidate`, `after`?) → {"candidates": "each: `candidate`, ..."}."""
    return dict(re.findall(r"`(\w+)`\s*\(([^)]*)\)", cell))


def _documented_fields(cell: str) -> dict[str, Any]:
    """`candidate`, `after`? → {"candidate": True, "after": False} (True: required); a list
    of objects → the fields of its objects, as a dict."""
    fields: dict[str, Any] = {
        name: mark != "?" for name, mark in re.findall(r"`(\w+)`(\??)", _outside_parentheses(cell))
    }
    for name, inner in _inside_parentheses(cell).items():
        fields[name] = _documented_fields(inner)
    return fields


def _item_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model of a field holding a list of objects."""
    for arg in typing.get_args(info.annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _defined_fields(model: type[BaseModel]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name not in ("op", "ref"):
            item = _item_model(info)
            fields[name] = info.is_required() if item is None else _defined_fields(item)
    return fields


def test_every_op_is_documented_with_its_fields() -> None:
    documented = {_frame_name(row[0]): _documented_fields(row[1]) for row in _table_rows("op")}
    defined = {name: _defined_fields(frame) for name, frame in protocol.CLIENT_FRAMES.items()}
    assert documented == defined
    for name, frame in protocol.CLIENT_FRAMES.items():
        op = name.split()[0]
        assert frame.model_fields["op"].annotation == typing.Literal[op], name


def test_every_ack_carries_what_the_document_says() -> None:
    rows = {_frame_name(row[0]): row[2] for row in _table_rows("op")}
    rows.pop("ping")  # answered by a pong, not an ack
    documented = {
        name: tuple(re.findall(r"`(\w+)`", _outside_parentheses(cell)))
        for name, cell in rows.items()
    }
    assert documented == protocol.ACK_FIELDS
    built = {
        "subscribe": protocol.ack_subscribe(1, "c1", 7, False),
        protocol.SUBSCRIBE_BATCH: protocol.ack_subscribe_batch(1, []),
        "unsubscribe": protocol.ack_unsubscribe(1, "c1"),
        "send": protocol.ack_send(1, {"id": 1}),
        "read": protocol.ack_read(1, 0),
        "delete": protocol.ack_delete(1, 9),
    }
    for op, frame in built.items():
        fields = set(orjson.loads(frame)) - {"type", "ref"}
        assert fields == set(protocol.ACK_FIELDS[op]), op


def test_a_batch_ack_carries_per_candidate_what_the_document_says() -> None:
    (row,) = [r for r in _table_rows("op") if _frame_name(r[0]) == protocol.SUBSCRIBE_BATCH]
    cell = _inside_parentheses(row[2])["candidates"]
    documented = set(re.findall(r"`(\w+)`", cell))
    results = [
        protocol.subscribed("c1", 7, False),
        protocol.not_subscribed("c2", "not_found", "No such candidate."),
    ]
    ack = orjson.loads(protocol.ack_subscribe_batch(1, results))
    assert documented == {key for result in ack["candidates"] for key in result}
    assert ack["candidates"][1]["error"] == {"code": "not_found", "message": "No such candidate."}


def test_every_server_frame_type_is_documented_and_no_other() -> None:
    in_doc = set(re.findall(r'"type": "([\w.]+)"', DOC))
    in_doc |= {name for name in ("ack", "error", "pong") if f"`{name}`" in DOC}
    assert in_doc == set(protocol.SERVER_FRAME_TYPES)


def _examples(*frame_types: str) -> list[dict[str, Any]]:
    """The document's examples of these server frames: JSON lines of their own."""
    heads = tuple(f'{{"type": "{t}"' for t in frame_types)
    lines = (line.strip() for line in DOC.splitlines())
    return [orjson.loads(line) for line in lines if line.startswith(heads)]


def _shape(frame: dict[str, Any]) -> str:
    """A frame's keys, with the keys of the objects its lists hold (a list or null without
    objects in it shows none)."""
    fields = {
        key: _shape(value[0]) if isinstance(value, list) and value else None
        for key, value in frame.items()
    }
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()


def test_the_unread_frames_are_documented_with_the_fields_they_are_built_with() -> None:
    built = [
        protocol.unread("c1", 7, 2, 3, 5),
        protocol.unread_summary([("c1", 3)], 3),
        protocol.unread_batch([("c1", 7, 2, 3)], 5, None),
        protocol.unread_batch([("c1", 7, 2, 3)], 3, [("c1", 3)]),  # after a resync
    ]
    documented = _examples("unread", "unread.summary", "unread.batch")
    assert {_shape(e) for e in documented} == {_shape(orjson.loads(f)) for f in built}


def test_the_batch_frame_s_fields_are_documented_in_its_table() -> None:
    rows = {row[0].strip("`"): row[1] for row in _table_rows("`unread.batch` field")}
    frame = orjson.loads(protocol.unread_batch([("c1", 7, 2, 3)], 3, [("c1", 3)]))
    assert set(rows) == set(frame) - {"type"}
    for name in ("threads", "summary"):
        (each,) = re.findall(r"\(each: ([^)]*)\)", rows[name])
        assert set(re.findall(r"`(\w+)`", each)) == set(frame[name][0]), name


def test_protocol_2_is_asked_for_by_its_subprotocol() -> None:
    assert f"Sec-WebSocket-Protocol: {protocol.SUBPROTOCOL_V2}" in DOC
    assert f'new WebSocket(url, ["{protocol.SUBPROTOCOL_V2}"])' in DOC


def test_every_close_code_is_documented_with_its_reason() -> None:
    rows = {int(row[0]): row[1] for row in _table_rows("close code")}
    assert set(rows) == set(protocol.CLOSE_CODES)
    for code, why in protocol.CLOSE_CODES.items():
        assert rows[code].startswith(why), (code, rows[code], why)


def test_documented_error_codes_exist() -> None:
    codes = {cls.code for cls in _subclasses(errors.AppError)}
    documented = {row[0].strip("`") for row in _table_rows("code")}
    assert documented and documented <= codes


def _subclasses(cls: type) -> list[type]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


def test_the_thread_read_frames_are_documented_with_the_fields_they_are_built_with() -> None:
    named = protocol.thread_read("c1", 7, {"id": "ann"}, 42, "2026-12-01T15:04:05.123Z")
    team = protocol.thread_read("c1", 7, None, 42, "2026-12-01T15:04:05.123Z")
    documented = _examples(protocol.THREAD_READ)
    assert [(e["reader"] is None, e["team"]) for e in documented] == [(False, False), (True, True)]
    assert {_shape(e) for e in documented} == {_shape(orjson.loads(f)) for f in (named, team)}
    assert orjson.loads(team)["team"] is True and orjson.loads(named)["team"] is False
