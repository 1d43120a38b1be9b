"""Scenario 5, storage: a history page, `GET /api/v1/unread` and the inbox
(`GET /api/v1/conversations`) at a million messages.

The schema comes from the product's migrations; the rows are seeded straight in SQL (one big
transaction of bulk inserts on SQLite, binary COPY on PostgreSQL; the secondary indexes of
`messages` are dropped and rebuilt from their own DDL around the load) as the product would
have written them: org, agencies, users, candidates with members, agency users and
coordinator, agency and private threads (`last_message_id` kept), messages with growing ids
and times (each thread active for a while, then quiet), thread posters, read markers, and
each candidate's `last_seq` with the event log that the 7-day retention would have kept.
Then ANALYZE, start the real server on that database and time sequential HTTP requests over
loopback; in-process, time the product's read functions and the SQL they send, and keep the
plans (`--plans` prints them). Last, a fresh server process on the same database (on
PostgreSQL with the Redis broker, each reached through a relay that counts round trips)
prices single operations: a connect of a user new to the process, a send, pipelined sends,
and a tab that comes back to its 50 candidates (CPU, SQL statements, round trips).

    python bench/storage.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where it would shadow the
# product's `storage` package: put the repository root there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import websockets  # noqa: E402

from bench.common import (  # noqa: E402
    CLI,
    LeanHttp,
    TripCounter,
    cpu_ns,
    cpu_ns_between,
    log,
    metric_samples,
    percentile_ms,
    start_am,
)

ORG = "bench-storage"
HISTORY_P99_MS = 5.0
UNREAD_P99_MS = 20.0
INBOX_P99_MS = 20.0
RETENTION_DAYS = 7  # AM_EVENT_RETENTION_DAYS default: older events are pruned


@dataclass(frozen=True)
class Sizes:
    messages: int
    candidates: int
    members: int
    agency_users: int
    agencies: int
    busy_thread: int  # messages in the thread that history pages read, active all year
    quiet_thread: int  # messages in a thread that went quiet six months ago
    busy_lag: int  # unread messages of the focus member in that thread
    history_requests: int
    unread_requests: int  # per measured user (and inbox pages per measured user)
    query_runs: int  # in-process runs of each query


FULL = Sizes(1_000_000, 10_000, 400, 1_000, 100, 20_000, 5_000, 200, 500, 150, 100)
QUICK = Sizes(100_000, 1_000, 60, 150, 15, 5_000, 1_000, 100, 100, 50, 30)


# --- the data set -------------------------------------------------------------------------


@dataclass
class Dataset:
    sizes: Sizes
    users: list[tuple[int, str, str, str, str, int | None]]  # pk, ext, name, email, kind, agency
    agencies: list[tuple[int, str, str]]
    candidates: list[tuple[int, str, str, int, int]]  # pk, ext, name, coordinator, last_seq
    candidate_members: list[tuple[int, int]]
    candidate_agency_users: list[tuple[int, int]]
    # threads, by id - 1
    thread_candidate: np.ndarray
    thread_kind: list[str]
    thread_agency_user: np.ndarray
    thread_member: list[int | None]
    thread_created_us: np.ndarray
    thread_last: list[int | None]
    # messages, by id - 1
    msg_thread: np.ndarray
    msg_candidate: np.ndarray
    msg_author: np.ndarray
    msg_body: list[str | None]
    msg_client_id: list[str | None]
    msg_created_us: np.ndarray
    msg_deleted: np.ndarray
    thread_posters: list[tuple[int, int]]
    read_markers: list[tuple[int, int, int]]
    events: list[tuple[int, int, str, int, int, int]]  # cand, seq, kind, thread, msg, us
    # what the measurements use
    focus_member: str = "m0000"
    lead_member: str = "m0001"
    busy_agency_user: str = "a0000"
    busy_thread: int = 0
    busy_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    quiet_thread: int = 0
    quiet_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    focus_threads: list[int] = field(default_factory=list)  # non-empty, seen by the focus member
    seconds: float = 0.0

    @property
    def thread_count(self) -> int:
        return len(self.thread_kind)


TEXT = (
    "thanks for the update the candidate is available next week for an interview with the "
    "hiring manager please send the signed offer and the references we expect feedback on "
    "friday can you confirm the salary range and notice period she has strong experience in "
    "python and distributed systems he prefers remote work with two days in the office"
)


def _bodies(rng: random.Random, count: int) -> list[str]:
    words = TEXT.split()
    out = []
    for _ in range(count):
        length = max(2, min(120, int(rng.lognormvariate(2.4, 0.7))))
        text = " ".join(rng.choice(words) for _ in range(length))
        out.append(text[0].upper() + text[1:] + rng.choice(".?!"))
    return out


def make_dataset(sizes: Sizes) -> Dataset:
    """One org's history as the product writes it; the same rows go to both databases."""
    started = time.perf_counter()
    prng = random.Random(5)
    rng = np.random.default_rng(5)
    nm, na, nc = sizes.members, sizes.agency_users, sizes.candidates
    focus, lead, agency0 = 1, 2, nm + 1
    member_pks = range(3, nm + 1)
    agency_pks = range(nm + 2, nm + na + 1)

    agencies = [(i + 1, f"ag{i:03d}", f"Agency {i}") for i in range(sizes.agencies)]
    users: list[tuple[int, str, str, str, str, int | None]] = [
        (i + 1, f"m{i:04d}", f"Member {i}", f"m{i}@hire.example", "member", None) for i in range(nm)
    ]
    users += [
        (
            nm + i + 1,
            f"a{i:04d}",
            f"Agent {i}",
            f"a{i}@agency.example",
            "agency",
            i % sizes.agencies + 1,
        )
        for i in range(na)
    ]

    # Candidates: the focus member sees 50 of them, the lead coordinates a tenth, the busy
    # agency user is linked to about 3%.
    focus_stride = max(1, nc // 50)
    coordinators, members_of, agency_of = [], [], []
    cand_members: list[tuple[int, int]] = []
    cand_agency: list[tuple[int, int]] = []
    for c in range(nc):
        pk = c + 1
        coordinator = lead if c % 10 == 0 else prng.choice(member_pks)
        listed = set(prng.sample(member_pks, 2))
        if prng.random() < 0.5:
            listed.add(coordinator)
        if c % focus_stride == 1:
            listed.add(focus)
        linked = [prng.choice(agency_pks)]
        if prng.random() < 0.25:
            second = prng.choice(agency_pks)
            if second != linked[0]:
                linked.append(second)
        if c % 33 == 2 and agency0 not in linked:
            linked.append(agency0)
        coordinators.append(coordinator)
        members_of.append(sorted(listed | {coordinator}))
        agency_of.append(linked)
        cand_members += [(pk, u) for u in sorted(listed)]
        cand_agency += [(pk, a) for a in linked]

    # Threads: an agency thread per linked agency user, some private ones.
    t_cand, t_kind, t_agency, t_member, t_people = [], [], [], [], []

    def add_thread(c: int, kind: str, agency_user: int, member: int | None) -> None:
        t_cand.append(c + 1)
        t_kind.append(kind)
        t_agency.append(agency_user)
        t_member.append(member)
        t_people.append([agency_user, *(members_of[c] if member is None else [member])])

    busy_old = quiet_old = -1
    for c in range(nc):
        for a in agency_of[c]:
            # The agency threads of the focus member's first two candidates.
            if c == 1 and busy_old < 0:
                busy_old = len(t_cand)
            if c == 1 + focus_stride and quiet_old < 0:
                quiet_old = len(t_cand)
            add_thread(c, "agency", a, None)
        coordinator = coordinators[c]
        if prng.random() < 0.15 or (agency0 in agency_of[c] and prng.random() < 0.3):
            add_thread(c, "private", agency_of[c][-1], coordinator)
        if focus in members_of[c] and coordinator != focus and prng.random() < 0.3:
            add_thread(c, "private", agency_of[c][0], focus)
    nt = len(t_cand)

    # Messages: a skewed number per thread, each thread active for a while (a candidate's
    # process) and then quiet; ids grow with time across the interleaved threads.
    weights = rng.lognormal(0.0, 1.2, nt)
    weights[rng.random(nt) < 0.05] = 0.0  # opened, never written in
    weights[[busy_old, quiet_old]] = 0.0
    fixed = sizes.busy_thread + sizes.quiet_thread
    counts = rng.multinomial(sizes.messages - fixed, weights / weights.sum())
    counts[busy_old], counts[quiet_old] = sizes.busy_thread, sizes.quiet_thread
    day = 86400 * 10**6
    end_us = int((time.time() - 60) * 1e6)
    span_us = 365 * day
    duration = np.clip(rng.lognormal(np.log(30 * day), 0.8, nt), day, span_us).astype(np.int64)
    start = end_us - span_us + (rng.random(nt) * (span_us - duration + day)).astype(np.int64)
    start, duration = np.minimum(start, end_us - duration), duration
    start[busy_old], duration[busy_old] = end_us - span_us, span_us  # busy all year
    start[quiet_old], duration[quiet_old] = end_us - 300 * day, 120 * day  # ended 6 months ago
    thread_of = np.repeat(np.arange(nt), counts)
    msg_us = start[thread_of] + (rng.random(len(thread_of)) * duration[thread_of]).astype(np.int64)
    by_time = np.argsort(msg_us, kind="stable")
    thread_of, msg_us = thread_of[by_time], msg_us[by_time]
    m = len(thread_of)

    # Thread ids follow creation time: a few minutes before the first message, or any time
    # for a thread that is still empty.
    created = start - rng.integers(1, 600 * 10**6, nt)
    order = np.argsort(created, kind="stable")
    new_id = np.empty(nt, dtype=np.int64)
    new_id[order] = np.arange(1, nt + 1)

    people = np.zeros((nt, max(len(p) for p in t_people)), dtype=np.int64)
    n_people = np.array([len(p) for p in t_people])
    for t, p in enumerate(t_people):
        people[t, : len(p)] = p
    pick = np.where(
        rng.random(m) < 0.5, 0, 1 + (rng.random(m) * (n_people[thread_of] - 1)).astype(np.int64)
    )
    author = people[thread_of, pick]
    deleted = rng.random(m) < 0.005
    cand_arr = np.array(t_cand, dtype=np.int64)
    msg_cand = cand_arr[thread_of]

    pool = _bodies(prng, 4000)
    body_idx = rng.integers(0, len(pool), m).tolist()
    bodies: list[str | None] = [
        None if d else pool[i] for i, d in zip(body_idx, deleted.tolist(), strict=True)
    ]
    hexes = os.urandom(16 * m).hex()
    no_client = (rng.random(m) < 0.1).tolist()  # REST clients without a client_id
    client_ids: list[str | None] = [
        None
        if no_client[i]
        else (
            f"{hexes[i * 32 : i * 32 + 8]}-{hexes[i * 32 + 8 : i * 32 + 12]}-"
            f"{hexes[i * 32 + 12 : i * 32 + 16]}-{hexes[i * 32 + 16 : i * 32 + 20]}-"
            f"{hexes[i * 32 + 20 : i * 32 + 32]}"
        )
        for i in range(m)
    ]

    # Per-thread message ids, ascending.
    by_thread = np.argsort(thread_of, kind="stable") + 1
    offsets = np.concatenate(([0], np.cumsum(counts)))
    last_of = [int(by_thread[offsets[t + 1] - 1]) if counts[t] else None for t in range(nt)]

    # Read markers: most viewers read to the end, some lag (more often in threads active this
    # month), a few never opened the thread.
    markers: list[tuple[int, int, int]] = []
    recent = start + duration >= end_us - 30 * day
    for t in range(nt):
        n = int(counts[t])
        if n == 0:
            continue
        read_all, some_read = (0.75, 0.93) if recent[t] else (0.97, 0.99)
        for user in t_people[t]:
            if t == busy_old and user == focus:
                lag = sizes.busy_lag
            else:
                r = prng.random()
                lag = 0 if r < read_all else n
                if read_all <= r < some_read:
                    lag = min(n, 1 + int(prng.expovariate(0.1)))
            if lag < n:
                markers.append((user, int(new_id[t]), int(by_thread[offsets[t] + n - 1 - lag])))

    posters = np.unique(new_id[thread_of] * (1 << 32) + author)
    thread_posters = list(
        zip((posters >> 32).tolist(), (posters & 0xFFFFFFFF).tolist(), strict=True)
    )

    # The event log: a created event per message, a deleted one after each tombstone; seqs
    # count per candidate; only the last RETENTION_DAYS are still stored.
    w = 1 + deleted.astype(np.int64)
    by_cand = np.argsort(msg_cand, kind="stable")
    last_seq = np.bincount(msg_cand, weights=w, minlength=nc + 1).astype(np.int64)
    base = np.cumsum(last_seq) - last_seq
    seq = np.empty(m, dtype=np.int64)
    seq[by_cand] = np.cumsum(w[by_cand]) - w[by_cand] + 1 - base[msg_cand[by_cand]]
    cutoff = end_us - RETENTION_DAYS * 86400 * 10**6
    events: list[tuple[int, int, str, int, int, int]] = []
    for i in np.nonzero(msg_us >= cutoff)[0].tolist():
        c, s, t, us = int(msg_cand[i]), int(seq[i]), int(new_id[thread_of[i]]), int(msg_us[i])
        events.append((c, s, "message.created", t, i + 1, us))
        if deleted[i]:
            events.append((c, s + 1, "message.deleted", t, i + 1, us + 30 * 10**6))

    candidates = [
        (c + 1, f"c{c:05d}", f"Candidate {c}", coordinators[c], int(last_seq[c + 1]))
        for c in range(nc)
    ]
    # Rows by the new thread ids.
    inv = order  # inv[new_id - 1] = old index
    busy = int(new_id[busy_old])
    ids_of = lambda t: by_thread[offsets[t] : offsets[t + 1]]  # noqa: E731
    return Dataset(
        sizes=sizes,
        users=users,
        agencies=agencies,
        candidates=candidates,
        candidate_members=cand_members,
        candidate_agency_users=cand_agency,
        thread_candidate=cand_arr[inv],
        thread_kind=[t_kind[i] for i in inv.tolist()],
        thread_agency_user=np.array(t_agency, dtype=np.int64)[inv],
        thread_member=[t_member[i] for i in inv.tolist()],
        thread_created_us=created[inv],
        thread_last=[last_of[i] for i in inv.tolist()],
        msg_thread=new_id[thread_of],
        msg_candidate=msg_cand,
        msg_author=author,
        msg_body=bodies,
        msg_client_id=client_ids,
        msg_created_us=msg_us,
        msg_deleted=deleted,
        thread_posters=thread_posters,
        read_markers=markers,
        events=events,
        busy_thread=busy,
        busy_ids=ids_of(busy_old),
        quiet_thread=int(new_id[quiet_old]),
        quiet_ids=ids_of(quiet_old),
        focus_threads=sorted(
            int(new_id[t]) for t in range(nt) if counts[t] and focus in t_people[t]
        ),
        seconds=time.perf_counter() - started,
    )


# --- seeding -----------------------------------------------------------------------------


def _sqlite_times(us: np.ndarray) -> list[str]:
    """Naive UTC text, as SQLAlchemy's DateTime keeps it in SQLite."""
    return [d.isoformat(" ", "microseconds") for d in us.astype("M8[us]").astype(object)]


def _pg_times(us: np.ndarray) -> list[datetime]:
    naive = us.astype("M8[us]").astype(object).tolist()
    if time.localtime().tm_gmtoff == 0:  # asyncpg reads a naive time as local time
        return naive  # type: ignore[no-any-return]
    return [d.replace(tzinfo=UTC) for d in naive]


def _rows(ds: Dataset, times: Any) -> dict[str, tuple[list[str], Any]]:
    """Every table's columns and rows, in foreign-key order."""
    now = times(np.array([int(time.time() * 1e6) - 400 * 86400 * 10**6], dtype=np.int64))[0]
    nt = ds.thread_count
    thread_times = times(ds.thread_created_us)
    msg_times = times(ds.msg_created_us)
    event_times = times(np.array([e[5] for e in ds.events], dtype=np.int64))
    m = len(ds.msg_body)
    return {
        "orgs": (["pk", "ext_id", "name", "created_at"], [(1, ORG, "Bench Storage Org", now)]),
        "agencies": (
            ["pk", "org_pk", "ext_id", "name"],
            [(a[0], 1, a[1], a[2]) for a in ds.agencies],
        ),
        "users": (
            ["pk", "org_pk", "ext_id", "name", "email", "kind", "agency_pk", "email_muted"],
            [(u[0], 1, *u[1:], False) for u in ds.users],
        ),
        "candidates": (
            ["pk", "org_pk", "ext_id", "name", "coordinator_pk", "last_seq"],
            [(c[0], 1, *c[1:]) for c in ds.candidates],
        ),
        "candidate_members": (["candidate_pk", "user_pk"], ds.candidate_members),
        "candidate_agency_users": (["candidate_pk", "user_pk"], ds.candidate_agency_users),
        "threads": (
            [
                "id",
                "org_pk",
                "candidate_pk",
                "kind",
                "agency_user_pk",
                "member_pk",
                "created_at",
                "last_message_id",
            ],
            list(
                zip(
                    range(1, nt + 1),
                    [1] * nt,
                    ds.thread_candidate.tolist(),
                    ds.thread_kind,
                    ds.thread_agency_user.tolist(),
                    ds.thread_member,
                    thread_times,
                    ds.thread_last,
                    strict=True,
                )
            ),
        ),
        "messages": (
            [
                "id",
                "thread_id",
                "candidate_pk",
                "author_pk",
                "body",
                "client_id",
                "created_at",
                "deleted",
            ],
            zip(
                range(1, m + 1),
                ds.msg_thread.tolist(),
                ds.msg_candidate.tolist(),
                ds.msg_author.tolist(),
                ds.msg_body,
                ds.msg_client_id,
                msg_times,
                ds.msg_deleted.tolist(),
                strict=True,
            ),
        ),
        "thread_posters": (["thread_id", "user_pk"], ds.thread_posters),
        "read_markers": (["user_pk", "thread_id", "message_id"], ds.read_markers),
        "events": (
            ["candidate_pk", "seq", "kind", "thread_id", "message_id", "created_at"],
            [(*e[:5], t) for e, t in zip(ds.events, event_times, strict=True)],
        ),
    }


def seed_sqlite(path: Path, ds: Dataset) -> dict[str, float]:
    timings: dict[str, float] = {}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")  # a bulk load: no rollback journal, no WAL
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-1000000")
        db.execute("BEGIN")
        # Bulk-load practice: drop the secondary indexes of `messages`, load, then rebuild
        # them from their own DDL (the migration's), which is faster than maintaining them.
        indexes = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'messages' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        for table, (columns, rows) in _rows(ds, _sqlite_times).items():
            started = time.perf_counter()
            marks = ", ".join("?" * len(columns))
            db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
            timings[table] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        for _, ddl in indexes:
            db.execute(ddl)
        timings["indexes"] = round(time.perf_counter() - started, 2)
        db.execute("COMMIT")
        started = time.perf_counter()
        db.execute("ANALYZE")
        timings["analyze"] = round(time.perf_counter() - started, 2)
        db.execute("PRAGMA journal_mode=WAL")  # as the server keeps it
    finally:
        db.close()
    return timings


async def seed_postgres(url: str, ds: Dataset) -> dict[str, float]:
    timings: dict[str, float] = {}
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            # The rows are consistent by construction: skip the per-row foreign-key triggers.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            # Drop the secondary indexes (and the unique constraint) of `messages`, load,
            # then rebuild them from the definitions the migrations made.
            indexes = await conn.fetch(
                "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) "
                "AS ddl, c.conname, pg_get_constraintdef(c.oid) AS condef FROM pg_index i "
                "LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid "
                "AND c.conrelid = i.indrelid WHERE i.indrelid = 'messages'::regclass "
                "AND NOT i.indisprimary"
            )
            for index in indexes:
                if index["conname"]:
                    await conn.execute(f'ALTER TABLE messages DROP CONSTRAINT "{index["conname"]}"')
                else:
                    await conn.execute(f'DROP INDEX "{index["name"]}"')
            for table, (columns, rows) in _rows(ds, _pg_times).items():
                started = time.perf_counter()
                await conn.copy_records_to_table(table, records=list(rows), columns=columns)
                timings[table] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            for index in indexes:
                if index["conname"]:
                    await conn.execute(
                        f'ALTER TABLE messages ADD CONSTRAINT "{index["conname"]}" '
                        + index["condef"]
                    )
                else:
                    await conn.execute(index["ddl"])
            timings["indexes"] = round(time.perf_counter() - started, 2)
            for table, column in [
                ("orgs", "pk"),
                ("agencies", "pk"),
                ("users", "pk"),
                ("candidates", "pk"),
                ("threads", "id"),
                ("messages", "id"),
            ]:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"(SELECT max({column}) FROM {table}))"
                )
        started = time.perf_counter()
        # What autovacuum would have done by now: statistics and the visibility map.
        await conn.execute("VACUUM (ANALYZE)")
        timings["analyze"] = round(time.perf_counter() - started, 2)
    finally:
        await conn.close()
    return timings


# --- measuring ---------------------------------------------------------------------------


def _history_requests(ds: Dataset, count: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """(kind, thread, before or 0): history pages as the focus member reads them. The newest
    page and `before=` pages anywhere in the past of a thread busy all year and of one quiet
    for six months, and the newest page of its other threads."""
    busy, quiet = ds.busy_ids.tolist(), ds.quiet_ids.tolist()
    out = []
    for i in range(count):
        slot = i % 10
        if slot < 2:
            out.append(("busy newest", ds.busy_thread, 0))
        elif slot < 6:
            out.append(("busy before=", ds.busy_thread, busy[rng.randrange(60, len(busy))]))
        elif slot == 6:
            out.append(("quiet newest", ds.quiet_thread, 0))
        elif slot == 7:
            out.append(("quiet before=", ds.quiet_thread, quiet[rng.randrange(60, len(quiet))]))
        else:
            out.append(("other newest", rng.choice(ds.focus_threads), 0))
    return out


def _history_path(thread: int, before: int) -> str:
    return f"/api/v1/threads/{thread}/messages" + (f"?before={before}" if before else "")


def _timed_get(http: LeanHttp, path: str) -> tuple[int, bytes]:
    started = time.perf_counter_ns()
    status, body = http.get(path)
    elapsed = (time.perf_counter_ns() - started) // 1000
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
    return elapsed, body


def _sql_statements(http: LeanHttp) -> float | None:
    """The server's count of SQL statements sent, from /metrics (None if it has none)."""
    return metric_samples(http.get("/metrics")[1].decode()).get("am_sql_statements")


def _per_request(before: float | None, after: float | None, requests: int) -> float | None:
    return None if before is None or after is None else round((after - before) / requests, 1)


def measure_http(base_url: str, tokens: dict[str, str], ds: Dataset) -> dict[str, Any]:
    """Sequential requests, one at a time on one keep-alive connection, each timed from
    its first byte sent to its last byte received (common.LeanHttp: a client that adds a few
    microseconds, so the time is the server's and the loopback's)."""
    rng = random.Random(7)
    sizes = ds.sizes
    out: dict[str, Any] = {}
    auth = {u: {"Authorization": f"Bearer {t}"} for u, t in tokens.items()}
    with LeanHttp(base_url) as http:
        http.headers.update(auth[ds.focus_member])
        baseline = []  # authentication and HTTP alone: the floor under both measurements
        for i in range(sizes.unread_requests + 10):
            us, _ = _timed_get(http, "/api/v1/me")
            if i >= 10:
                baseline.append(us)
        out["baseline_us"] = baseline
        for _, thread, before in _history_requests(ds, 20, rng):  # warm-up
            _timed_get(http, _history_path(thread, before))
        history: dict[str, list[int]] = {}
        page_sizes = set()
        statements = _sql_statements(http)
        for kind, thread, before in _history_requests(ds, sizes.history_requests, rng):
            us, body = _timed_get(http, _history_path(thread, before))
            history.setdefault(kind, []).append(us)
            page_sizes.add(len(orjson.loads(body)["messages"]))
        out["history_us"] = history
        out["history_page_sizes"] = sorted(page_sizes)
        out["history_sql_per_request"] = _per_request(
            statements, _sql_statements(http), sizes.history_requests
        )

        unread: dict[str, list[int]] = {u: [] for u in tokens}
        dots: dict[str, int] = {}
        for user in tokens:  # warm-up
            http.headers.update(auth[user])
            for _ in range(5):
                _, body = _timed_get(http, "/api/v1/unread")
            dots[user] = len(orjson.loads(body)["candidates"])
        statements = _sql_statements(http)
        for _ in range(sizes.unread_requests):
            for user in tokens:
                http.headers.update(auth[user])
                us, _ = _timed_get(http, "/api/v1/unread")
                unread[user].append(us)
        out["unread_us"] = unread
        out["unread_sql_per_request"] = _per_request(
            statements, _sql_statements(http), sizes.unread_requests * len(tokens)
        )
        out["unread_candidates"] = dots
        out.update(_measure_inbox(http, auth, sizes.unread_requests))
    return out


def _inbox_path(before: int | None) -> str:
    return "/api/v1/conversations" + (f"?before={before}" if before else "")


def _measure_inbox(
    http: LeanHttp, auth: dict[str, dict[str, str]], requests: int
) -> dict[str, Any]:
    """The inbox of each user, one request at a time: its first page, and every other
    request the next one (`before=` the first page's last conversation), as a client
    scrolling it asks."""
    cursors: dict[str, int | None] = {}
    shown: dict[str, int] = {}
    for user, headers in auth.items():  # warm-up, and each user's cursor
        http.headers.update(headers)
        for _ in range(5):
            _, body = _timed_get(http, _inbox_path(None))
        page = orjson.loads(body)
        shown[user] = len(page["conversations"])
        cursors[user] = (
            page["conversations"][-1]["last_message"]["id"] if page["has_more"] else None
        )
    samples: dict[str, list[int]] = {u: [] for u in auth}
    statements = _sql_statements(http)
    for i in range(requests):
        for user, headers in auth.items():
            http.headers.update(headers)
            us, _ = _timed_get(http, _inbox_path(cursors[user] if i % 2 else None))
            samples[user].append(us)
    return {
        "inbox_us": samples,
        "inbox_first_page": shown,
        "inbox_sql_per_request": _per_request(
            statements, _sql_statements(http), requests * len(auth)
        ),
    }


async def _sql_timer(url: str) -> tuple[Any, Any]:
    """Runs one captured statement straight on the driver: the database's own time."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("///", 1)[1])

        async def run_sqlite(statement: str, params: Any) -> None:
            conn.execute(statement, params).fetchall()

        async def close_sqlite() -> None:
            conn.close()

        return run_sqlite, close_sqlite
    pg = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))

    async def run_pg(statement: str, params: Any) -> None:
        await pg.fetch(statement, *params)

    return run_pg, pg.close


async def measure_queries(url: str, ds: Dataset, users: list[str]) -> dict[str, Any]:
    """In-process, without HTTP: the product's read functions (ORM and driver included), the
    SQL they send run straight on a driver connection, and its plan."""
    from sqlalchemy import event, select

    from server.domain import inbox, views
    from server.domain.rules import Actor
    from storage.database import Database
    from storage.models import User

    db = Database(url)
    runs = ds.sizes.query_runs
    out: dict[str, Any] = {"function_us": {}, "sql_us": {}, "plans": {}}
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        captured.append((statement, params))

    run_sql, close_sql = await _sql_timer(url)
    try:
        async with db.read() as session:
            actors = {}
            for user in users:
                row = (
                    await session.execute(
                        select(User.pk, User.org_pk, User.kind).where(User.ext_id == user)
                    )
                ).one()
                actors[user] = Actor(row.pk, row.org_pk, row.kind)
            requests = _history_requests(ds, runs, random.Random(11))
            for kind, thread, before in requests:
                started = time.perf_counter_ns()
                await views.message_page(
                    session, thread, before=before or None, after=None, limit=50
                )
                elapsed = (time.perf_counter_ns() - started) // 1000
                out["function_us"].setdefault(f"history {kind}", []).append(elapsed)
            for user, actor in actors.items():
                samples = []
                for i in range(runs + 3):
                    started = time.perf_counter_ns()
                    unread = await views.unread_threads(session, actor)
                    await views.messages_by_id(session, [u.newest_unread_id or 0 for u in unread])
                    if i >= 3:
                        samples.append((time.perf_counter_ns() - started) // 1000)
                out["function_us"][f"unread {user}"] = samples
                samples = []
                for i in range(runs + 3):
                    started = time.perf_counter_ns()
                    await inbox.conversations(session, actor, before=None, limit=50)
                    if i >= 3:
                        samples.append((time.perf_counter_ns() - started) // 1000)
                out["function_us"][f"inbox {user}"] = samples

            # The main statement of each: captured, explained, and timed on the driver.
            event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
            firsts = {kind: (thread, before) for kind, thread, before in reversed(requests)}
            targets: list[tuple[str, Any]] = [
                (
                    f"history {kind}",
                    lambda s, t=thread, b=before: views.message_page(
                        s, t, before=b or None, after=None, limit=50
                    ),
                )
                for kind, (thread, before) in firsts.items()
            ]
            targets += [
                (f"unread {user}", lambda s, a=actor: views.unread_threads(s, a))
                for user, actor in actors.items()
            ]
            targets += [
                (
                    f"inbox {user}",
                    lambda s, a=actor: inbox.conversations(s, a, before=None, limit=50),
                )
                for user, actor in actors.items()
            ]
            for label, call in targets:
                first = len(captured)
                await call(session)
                # The inbox's main statement is its first (the page); the others' their last.
                statement, params = captured[first if label.startswith("inbox") else -1]
                prefix = "EXPLAIN QUERY PLAN " if db.sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
                conn = await session.connection()
                rows = await conn.exec_driver_sql(prefix + statement, params)
                out["plans"][label] = {
                    "sql": statement,
                    "params": repr(params),
                    "plan": [str(r[-1]) for r in rows],
                }
                samples = []
                for i in range(runs + 3):
                    started = time.perf_counter_ns()
                    await run_sql(statement, params)
                    if i >= 3:
                        samples.append((time.perf_counter_ns() - started) // 1000)
                out["sql_us"][label] = samples
    finally:
        await close_sql()
        await db.close()
    return out


# --- what one request costs the server --------------------------------------------------

COST_SENDS = 200  # sequential sends, each waiting for its ack
COST_PIPELINED = 200  # sends written at once on one socket
COST_CONNECTS = 100  # users new to the process, one socket each
COST_WARM_CONNECTS = 10  # other new users before them, unmeasured (the pool's first use)
COST_RESUMES = 10  # rounds of the returning tab
RESUME_NEW_MESSAGES = 5  # posted in as many of its candidates while the tab was away
IDLE_SECONDS = 2.0  # the process's own background work, measured and subtracted


class ServerReadings:
    """What a server process has spent: CPU (every thread, in ns), SQL statements (its
    /metrics), and round trips to the database and the broker (through the relays that
    count them, when it was started behind them)."""

    def __init__(
        self, pid: int, http_url: str, db: TripCounter | None, broker: TripCounter | None
    ) -> None:
        self.pid = pid
        self.metrics = LeanHttp(http_url)
        self.db = db
        self.broker = broker
        self.idle: dict[str, float] = {}

    def read(self, metrics_first: bool) -> dict[str, Any]:
        """A reading; the /metrics request is made before the CPU is read at the start of a
        window (metrics_first) and after it at the end, so that it falls outside."""
        statements = _sql_statements(self.metrics) if metrics_first else None
        out: dict[str, Any] = {
            "wall": time.monotonic(),
            "cpu": cpu_ns([self.pid]),
            "db": self.db.trips if self.db else None,
            "broker": self.broker.trips if self.broker else None,
        }
        out["sql"] = statements if metrics_first else _sql_statements(self.metrics)
        return out

    def start(self) -> dict[str, Any]:
        return self.read(metrics_first=True)

    def spent(self, before: dict[str, Any]) -> dict[str, float]:
        """What the process spent since `before`, less its idle background work."""
        after = self.read(metrics_first=False)
        wall = after["wall"] - before["wall"]
        out = {
            "wall_s": wall,
            "cpu_s": cpu_ns_between(before["cpu"], after["cpu"]) / 1e9
            - self.idle.get("cpu_s", 0.0) * wall,
            "sql": (after["sql"] or 0.0) - (before["sql"] or 0.0),
        }
        for key in ("db", "broker"):
            if after[key] is not None:
                out[f"{key}_trips"] = after[key] - before[key] - self.idle.get(key, 0.0) * wall
        return out

    def measure_idle(self, seconds: float) -> None:
        """The background work of an idle process per second (its event-loop watchdog,
        presence renewals), subtracted from every window."""
        before = self.start()
        time.sleep(seconds)
        spent = self.spent(before)
        self.idle = {
            "cpu_s": spent["cpu_s"] / spent["wall_s"],
            **{
                key: spent[f"{key}_trips"] / spent["wall_s"]
                for key in ("db", "broker")
                if f"{key}_trips" in spent
            },
        }

    def close(self) -> None:
        self.metrics.close()


def _per(spent: dict[str, float], count: int) -> dict[str, float]:
    """Per operation: CPU and wall time in ms, statements and round trips."""
    out = {
        "cpu_ms": round(spent["cpu_s"] * 1000 / count, 3),
        "wall_ms": round(spent["wall_s"] * 1000 / count, 2),
        "sql": round(spent["sql"] / count, 2),
    }
    for key in ("db_trips", "broker_trips"):
        if key in spent:
            out[key] = round(spent[key] / count, 2)
    return out


async def _ws(url: str, token: str) -> Any:
    return await websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        open_timeout=60,
        ping_interval=None,
        max_size=None,
    )


async def _answers(ws: Any, refs: set[Any], events: int = 0) -> dict[Any, dict[str, Any]]:
    """Reads frames until every ref has its answer and `events` message.created frames have
    come; returns the answers by ref (and the events under "events")."""
    answers: dict[Any, dict[str, Any]] = {"events": []}
    async with asyncio.timeout(60):
        while refs - answers.keys() or len(answers["events"]) < events:
            frame = orjson.loads(await ws.recv())
            if frame.get("type") == "message.created":
                answers["events"].append(frame)
            elif "ref" in frame:
                if frame.get("type") == "error":
                    raise RuntimeError(f"The server answered {frame}")
                answers[frame["ref"]] = frame
    return answers


def _users_by_pk(ds: Dataset) -> dict[int, str]:
    return {u[0]: u[1] for u in ds.users}


def _focus_candidates(ds: Dataset) -> list[str]:
    """The candidates the focus member sees (member or coordinator)."""
    focus = next(u[0] for u in ds.users if u[1] == ds.focus_member)
    pks = {c for c, u in ds.candidate_members if u == focus}
    pks |= {c[0] for c in ds.candidates if c[3] == focus}
    return [ds.candidates[pk - 1][1] for pk in sorted(pks)]


def _focus_agency_threads(ds: Dataset) -> list[tuple[int, str, str]]:
    """(thread id, candidate, agency user) of the agency threads of the focus candidates."""
    visible = set(_focus_candidates(ds))
    users = _users_by_pk(ds)
    out = []
    for index, kind in enumerate(ds.thread_kind):
        candidate = ds.candidates[int(ds.thread_candidate[index]) - 1][1]
        if kind == "agency" and candidate in visible:
            out.append((index + 1, candidate, users[int(ds.thread_agency_user[index])]))
    return out


def _new_users(ds: Dataset, count: int, taken: set[str]) -> list[str]:
    """Users of no other measurement, half members and half agency users."""
    members = [u[1] for u in ds.users if u[4] == "member" and u[1] not in taken]
    agents = [u[1] for u in ds.users if u[4] == "agency" and u[1] not in taken]
    half = min(count // 2, len(members))
    return members[:half] + agents[: count - half]


async def measure_costs(cluster: Any, readings: ServerReadings, ds: Dataset) -> dict[str, Any]:
    """Sequential operations against one fresh server process, each window read from the
    process itself: connects of users new to it, sends, pipelined sends, and a tab that
    comes back to its 50 candidates."""
    url = cluster.ws_url()
    threads = _focus_agency_threads(ds)
    busy_thread, _, sender = next(t for t in threads if t[0] == ds.busy_thread)
    posters = [t for t in threads if t[0] != ds.busy_thread]
    taken = {ds.focus_member, ds.lead_member, ds.busy_agency_user, sender}
    taken |= {t[2] for t in posters}
    out: dict[str, Any] = {}
    readings.measure_idle(IDLE_SECONDS)
    out["idle_cpu_ms_per_s"] = round(readings.idle["cpu_s"] * 1000, 2)

    # Connect: users the process has never seen, one socket each, until its first answer.
    # A few other users connect first, unmeasured: the database driver prepares each
    # statement once per pooled connection (a round trip), as a process in service has.
    warm = _new_users(ds, COST_WARM_CONNECTS, taken)
    users = _new_users(ds, COST_CONNECTS, taken | set(warm))
    for user in warm:
        ws = await _ws(url, cluster.token(ORG, user))
        await ws.send(orjson.dumps({"op": "ping", "ref": "warm"}).decode())
        await _answers(ws, {"warm"})
        await ws.close()
    tokens = [cluster.token(ORG, u) for u in users]
    sockets = []
    before = readings.start()
    for index, token in enumerate(tokens):
        ws = await _ws(url, token)
        await ws.send(orjson.dumps({"op": "ping", "ref": index}).decode())
        await _answers(ws, {index})
        sockets.append(ws)
    out["connect"] = {"users": len(users), **_per(readings.spent(before), len(users))}
    await asyncio.gather(*(ws.close() for ws in sockets))
    await asyncio.sleep(0.5)

    # Send: one socket, each send waiting for its ack; nobody else is online.
    ws = await _ws(url, cluster.token(ORG, sender))
    n = 0

    async def send(count: int, pipelined: bool) -> None:
        nonlocal n
        refs = set(range(n, n + count))
        for ref in refs:
            frame = {"op": "send", "thread": busy_thread, "body": f"cost {ref}", "ref": ref}
            frame["client_id"] = f"cost-{ref}"
            await ws.send(orjson.dumps(frame).decode())
            if not pipelined:
                await _answers(ws, {ref})
        if pipelined:
            await _answers(ws, refs)
        n += count

    await send(20, pipelined=False)  # warm-up
    before = readings.start()
    await send(COST_SENDS, pipelined=False)
    out["send"] = {"sends": COST_SENDS, **_per(readings.spent(before), COST_SENDS)}
    before = readings.start()
    await send(COST_PIPELINED, pipelined=True)
    spent = readings.spent(before)
    out["pipelined"] = {
        "sends": COST_PIPELINED,
        "ops_per_second": round(COST_PIPELINED / spent["wall_s"], 1),
        **_per(spent, COST_PIPELINED),
    }
    await ws.close()

    # Resume: the focus member's tab subscribes to its 50 candidates, goes away, a few
    # messages are posted in some of them, and it comes back: it connects, then resumes
    # every candidate with `after` in one batch `subscribe` frame, until the ack and every
    # missed message are in. The window counts the resume, not the handshake (connects
    # have rows of their own). Nobody else follows those candidates: a cold resume.
    candidates = _focus_candidates(ds)
    focus = cluster.token(ORG, ds.focus_member)
    last: dict[str, int] = {}

    async def tab(after: bool, expected: int) -> dict[str, Any]:
        ws = await _ws(url, focus)
        entries: list[dict[str, Any]] = []
        for candidate in candidates:
            entry: dict[str, Any] = {"candidate": candidate}
            if after:
                entry["after"] = last[candidate]
            entries.append(entry)
        before = readings.start()
        frame = {"op": "subscribe", "candidates": entries, "ref": "resume"}
        await ws.send(orjson.dumps(frame).decode())
        answers = await _answers(ws, {"resume"}, events=expected)
        spent = readings.spent(before)
        for result in answers["resume"]["candidates"]:
            if "error" in result or result.get("reset"):
                raise RuntimeError(f"A resume was not answered as it should be: {result}")
            last[result["candidate"]] = max(last.get(result["candidate"], 0), result["seq"])
        await ws.close()
        return spent

    await tab(after=False, expected=0)
    windows = []
    async with httpx.AsyncClient(base_url=cluster.http_url(), timeout=60) as http:
        for round_ in range(COST_RESUMES):
            for k in range(RESUME_NEW_MESSAGES):
                thread, _, poster = posters[(round_ * RESUME_NEW_MESSAGES + k) % len(posters)]
                response = await http.post(
                    f"/api/v1/threads/{thread}/messages",
                    json={"body": f"while away {round_}.{k}"},
                    headers={"Authorization": f"Bearer {cluster.token(ORG, poster)}"},
                )
                response.raise_for_status()
            await asyncio.sleep(0.3)
            windows.append(await tab(after=True, expected=RESUME_NEW_MESSAGES))
            await asyncio.sleep(0.3)
    total = {key: sum(w[key] for w in windows) for key in windows[0]}
    out["resume"] = {
        "candidates": len(candidates),
        "missed_messages": RESUME_NEW_MESSAGES,
        "rounds": COST_RESUMES,
        **_per(total, COST_RESUMES),
    }
    return out


def bench_costs(name: str, url: str, ds: Dataset, workdir: Path, opts: Any) -> dict[str, Any]:
    """A fresh server process on the seeded database; on PostgreSQL with the Redis broker,
    each behind a relay that counts the round trips the process makes to it."""
    db = broker = None
    redis_url = getattr(opts, "redis_url", None)
    if name == "postgresql":
        db = TripCounter(opts.postgres.port)
        url = db.url(url)
        if redis_url:
            port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
            broker = TripCounter(port)
            redis_url = broker.url(redis_url)
    cluster = start_am(
        workdir / f"costs-{name}",
        database_url=url,
        broker_url=redis_url if name == "postgresql" else None,
    )
    readings = ServerReadings(cluster.pids[0], cluster.http_url(), db, broker)
    try:
        costs = asyncio.run(measure_costs(cluster, readings, ds))
    finally:
        readings.close()
        cluster.stop()
        for relay in (db, broker):
            if relay is not None:
                relay.stop()
    costs["broker"] = "Redis" if broker else "in-process"
    log(
        f"storage/{name}: per send {costs['send']['cpu_ms']} ms CPU, "
        f"{costs['send'].get('db_trips', '-')} database and "
        f"{costs['send'].get('broker_trips', '-')} broker round trips; per connect "
        f"{costs['connect']['cpu_ms']} ms, {costs['connect'].get('db_trips', '-')} round trips; "
        f"per resume of {costs['resume']['candidates']} candidates "
        f"{costs['resume']['cpu_ms']} ms, {costs['resume']['sql']} statements"
    )
    return costs


def _migrate(url: str, workdir: Path) -> None:
    env = {**os.environ, "AM_DATABASE_URL": url, "AM_VAR_DIR": str(workdir / "var")}
    subprocess.run([CLI, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)


def bench_database(name: str, url: str, ds: Dataset, workdir: Path, opts: Any) -> dict[str, Any]:
    log(f"storage/{name}: migrating")
    _migrate(url, workdir)
    log(f"storage/{name}: seeding {len(ds.msg_body):,} messages")
    started = time.perf_counter()
    if name == "sqlite":
        timings = seed_sqlite(Path(url.split("///", 1)[1]), ds)
    else:
        timings = asyncio.run(seed_postgres(url, ds))
    seed_s = round(time.perf_counter() - started - timings["analyze"], 1)
    log(f"storage/{name}: seeded in {seed_s} s, analyze {timings['analyze']} s ({timings})")
    users = [ds.focus_member, ds.lead_member, ds.busy_agency_user]
    cluster = start_am(workdir / f"am-{name}", database_url=url)
    try:
        tokens = {u: cluster.token(ORG, u) for u in users}
        log(f"storage/{name}: measuring over HTTP")
        load = [os.getloadavg()[0]]
        try:
            http = measure_http(cluster.http_url(), tokens, ds)
        except RuntimeError as error:
            logs = "".join(
                p.read_text(errors="replace")[-3000:] for p in cluster.workdir.glob("server-*.log")
            )
            raise RuntimeError(f"{error}\nServer log:\n{logs}") from error
        load.append(os.getloadavg()[0])
    finally:
        cluster.stop()
    log(f"storage/{name}: timing the queries in-process")
    queries = asyncio.run(measure_queries(url, ds, users))
    log(f"storage/{name}: what connects, sends and resumes cost a fresh server process")
    costs = bench_costs(name, url, ds, workdir, opts)
    history_all = [v for samples in http["history_us"].values() for v in samples]
    unread_all = [v for samples in http["unread_us"].values() for v in samples]
    result = {
        "database": name,
        "messages": len(ds.msg_body),
        "candidates": len(ds.candidates),
        "threads": ds.thread_count,
        "seed_seconds": seed_s,
        "seed_timings": timings,
        "history_ms": _pp(history_all),
        "history_by_kind_ms": {k: _pp(v) for k, v in http["history_us"].items()},
        "history_page_sizes": http["history_page_sizes"],
        "unread_ms": _pp(unread_all),
        "unread_by_user_ms": {u: _pp(v) for u, v in http["unread_us"].items()},
        "unread_candidates": http["unread_candidates"],
        "inbox_by_user_ms": {u: _pp(v) for u, v in http["inbox_us"].items()},
        "inbox_first_page": http["inbox_first_page"],
        "baseline_me_ms": _pp(http["baseline_us"]),
        "sql_statements_per_request": {
            "history": http["history_sql_per_request"],
            "unread": http["unread_sql_per_request"],
            "inbox": http["inbox_sql_per_request"],
        },
        "function_ms": {k: _pp(v) for k, v in queries["function_us"].items()},
        "sql_ms": {k: _pp(v) for k, v in queries["sql_us"].items()},
        "plans": queries["plans"],
        "load_average": [round(v, 2) for v in load],  # 1 min, before and after measuring
        "costs": costs,
    }
    result["target_met"] = {
        "history": result["history_ms"]["p99"] <= HISTORY_P99_MS,
        "unread": result["unread_by_user_ms"][ds.lead_member]["p99"] <= UNREAD_P99_MS,
        "inbox": result["inbox_by_user_ms"][ds.lead_member]["p99"] <= INBOX_P99_MS,
    }
    log(
        f"storage/{name}: history p50/p99 {result['history_ms']['p50']}/"
        f"{result['history_ms']['p99']} ms, unread p50/p99 {result['unread_ms']['p50']}/"
        f"{result['unread_ms']['p99']} ms, by user {result['unread_by_user_ms']}; "
        f"inbox by user {result['inbox_by_user_ms']}"
    )
    return result


def _visible_counts(ds: Dataset) -> dict[str, int]:
    pks = {u[1]: u[0] for u in ds.users}
    focus, lead, agency0 = pks[ds.focus_member], pks[ds.lead_member], pks[ds.busy_agency_user]
    member_of: dict[int, set[int]] = {}
    for cand, user in ds.candidate_members:
        member_of.setdefault(user, set()).add(cand)
    for cand, _, _, coordinator, _ in ds.candidates:
        member_of.setdefault(coordinator, set()).add(cand)
    linked = {c for c, u in ds.candidate_agency_users if u == agency0}
    return {
        ds.focus_member: len(member_of.get(focus, ())),
        ds.lead_member: len(member_of.get(lead, ())),
        ds.busy_agency_user: len(linked),
    }


def _pp(samples_us: list[int]) -> dict[str, float]:
    return {"p50": percentile_ms(samples_us, 0.5), "p99": percentile_ms(samples_us, 0.99)}


def _p(ms: dict[str, float]) -> str:
    return f"{ms['p50']} / {ms['p99']}"


def _markdown(results: list[dict[str, Any]], ds: Dataset) -> str:
    sizes = ds.sizes
    visible = _visible_counts(ds)
    lines = [
        "## 5. Storage: history page, unread summary and inbox",
        "",
        f"Method: the product's migrations, {sizes.messages:,} messages in "
        f"{ds.thread_count:,} threads over {sizes.candidates:,} candidates seeded in bulk SQL "
        "then ANALYZEd, and sequential requests to the real server over loopback timed for the "
        "full HTTP round trip by a minimal keep-alive HTTP/1.1 client "
        f"({sizes.history_requests} history pages of 50 messages, "
        f"{sizes.unread_requests} `GET /api/v1/unread` per user).",
        "",
        "| database | messages | candidates | seed s | history p50 ms | history p99 ms "
        "| unread p50 ms | unread p99 ms | target met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        met = r["target_met"]
        verdict = (
            "yes" if all(met.values()) else "no: " + ", ".join(k for k, v in met.items() if not v)
        )
        lines.append(
            f"| {r['database']} | {r['messages']:,} | {r['candidates']:,} | {r['seed_seconds']} "
            f"| {r['history_ms']['p50']} | {r['history_ms']['p99']} | {r['unread_ms']['p50']} "
            f"| {r['unread_ms']['p99']} | {verdict} |"
        )
    kinds = list(results[0]["history_by_kind_ms"])
    lines += [
        "",
        f"Targets: history page p99 ≤ {HISTORY_P99_MS:g} ms; unread summary p99 ≤ "
        f"{UNREAD_P99_MS:g} ms for the lead member (coordinator of "
        f"{visible[ds.lead_member]:,} candidates). Times are p50 / p99 ms: HTTP is the "
        "round trip; function the product's read function in-process (ORM and driver); SQL "
        "its main statement run straight on a driver connection. `GET /api/v1/me` is the "
        "floor under every request: authentication and HTTP alone. History pages of the "
        f"focus member: a {sizes.busy_thread:,}-message thread busy all year, a "
        f"{sizes.quiet_thread:,}-message one quiet for six months (newest page, or `before=` "
        "a random message), and the newest page of its other threads.",
        "",
        "| database | " + " | ".join(kinds) + " | `/api/v1/me` |",
        "|---|" + "---:|" * (len(kinds) + 1),
    ]
    for r in results:
        http = " | ".join(_p(r["history_by_kind_ms"][k]) for k in kinds)
        function = " | ".join(_p(r["function_ms"][f"history {k}"]) for k in kinds)
        sql = " | ".join(_p(r["sql_ms"][f"history {k}"]) for k in kinds)
        lines.append(f"| {r['database']} HTTP | {http} | {_p(r['baseline_me_ms'])} |")
        lines.append(f"| {r['database']} function | {function} | |")
        lines.append(f"| {r['database']} SQL | {sql} | |")
    lines += [
        "",
        "| database | user | candidates seen | with unread | HTTP | function | SQL |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    roles = {
        ds.focus_member: "member",
        ds.lead_member: "lead member (coordinator)",
        ds.busy_agency_user: "agency user",
    }
    for r in results:
        for user, ms in r["unread_by_user_ms"].items():
            lines.append(
                f"| {r['database']} | {roles[user]} | {visible[user]:,} "
                f"| {r['unread_candidates'][user]} | {_p(ms)} "
                f"| {_p(r['function_ms'][f'unread {user}'])} "
                f"| {_p(r['sql_ms'][f'unread {user}'])} |"
            )
    counts = [(r["database"], r["sql_statements_per_request"]) for r in results]
    if all(c["history"] is not None for _, c in counts):
        lines += [
            "",
            "SQL statements per request (the server's /metrics; SQLite counts its BEGINs): "
            + "; ".join(
                f"{db} history {c['history']:g}, unread {c['unread']:g}, inbox {c['inbox']:g}"
                for db, c in counts
            )
            + ".",
        ]
    lines += [
        "",
        f"The inbox (`GET /api/v1/conversations`, pages of 50; target p99 ≤ {INBOX_P99_MS:g} "
        "ms for the lead member): each user's first page and, every other request, the "
        "next one (`before=`).",
        "",
        "| database | user | candidates seen | first page | HTTP | function | SQL (page) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for user, ms in r["inbox_by_user_ms"].items():
            lines.append(
                f"| {r['database']} | {roles[user]} | {visible[user]:,} "
                f"| {r['inbox_first_page'][user]} | {_p(ms)} "
                f"| {_p(r['function_ms'][f'inbox {user}'])} "
                f"| {_p(r['sql_ms'][f'inbox {user}'])} |"
            )
    lines += ["", *_costs_markdown(results, ds)]
    loads = ", ".join(f"{r['database']} {r['load_average'][1]}" for r in results)
    lines += [
        "",
        f"Machine load average (1 min) after measuring: {loads}, on {os.cpu_count()} CPUs.",
    ]
    return "\n".join(lines) + "\n"


def _costs_markdown(results: list[dict[str, Any]], ds: Dataset) -> list[str]:
    with_costs = [r for r in results if r.get("costs")]
    if not with_costs:
        return []

    def cell(row: dict[str, Any], key: str, digits: int = 2) -> str:
        value = row.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "What operations cost a fresh server process (one, on the same database; on "
        "PostgreSQL with the Redis broker, each reached through a relay that counts round "
        "trips: a round trip is the process sending after the server last answered). CPU "
        "is every thread of the process (/proc schedstat) less its idle background work, "
        "statements its /metrics (SQLite counts its BEGINs). Connect: "
        f"{COST_CONNECTS} users new to the process, half members and half agency users, one "
        "socket each, until the answer to a first `ping`. Send: one socket, "
        f"{COST_SENDS} sends one after the other, each waiting for its ack, nobody else "
        f"online; pipelined: {COST_PIPELINED} sends written at once. Resume: the focus "
        f"member's tab, away while {RESUME_NEW_MESSAGES} messages were posted in its "
        "candidates, reconnects and subscribes to every candidate with `after` at once, "
        "until every ack and every missed message has arrived (mean of "
        f"{COST_RESUMES} rounds).",
        "",
        "| database | operation | CPU ms | wall ms | SQL statements | database round trips "
        "| broker round trips |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in with_costs:
        costs = r["costs"]
        ops = [
            ("connect (user new to the process)", costs["connect"]),
            ("send", costs["send"]),
            (
                f"send, pipelined ({costs['pipelined']['ops_per_second']:,.0f} sends/s)",
                costs["pipelined"],
            ),
            (
                f"resume a tab of {costs['resume']['candidates']} candidates "
                f"({costs['resume']['missed_messages']} missed messages)",
                costs["resume"],
            ),
        ]
        for label, row in ops:
            lines.append(
                f"| {r['database']} | {label} | {cell(row, 'cpu_ms')} | {cell(row, 'wall_ms')} "
                f"| {cell(row, 'sql', 1)} | {cell(row, 'db_trips', 1)} "
                f"| {cell(row, 'broker_trips', 1)} |"
            )
    return lines


def run(opts: Any) -> dict[str, Any]:
    sizes = QUICK if opts.quick else FULL
    workdir = Path(opts.workdir) / "storage"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"storage: generating {sizes.messages:,} messages over {sizes.candidates:,} candidates")
    ds = make_dataset(sizes)
    log(
        f"storage: generated {ds.thread_count:,} threads, {len(ds.read_markers):,} read markers, "
        f"{len(ds.events):,} retained events in {ds.seconds:.1f} s"
    )
    results = [
        bench_database("sqlite", f"sqlite+aiosqlite:///{workdir / 'storage.db'}", ds, workdir, opts)
    ]
    opts.postgres.create_database("am_storage")
    results.append(bench_database("postgresql", opts.postgres.url("am_storage"), ds, workdir, opts))
    return {
        "name": "storage",
        "markdown": _markdown(results, ds),
        "data": {
            "quick": bool(opts.quick),
            "generate_seconds": round(ds.seconds, 1),
            "threads": ds.thread_count,
            "read_markers": len(ds.read_markers),
            "retained_events": len(ds.events),
            "busy_thread_messages": sizes.busy_thread,
            "visible_candidates": _visible_counts(ds),
            "focus_member": ds.focus_member,
            "lead_member": ds.lead_member,
            "databases": results,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plans", action="store_true", help="print the query plans too")
    args = parser.parse_args()
    from harness.services import PostgresServer, RedisServer

    postgres, redis = PostgresServer.start(), RedisServer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="am-bench-storage-") as tmp:
            started = time.perf_counter()
            opts = SimpleNamespace(
                quick=args.quick, workdir=Path(tmp), postgres=postgres, redis_url=redis.url
            )
            result = run(opts)
            log(f"storage: done in {time.perf_counter() - started:.0f} s")
    finally:
        redis.stop()
        postgres.stop()
    print(result["markdown"])
    if args.plans:
        for db in result["data"]["databases"]:
            for label, plan in db["plans"].items():
                print(f"### {db['database']}: {label}\n{plan['sql']}\n" + "\n".join(plan["plan"]))


if __name__ == "__main__":
    main()
