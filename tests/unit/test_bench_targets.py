"""The benchmark's targets table (bench/targets.py): which figure each target is judged on,
in which direction, and what a run that did not measure it shows.

`bench/` and `tests/` are separate layers that never import each other as packages, so the
module is loaded from its file; it imports only the standard library.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "targets.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_targets_under_test", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


T = _load()


def target(**fields: Any) -> Any:
    defaults: dict[str, Any] = {"id": "x", "what": "a figure", "limit": 10.0, "unit": "ms"}
    return T.Target(**{**defaults, **fields})


# --- PASS, FAIL, not measured --------------------------------------------------------------


@pytest.mark.parametrize(
    ("comparison", "value", "status"),
    [
        ("<=", 9.99, "PASS"),
        ("<=", 10.0, "PASS"),  # the limit itself meets it
        ("<=", 10.01, "FAIL"),
        (">=", 10.01, "PASS"),
        (">=", 10.0, "PASS"),
        (">=", 9.99, "FAIL"),
    ],
)
def test_the_comparison_decides_the_direction(comparison: str, value: float, status: str) -> None:
    outcome = T.judge(target(comparison=comparison, extract=lambda r: value), {})
    assert outcome.status == status
    assert outcome.figure.value == value


@pytest.mark.parametrize(
    "extract",
    [
        lambda r: None,
        lambda r: r["scenarios"]["storm"]["data"],  # a scenario the run left out
        lambda r: [][0],
        lambda r: None + 1,  # type: ignore[operator]
        lambda r: 1 / 0,
        lambda r: float("nan"),
        lambda r: T.Figure(float("nan"), "half a figure"),
    ],
)
def test_a_figure_the_run_lacks_is_not_measured_never_pass(extract: Any) -> None:
    outcome = T.judge(target(comparison="<=", extract=extract), {"scenarios": {}})
    assert outcome.status == "not measured"
    assert outcome.figure is None


def test_a_figure_without_a_limit_is_shown_for_information() -> None:
    outcome = T.judge(target(limit=None, unit="ops/s", extract=lambda r: 512.0), {})
    assert (outcome.status, outcome.figure.value) == ("info", 512.0)
    assert T.limit_text(outcome.target) == "—"
    unmeasured = T.judge(target(limit=None, extract=lambda r: None), {})
    assert unmeasured.status == "not measured"


def test_a_target_without_a_figure_says_where_it_is_checked() -> None:
    outcome = T.judge(T.Target("2", "Access cache", note="no figure of its own: see tests"), {})
    assert (outcome.status, outcome.figure) == ("no figure of its own: see tests", None)


def test_an_empty_run_passes_nothing() -> None:
    outcomes = T.evaluate({"scenarios": {}})
    assert [o.target.id for o in outcomes] == [t.id for t in T.TARGETS]
    assert {o.status for o in outcomes} <= {"not measured", "no figure of its own: see tests"}
    assert "0 PASS, 0 FAIL" in T.summary(outcomes)


def test_the_targets_are_declared_consistently() -> None:
    ids = [t.id for t in T.TARGETS]
    assert len(ids) == len(set(ids))
    for t in T.TARGETS:
        assert t.comparison in ("<=", ">=", "")
        assert (t.limit is None) == (t.comparison == ""), t.id
        assert t.extract is not None or t.note, t.id


# --- the figures, from results shaped as the scenarios write them ---------------------------


def step(rate: float, delivered: int, cpu: float, per_second: float, p99: float) -> dict[str, Any]:
    return {
        "rate": rate,
        "delivered": delivered,
        "expected": delivered,
        "server_cpu_seconds": cpu,
        "delivered_per_second": per_second,
        "p99_ms": p99,
    }


def fanout(am_best: bool = True, bare_error: bool = False) -> dict[str, Any]:
    bare_steps = [step(10, 10_000, 0.2, 5_000, 40), step(20, 20_000, 0.4, 10_000, 60)]
    am_steps = [step(10, 10_000, 0.3, 4_000, 80), step(20, 20_000, 0.9, 8_000, 150)]
    return {
        "receivers": 200,
        "systems": {
            "bare": {"error": "could not start", "steps": [], "best": None}
            if bare_error
            else {"steps": bare_steps, "best": bare_steps[1]},
            "am": {"steps": am_steps, "best": am_steps[0] if am_best else None},
        },
    }


def results(**scenarios: Any) -> dict[str, Any]:
    return {"quick": True, "scenarios": scenarios}


def outcome(id_: str, run: dict[str, Any]) -> Any:
    return next(o for o in T.evaluate(run) if o.target.id == id_)


def test_fan_out_cpu_is_a_ratio_to_the_bare_relay_over_every_step() -> None:
    found = outcome("4a", results(fanout=fanout()))
    # (0.3 + 0.9) s / 30,000 deliveries against (0.2 + 0.4) s / 30,000: twice the relay's.
    assert found.figure.value == pytest.approx(2.0)
    assert found.status == "FAIL"
    assert "40.0 vs 20.0 µs per delivery, 200 sockets" in found.figure.detail


def test_fan_out_rate_is_a_ratio_to_the_relay_and_none_sustained_fails() -> None:
    met = outcome("4b", results(fanout=fanout()))
    assert (met.figure.value, met.status) == (pytest.approx(0.4), "FAIL")
    none = outcome("4b", results(fanout=fanout(am_best=False)))
    assert (none.figure.value, none.status) == (0.0, "FAIL")
    assert "p99 over 100 ms at every rate" in none.figure.detail
    assert outcome("4b", results(fanout=fanout(bare_error=True))).status == "not measured"
    assert outcome("4a", results(fanout=fanout(bare_error=True))).status == "not measured"


def realistic(am_best: float | None, node_best: float | None, node_error: bool = False) -> Any:
    def system(best: float | None) -> dict[str, Any]:
        steps = [step(200, 800, 1.0, 800, 20), step(400, 1600, 2.0, 1600, 90)]
        return {"steps": steps, "best": {"rate": best} if best else None}

    node = {"error": "node not found", "steps": [], "best": None} if node_error else None
    return {
        "receivers": 400,
        "candidates": 100,
        "systems": {"am": system(am_best), "socketio_node": node or system(node_best)},
    }


@pytest.mark.parametrize(
    ("am", "node", "value", "status"),
    [
        (400.0, 400.0, 1.0, "PASS"),  # "at least Node's": equal meets it
        (800.0, 400.0, 2.0, "PASS"),
        (200.0, 400.0, 0.5, "FAIL"),
        (None, 400.0, 0.0, "FAIL"),
        (None, None, 0.0, "FAIL"),
    ],
)
def test_realistic_rate_against_node(
    am: float | None, node: float | None, value: float, status: str
) -> None:
    found = outcome("10b", results(realistic=realistic(am, node)))
    assert (found.figure.value, found.status) == (value, status)


def test_realistic_without_node_is_not_measured_and_p99_is_read_at_200() -> None:
    run = results(realistic=realistic(400.0, None, node_error=True))
    assert outcome("10b", run).status == "not measured"
    p99 = outcome("10a", run)
    assert (p99.figure.value, p99.status) == (20.0, "PASS")


def storm(caught_up_all: float | None, lost: int = 0) -> dict[str, Any]:
    return {
        "data": {
            "clients": 500,
            "caught_up": 480 if caught_up_all is None else 500,
            "from_reconnect": {"caught_up_all": caught_up_all},
            "messages_lost": lost,
            "messages_duplicated": 0,
            "messages_expected": 2_000,
        }
    }


def test_a_storm_where_some_never_caught_up_fails_rather_than_going_unmeasured() -> None:
    never = outcome("3c", results(storm=storm(None)))
    assert never.status == "FAIL"
    assert math.isinf(never.figure.value)
    assert T.measured_text(never) == "never (480 of 500 clients caught up)"
    assert outcome("3c", results(storm=storm(4.2))).status == "PASS"
    assert outcome("3d", results(storm=storm(4.2, lost=1))).status == "FAIL"
    assert outcome("3e", results(storm=storm(4.2))).status == "PASS"


def storage_row(database: str) -> dict[str, Any]:
    costs = {
        "send": {"sends": 200, "cpu_ms": 0.9, "sql": 1.0, "db_trips": 3.0, "broker_trips": 1.0},
        "pipelined": {"sends": 200, "ops_per_second": 640.0, "cpu_ms": 0.7, "sql": 1.0},
        "connect": {"users": 100, "cpu_ms": 2.5, "sql": 3.0, "db_trips": 9.0},
        "resume": {
            "candidates": 50,
            "missed_messages": 5,
            "cpu_ms": 110.0,
            "sql": 260.0,
            "db_trips": 580.0,
        },
    }
    if database == "sqlite":
        for row in costs.values():
            row.pop("db_trips", None)
            row.pop("broker_trips", None)
    return {
        "database": database,
        "messages": 100_000,
        "history_ms": {"p50": 1.0, "p99": 4.0 if database == "sqlite" else 6.0},
        "unread_by_user_ms": {"m0001": {"p50": 5.0, "p99": 12.0}, "m0000": {"p99": 99.0}},
        "inbox_by_user_ms": {
            "m0001": {"p50": 3.0, "p99": 8.0 if database == "sqlite" else 21.0},
            "m0000": {"p99": 1.0},
        },
        "baseline_me_ms": {"p50": 0.4, "p99": 0.9},
        "costs": costs,
    }


def storage() -> dict[str, Any]:
    return {
        "data": {
            "visible_candidates": {"m0000": 50, "m0001": 100, "a0000": 31},
            "lead_member": "m0001",
            "databases": [storage_row("sqlite"), storage_row("postgresql")],
        }
    }


def test_the_storage_figures_by_database() -> None:
    run = results(storage=storage())
    found = {o.target.id: o for o in T.evaluate(run)}
    assert (found["1a"].figure.value, found["1a"].status) == (3.0, "PASS")
    assert (found["1b"].figure.value, found["1b"].status) == (1.0, "PASS")
    assert found["1d"].figure.value == 0.9
    assert (found["3b"].figure.value, found["3b"].status) == (260.0, "FAIL")
    assert found["3b"].figure.detail == "580 database round trips"
    assert (found["6"].figure.value, found["6"].status) == (640.0, "info")
    assert (found["7a"].figure.value, found["7a"].status) == (9.0, "FAIL")
    assert (found["9a"].figure.value, found["9a"].status) == (0.4, "PASS")
    assert (found["9b"].status, found["9c"].status) == ("FAIL", "PASS")
    # The coordinator's unread summary, not the worst of every user's.
    assert (found["9d"].figure.value, found["9d"].status) == (12.0, "PASS")
    assert "coordinator of 100 candidates" in found["9d"].figure.detail
    # The inbox of the lead member (not the best of every user's), by database.
    assert (found["9f"].figure.value, found["9f"].status) == (21.0, "FAIL")
    assert (found["9g"].figure.value, found["9g"].status) == (8.0, "PASS")
    assert found["9f"].figure.detail == "user of 100 candidates, 100,000 messages"


def test_an_inbox_the_run_did_not_measure_is_not_measured() -> None:
    data = storage()
    for row in data["data"]["databases"]:
        del row["inbox_by_user_ms"]  # a run from before the inbox was measured
    found = {o.target.id: o for o in T.evaluate(results(storage=data))}
    assert (found["9f"].status, found["9g"].status) == ("not measured", "not measured")
    assert found["9d"].status == "PASS"


def test_unread_frames() -> None:
    unread = {
        "tabs": 15,
        "unread_frames": 900,
        "messages": 1_000,
        "unread_frames_per_message": 0.9,
        "most_unread_frames_in_50ms": 3,
    }
    run = results(realistic={"systems": {"am": {"steps": [], "unread": unread}}})
    assert (outcome("5a", run).status, outcome("5b", run).status) == ("FAIL", "PASS")
    assert outcome("5b", run).figure.detail == "900 frames, 1,000 messages"


# --- rendering -----------------------------------------------------------------------------


def test_the_table_is_markdown_with_aligned_columns() -> None:
    run = results(storage=storage(), fanout=fanout(), storm=storm(None))
    outcomes = T.evaluate(run)
    text = T.table(outcomes)
    lines = text.splitlines()
    header = lines[0].split("|")[1:-1]
    assert [cell.strip() for cell in header] == T.HEADER
    assert len({len(line) for line in lines}) == 1  # padded: aligned on a console too
    assert len(lines) == 2 + len(T.TARGETS)
    row = next(line for line in lines if line.startswith("| 1a "))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells == [
        "1a",
        "Send: database round trips per send (PostgreSQL)",
        "≤ 3 round trips",
        "3 round trips (1 SQL statement)",
        "PASS",
    ]
    markdown = T.markdown(outcomes, quick=True)
    assert markdown.startswith("## Targets\n")
    assert "QUICK run" in markdown
    assert text in markdown


def test_limits_and_figures_read_naturally() -> None:
    assert T.limit_text(target(comparison="<=", limit=1.5)) == "≤ 1.5 ms"
    assert T.limit_text(target(comparison=">=", limit=0.7, unit=T.TIMES)) == f"≥ 0.7{T.TIMES}"
    assert T.limit_text(target(comparison="<=", limit=1, unit="round trips")) == "≤ 1 round trip"
    assert T.number(0.4, T.TIMES) == f"0.40{T.TIMES}"
    assert T.number(1234.5, "ops/s") == "1,234 ops/s"
    assert T.number(12.345, "ms") == "12.3 ms"
    assert T.number(0.123, "ms") == "0.12 ms"
    assert T.number(3.0, "round trips") == "3 round trips"
    assert T.number(6.0, "ms") == "6.00 ms"  # a time keeps its decimals
    assert T.number(640.0, "ops/s") == "640 ops/s"
    assert T.number(math.inf, "s") == "never"


def test_the_json_keeps_each_verdict() -> None:
    outcomes = T.evaluate(results(storm=storm(None), fanout=fanout()))
    rows = {row["id"]: row for row in json.loads(json.dumps(T.as_json(outcomes)))}
    assert rows["3c"]["status"] == "FAIL" and rows["3c"]["value"] is None  # never: no number
    assert rows["4a"] == {
        "id": "4a",
        "what": rows["4a"]["what"],
        "limit": 1.3,
        "unit": T.TIMES,
        "comparison": "<=",
        "value": 2.0,
        "detail": "40.0 vs 20.0 µs per delivery, 200 sockets",
        "status": "FAIL",
    }
    assert rows["1a"]["status"] == "not measured" and rows["1a"]["value"] is None
