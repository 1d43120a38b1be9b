"""docs/protocol.md against `channels.protocol`: every op with its fields, every server
frame type and every close code the module defines is documented, and the document names
none that the module lacks."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

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


def _documented_fields(cell: str) -> dict[str, bool]:
    """`candidate`, `after`? → {"candidate": True, "after": False} (True: required)."""
    return {name: mark != "?" for name, mark in re.findall(r"`(\w+)`(\??)", cell)}


def test_every_op_is_documented_with_its_fields() -> None:
    documented = {row[0].strip("`"): _documented_fields(row[1]) for row in _table_rows("op")}
    defined = {}
    for frame in protocol.CLIENT_FRAMES:
        fields = {
            name: info.is_required()
            for name, info in frame.model_fields.items()
            if name not in ("op", "ref")
        }
        defined[frame.model_fields["op"].annotation.__args__[0]] = fields  # type: ignore[union-attr]
    assert documented == defined


def test_every_ack_carries_what_the_document_says() -> None:
    documented = {
        row[0].strip("`"): tuple(re.findall(r"`(\w+)`", row[2])) for row in _table_rows("op")
    }
    documented.pop("ping")  # answered by a pong, not an ack
    assert documented == protocol.ACK_FIELDS
    built = {
        "subscribe": protocol.ack_subscribe(1, "c1", 7, False),
        "unsubscribe": protocol.ack_unsubscribe(1, "c1"),
        "send": protocol.ack_send(1, {"id": 1}),
        "read": protocol.ack_read(1, 0),
        "delete": protocol.ack_delete(1, 9),
    }
    for op, frame in built.items():
        fields = set(orjson.loads(frame)) - {"type", "ref"}
        assert fields == set(protocol.ACK_FIELDS[op]), op


def test_every_server_frame_type_is_documented_and_no_other() -> None:
    in_doc = set(re.findall(r'"type": "([\w.]+)"', DOC))
    in_doc |= {name for name in ("ack", "error", "pong") if f"`{name}`" in DOC}
    assert in_doc == set(protocol.SERVER_FRAME_TYPES)


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
