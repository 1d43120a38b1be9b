"""The performance targets, as one declarative list, and the table that says where each stands.

Each target has an id (the issue's numbering), what is measured, a limit with its unit and
direction, and a function that finds the figure in a run's results (the dictionary written to
bench/results/results.json). A figure the run did not measure (a scenario left out with
`--only`, a peer that could not run) shows "not measured", never PASS. A target with no limit
shows its figure for information; one with no figure of its own says where it is checked.

This module imports only the standard library, so that its logic can be tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PASS, FAIL, NOT_MEASURED, INFO = "PASS", "FAIL", "not measured", "info"
TIMES = "×"  # noqa: RUF001  (the unit of a ratio)


@dataclass(frozen=True)
class Figure:
    value: float
    detail: str = ""  # how it was measured, or the figures behind a ratio


Extract = Callable[[dict[str, Any]], "Figure | float | None"]


@dataclass(frozen=True)
class Target:
    id: str
    what: str
    limit: float | None = None
    unit: str = ""
    comparison: str = ""  # "<=" or ">="; "" for a figure shown for information
    extract: Extract | None = None
    note: str = ""  # the result shown when there is no figure (extract is None)


@dataclass(frozen=True)
class Outcome:
    target: Target
    figure: Figure | None
    status: str


# --- finding figures in the results -------------------------------------------------------


def _scenario(results: dict[str, Any], name: str) -> dict[str, Any]:
    """A scenario's results; KeyError (so: not measured) when the run left it out."""
    found: dict[str, Any] = results["scenarios"][name]
    return found


def _storage(results: dict[str, Any], database: str) -> dict[str, Any]:
    for row in _scenario(results, "storage")["data"]["databases"]:
        if row["database"] == database:
            found: dict[str, Any] = row
            return found
    raise KeyError(database)


def _cost(
    database: str, operation: str, key: str, detail: Callable[[dict[str, Any]], str]
) -> Extract:
    def extract(results: dict[str, Any]) -> Figure:
        row = _storage(results, database)["costs"][operation]
        return Figure(float(row[key]), detail(row))

    return extract


def _lead(results: dict[str, Any]) -> str:
    """The lead member of the storage data set: the coordinator with the most candidates."""
    data = _scenario(results, "storage")["data"]
    visible: dict[str, int] = data["visible_candidates"]
    lead: str = data.get("lead_member") or max(visible, key=lambda user: visible[user])
    return lead


def _history_p99(database: str) -> Extract:
    def extract(results: dict[str, Any]) -> Figure:
        row = _storage(results, database)
        return Figure(float(row["history_ms"]["p99"]), f"{row['messages']:,} messages")

    return extract


def _unread_p99(database: str) -> Extract:
    def extract(results: dict[str, Any]) -> Figure:
        row, lead = _storage(results, database), _lead(results)
        seen = _scenario(results, "storage")["data"]["visible_candidates"][lead]
        return Figure(
            float(row["unread_by_user_ms"][lead]["p99"]),
            f"coordinator of {seen:,} candidates, {row['messages']:,} messages",
        )

    return extract


def _inbox_p99(database: str) -> Extract:
    def extract(results: dict[str, Any]) -> Figure:
        row, lead = _storage(results, database), _lead(results)
        seen = _scenario(results, "storage")["data"]["visible_candidates"][lead]
        return Figure(
            float(row["inbox_by_user_ms"][lead]["p99"]),
            f"user of {seen:,} candidates, {row['messages']:,} messages",
        )

    return extract


def _me_p50(results: dict[str, Any]) -> Figure:
    row = _storage(results, "postgresql")
    return Figure(float(row["baseline_me_ms"]["p50"]), "round trip over loopback")


def _storm(key: str) -> Extract:
    def extract(results: dict[str, Any]) -> Figure:
        data = _scenario(results, "storm")["data"]
        return Figure(float(data[key]), f"of {data['messages_expected']:,} deliveries")

    return extract


def _storm_caught_up(results: dict[str, Any]) -> Figure:
    data = _scenario(results, "storm")["data"]
    seconds = data["from_reconnect"]["caught_up_all"]
    clients = f"{data['clients']:,} clients"
    if seconds is None:  # some never caught up: the target is missed, not unmeasured
        return Figure(math.inf, f"{data['caught_up']:,} of {clients} caught up")
    return Figure(float(seconds), clients)


def _steps_cpu_us(system: dict[str, Any]) -> float:
    """Server CPU µs per delivery over every step of a system (None-safe: raises)."""
    steps = system["steps"]
    delivered = sum(s["delivered"] for s in steps)
    if system.get("error") or not delivered:
        raise KeyError("no deliveries")
    return float(sum(s["server_cpu_seconds"] for s in steps) * 1e6 / delivered)


def _fanout_cpu_ratio(results: dict[str, Any]) -> Figure:
    fanout = _scenario(results, "fanout")
    am = _steps_cpu_us(fanout["systems"]["am"])
    bare = _steps_cpu_us(fanout["systems"]["bare"])
    return Figure(
        am / bare, f"{am:.1f} vs {bare:.1f} µs per delivery, {fanout['receivers']:,} sockets"
    )


def _fanout_rate_ratio(results: dict[str, Any]) -> Figure | None:
    fanout = _scenario(results, "fanout")
    am, bare = fanout["systems"]["am"], fanout["systems"]["bare"]
    if am.get("error") or bare.get("error") or not bare.get("best"):
        return None  # no limit to compare with
    limit = float(bare["best"]["delivered_per_second"])
    sockets = f"{fanout['receivers']:,} sockets"
    if not am.get("best"):
        return Figure(0.0, f"p99 over 100 ms at every rate; bare {limit:,.0f}/s, {sockets}")
    rate = float(am["best"]["delivered_per_second"])
    return Figure(rate / limit, f"{rate:,.0f} vs {limit:,.0f} deliveries/s, {sockets}")


def _unread(key: str, detail: Callable[[dict[str, Any]], str]) -> Extract:
    def extract(results: dict[str, Any]) -> Figure:
        unread = _scenario(results, "realistic")["systems"]["am"]["unread"]
        return Figure(float(unread[key]), detail(unread))

    return extract


def _observed_tabs(unread: dict[str, Any]) -> str:
    """The tabs measured (they offer protocol 2), and protocol 1's figure beside them."""
    detail = f"{unread['tabs']} observed tabs"
    protocol_1 = unread.get("protocol_1")
    if protocol_1 and protocol_1.get("tabs"):
        detail += f"; protocol 1: {protocol_1['most_unread_frames_in_50ms']}"
    return detail


def _realistic_p99(results: dict[str, Any]) -> Figure | None:
    realistic = _scenario(results, "realistic")
    step = next((s for s in realistic["systems"]["am"]["steps"] if s["rate"] == 200.0), None)
    if step is None:
        return None
    return Figure(
        float(step["p99_ms"]),
        f"{realistic['receivers']:,} sockets over {realistic['candidates']:,} candidates",
    )


def _realistic_rate_ratio(results: dict[str, Any]) -> Figure | None:
    systems = _scenario(results, "realistic")["systems"]
    am, node = systems["am"], systems["socketio_node"]
    if am.get("error") or node.get("error") or not node.get("steps"):
        return None
    am_rate = float(am["best"]["rate"]) if am.get("best") else 0.0
    node_rate = float(node["best"]["rate"]) if node.get("best") else 0.0
    tried = ", ".join(f"{s['rate']:g}" for s in node["steps"])
    detail = f"{am_rate:g} vs {node_rate:g} msg/s; rates tried {tried}"
    if node_rate == 0.0:
        return Figure(0.0, f"neither sustained a rate; rates tried {tried}")
    return Figure(am_rate / node_rate, detail)


def _idle(results: dict[str, Any]) -> Figure:
    data = _scenario(results, "idle")["data"]
    floor = data.get("bare", {}).get("kib_per_connection")
    detail = f"{data['am']['connections']:,} sockets" + (
        f"; bare endpoint {floor:.1f} KiB" if floor is not None else ""
    )
    return Figure(float(data["am"]["kib_per_connection"]), detail)


def _count(value: float, what: str) -> str:
    return f"{value:g} {what}" + ("" if value == 1 else "s")


def _statements(row: dict[str, Any]) -> str:
    return _count(row["sql"], "SQL statement")


def _trips(row: dict[str, Any]) -> str:
    trips = row.get("db_trips")
    return "" if trips is None else _count(trips, "database round trip")


def _resume(row: dict[str, Any]) -> str:
    return f"{row['candidates']} candidates, {row['missed_messages']} missed messages"


# --- the targets --------------------------------------------------------------------------

TARGETS: list[Target] = [
    Target(
        "1a",
        "Send: database round trips per send (PostgreSQL)",
        3,
        "round trips",
        "<=",
        _cost("postgresql", "send", "db_trips", _statements),
    ),
    Target(
        "1b",
        "Send: Redis round trips per send",
        1,
        "round trips",
        "<=",
        _cost("postgresql", "send", "broker_trips", lambda row: "PostgreSQL + Redis"),
    ),
    Target(
        "1c",
        "Send: server CPU per send (PostgreSQL)",
        1.5,
        "ms",
        "<=",
        _cost("postgresql", "send", "cpu_ms", lambda row: f"{row['sends']} sends in a row"),
    ),
    Target(
        "1d",
        "Send: server CPU per send (SQLite)",
        1.0,
        "ms",
        "<=",
        _cost("sqlite", "send", "cpu_ms", lambda row: f"{row['sends']} sends in a row"),
    ),
    Target("2", "Access cache", note="no figure of its own: see tests"),
    Target(
        "3a",
        "Resume: server CPU for a tab back to 50 candidates (PostgreSQL)",
        20,
        "ms",
        "<=",
        _cost("postgresql", "resume", "cpu_ms", _resume),
    ),
    Target(
        "3b",
        "Resume: SQL statements for a tab back to 50 candidates (PostgreSQL)",
        5,
        "statements",
        "<=",
        _cost("postgresql", "resume", "sql", _trips),
    ),
    Target(
        "3c",
        "Reconnect storm (2,000 clients): 100% caught up after reconnecting",
        5,
        "s",
        "<=",
        _storm_caught_up,
    ),
    Target("3d", "Reconnect storm: messages lost", 0, "", "<=", _storm("messages_lost")),
    Target(
        "3e", "Reconnect storm: messages duplicated", 0, "", "<=", _storm("messages_duplicated")
    ),
    Target(
        "4a",
        "Fan-out (1,000 sockets): server CPU per delivery, to a bare websockets.broadcast()",
        1.3,
        TIMES,
        "<=",
        _fanout_cpu_ratio,
    ),
    Target(
        "4b",
        "Fan-out (1,000 sockets): deliveries/s at p99 ≤ 100 ms, to a bare websockets.broadcast()",
        0.7,
        TIMES,
        ">=",
        _fanout_rate_ratio,
    ),
    Target(
        "5a",
        "Unread: most unread frames one tab got within 50 ms (realistic load, protocol 2)",
        1,
        "frames",
        "<=",
        _unread("most_unread_frames_in_50ms", _observed_tabs),
    ),
    Target(
        "5b",
        "Unread: unread frames per message delivered (realistic load, protocol 2)",
        1,
        "frames",
        "<=",
        _unread(
            "unread_frames_per_message",
            lambda u: f"{u['unread_frames']:,} frames, {u['messages']:,} messages",
        ),
    ),
    Target(
        "6",
        "Pipelined ops: sends per second on one socket (PostgreSQL)",
        unit="ops/s",
        extract=_cost(
            "postgresql",
            "pipelined",
            "ops_per_second",
            lambda row: f"{row['sends']} sends written at once",
        ),
    ),
    Target(
        "7a",
        "Connect: database round trips for a user new to the process (PostgreSQL)",
        2,
        "round trips",
        "<=",
        _cost("postgresql", "connect", "db_trips", _statements),
    ),
    Target(
        "7b",
        "Connect: server CPU for a user new to the process (PostgreSQL)",
        2,
        "ms",
        "<=",
        _cost("postgresql", "connect", "cpu_ms", lambda row: f"{row['users']} users"),
    ),
    Target("8", "Idle: memory per subscribed idle socket", 30, "KiB", "<=", _idle),
    Target("9a", "HTTP: `/api/v1/me` p50 (PostgreSQL)", 1, "ms", "<=", _me_p50),
    Target(
        "9b",
        "HTTP: history page p99 at 1M messages (PostgreSQL)",
        5,
        "ms",
        "<=",
        _history_p99("postgresql"),
    ),
    Target(
        "9c",
        "HTTP: history page p99 at 1M messages (SQLite)",
        5,
        "ms",
        "<=",
        _history_p99("sqlite"),
    ),
    Target(
        "9d",
        "HTTP: unread summary p99, 1,000-candidate coordinator (PostgreSQL)",
        20,
        "ms",
        "<=",
        _unread_p99("postgresql"),
    ),
    Target(
        "9e",
        "HTTP: unread summary p99, 1,000-candidate coordinator (SQLite)",
        20,
        "ms",
        "<=",
        _unread_p99("sqlite"),
    ),
    Target(
        "9f",
        "HTTP: inbox p99, user of 1,000 candidates (PostgreSQL)",
        20,
        "ms",
        "<=",
        _inbox_p99("postgresql"),
    ),
    Target(
        "9g",
        "HTTP: inbox p99, user of 1,000 candidates (SQLite)",
        20,
        "ms",
        "<=",
        _inbox_p99("sqlite"),
    ),
    Target(
        "10a",
        "Realistic (2 processes, 2,000 sockets, 500 candidates): p99 at 200 msg/s",
        50,
        "ms",
        "<=",
        _realistic_p99,
    ),
    Target(
        "10b",
        "Realistic: highest rate with p99 ≤ 100 ms, to Node Socket.IO's in the same run",
        1.0,
        TIMES,
        ">=",
        _realistic_rate_ratio,
    ),
]


# --- judging and rendering ----------------------------------------------------------------


def figure_of(target: Target, results: dict[str, Any]) -> Figure | None:
    """The target's figure in these results, or None when the run did not measure it."""
    if target.extract is None:
        return None
    try:
        found = target.extract(results)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None  # the results lack what the figure is made of
    if found is None:
        return None
    figure = found if isinstance(found, Figure) else Figure(float(found))
    return None if math.isnan(figure.value) else figure


def judge(target: Target, results: dict[str, Any]) -> Outcome:
    if target.extract is None:
        return Outcome(target, None, target.note or INFO)
    figure = figure_of(target, results)
    if figure is None:
        return Outcome(target, None, NOT_MEASURED)
    if not has_limit(target):
        return Outcome(target, figure, INFO)
    if target.comparison == "<=":
        met = figure.value <= target.limit
    else:
        met = figure.value >= target.limit
    return Outcome(target, figure, PASS if met else FAIL)


def evaluate(results: dict[str, Any], targets: list[Target] | None = None) -> list[Outcome]:
    return [judge(target, results) for target in (TARGETS if targets is None else targets)]


SINGULAR = {"round trips": "round trip", "statements": "statement", "frames": "frame"}
MEASURES = {"ms", "s", "KiB"}  # shown with decimals even when whole; other units count


def _with_unit(text: str, value: float, unit: str) -> str:
    if not unit:
        return text
    return f"{text} {SINGULAR.get(unit, unit) if value == 1 else unit}"


def number(value: float, unit: str = "") -> str:
    """A figure as the table shows it, with its unit."""
    if math.isinf(value):
        return "never" if value > 0 else "-∞"
    if unit == TIMES:
        return f"{value:.2f}{TIMES}"
    magnitude = abs(value)
    if unit not in MEASURES and value == int(value) and magnitude < 1e15:
        text = f"{int(value):,}"  # a count
    elif magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return _with_unit(text, value, unit)


def limit_text(target: Target) -> str:
    if not has_limit(target):
        return "—"
    sign = "≤" if target.comparison == "<=" else "≥"
    if target.unit == TIMES:
        return f"{sign} {target.limit:g}{TIMES}"
    return f"{sign} {_with_unit(f'{target.limit:g}', target.limit, target.unit)}"


def measured_text(outcome: Outcome) -> str:
    if outcome.figure is None:
        return "—"
    text = number(outcome.figure.value, outcome.target.unit)
    return f"{text} ({outcome.figure.detail})" if outcome.figure.detail else text


def rows(outcomes: list[Outcome]) -> list[list[str]]:
    return [
        [o.target.id, o.target.what, limit_text(o.target), measured_text(o), o.status]
        for o in outcomes
    ]


HEADER = ["#", "target", "limit", "measured", "result"]


def table(outcomes: list[Outcome]) -> str:
    """A markdown table, its columns padded so that it reads as well on a console."""
    body = rows(outcomes)
    widths = [max(len(row[i]) for row in [HEADER, *body]) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), rule, *(line(row) for row in body)])


def has_limit(target: Target) -> bool:
    return target.limit is not None and target.comparison in ("<=", ">=")


def summary(outcomes: list[Outcome]) -> str:
    judged = [o for o in outcomes if has_limit(o.target)]
    count = {s: sum(1 for o in judged if o.status == s) for s in (PASS, FAIL, NOT_MEASURED)}
    return (
        f"{count[PASS]} PASS, {count[FAIL]} FAIL, {count[NOT_MEASURED]} not measured, "
        f"of {len(judged)} targets with a limit."
    )


def markdown(outcomes: list[Outcome], quick: bool = False) -> str:
    caveat = (
        " This was a QUICK run: smaller sizes than the targets name (each row says what was "
        "measured), so its verdicts are indicative only."
        if quick
        else ""
    )
    return (
        "## Targets\n\n"
        'Each figure of this run against its target ("not measured": the run left out the '
        "scenario that measures it, or the scenario could not run). The sections below have "
        f"the methods and every figure.{caveat}\n\n"
        + table(outcomes)
        + "\n\n"
        + summary(outcomes)
        + "\n"
    )


def as_json(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [
        {
            "id": o.target.id,
            "what": o.target.what,
            "limit": o.target.limit,
            "unit": o.target.unit,
            "comparison": o.target.comparison,
            "value": None
            if o.figure is None or math.isinf(o.figure.value)
            else round(o.figure.value, 4),
            "detail": o.figure.detail if o.figure else "",
            "status": o.status,
        }
        for o in outcomes
    ]
