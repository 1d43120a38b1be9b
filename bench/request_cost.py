"""The cost of one REST request inside one process: CPU, SQL statements and database
round trips per send, history page and candidate page, through the whole app (routing,
middleware, rules, storage) but no network. Run from a checkout to measure that checkout:

    .venv/bin/python bench/request_cost.py [N] [--postgres]

On SQLite by default; `--postgres` starts a private PostgreSQL server (harness) and counts
round trips too: statements, each transaction's BEGIN and COMMIT (none for a connection in
autocommit), and each connection ping (three round trips with asyncpg: BEGIN, ";",
ROLLBACK). It prints per-request means
over N requests of each kind, after 20 warm-up sends.

Then the resume of one browser tab: a socket that reconnects and subscribes again to 50
candidates with `after`, each having one message it missed (driven through the app's ASGI
interface, in this process). Its rows are totals per resume (not per candidate), over
RESUMES resumes: "warm" while another socket of the process follows the same candidates,
"cold" when nobody does; in 50 `subscribe` frames, and in one batch frame.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402
from sqlalchemy import event  # noqa: E402

from harness.services import PostgresServer  # noqa: E402
from server.app import create_app  # noqa: E402
from server.domain.auth import make_user_token  # noqa: E402
from server.settings import Settings  # noqa: E402
from storage import migrate  # noqa: E402
from storage.database import Database  # noqa: E402

SECRET = "bench-secret-" + "x" * 32
SERVICE_TOKEN = "bench-service-token-0123456789"
WARM_UP = 20
RESUME_CANDIDATES = 50
RESUMES = 10


async def provision(client: httpx.AsyncClient) -> None:
    """Org acme: member mia coordinates candidate c1, with ann of agency ag."""
    service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("acme", {"name": "Acme"}),
        ("acme/agencies/ag", {"name": "Ag"}),
        ("acme/users/mia", {"name": "Mia", "email": "mia@acme.example", "kind": "member"}),
        (
            "acme/users/ann",
            {"name": "Ann", "email": "ann@ag.example", "kind": "agency", "agency": "ag"},
        ),
        (
            "acme/candidates/c1",
            {"name": "C1", "coordinator": "mia", "members": ["mia"], "agency_users": ["ann"]},
        ),
    ]
    for path, body in bodies:
        response = await client.put(f"/api/v1/orgs/{path}", json=body, headers=service)
        response.raise_for_status()


async def measure(n: int, url: str | None) -> None:
    directory = Path(tempfile.mkdtemp(prefix="am-request-cost-"))
    url = url or f"sqlite+aiosqlite:///{directory / 'bench.db'}"
    db = Database(url)
    await migrate.upgrade(db)
    await db.close()
    settings = Settings(
        secret=SECRET,
        service_token=SERVICE_TOKEN,
        database_url=url,
        var_dir=directory,
        public_url="http://testserver",
        send_rate_per_minute=0,
        email_delay_seconds=3600.0,
        reply_domain="reply.testserver",
    )
    app = create_app(settings, auto_migrate=False)
    async with LifespanManager(app):
        engine = app.state.services.db.engine
        counts = {"statements": 0, "transactions": 0, "pings": 0}

        def count(what: str) -> Callable[..., None]:
            return lambda *args, **kwargs: counts.__setitem__(what, counts[what] + 1)

        event.listen(engine.sync_engine, "before_cursor_execute", count("statements"))

        def transaction_ended(conn: Any) -> None:
            # A connection in autocommit (reads, and a send's one statement on PostgreSQL)
            # sends no BEGIN and no COMMIT: its statements are all its round trips.
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                count("transactions")()

        event.listen(engine.sync_engine, "commit", transaction_ended)
        event.listen(engine.sync_engine, "rollback", transaction_ended)
        ping = engine.dialect.do_ping

        def counted_ping(connection: Any) -> bool:
            count("pings")()
            return bool(ping(connection))

        engine.dialect.do_ping = counted_ping
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await provision(client)
            ann = {"Authorization": f"Bearer {make_user_token(SECRET, 'acme', 'ann')}"}
            opened = await client.post(
                "/api/v1/candidates/c1/threads", json={"private": False}, headers=ann
            )
            thread = opened.json()["id"]
            messages = f"/api/v1/threads/{thread}/messages"
            for i in range(WARM_UP):
                await client.post(messages, json={"body": f"warm-up {i}"}, headers=ann)
            reply_by_email = email_reply(app, settings, thread)
            kinds: dict[str, Callable[[int], Awaitable[Any]]] = {
                "send": lambda i: client.post(messages, json={"body": f"m {i}"}, headers=ann),
                "history page": lambda i: client.get(f"{messages}?limit=50", headers=ann),
                "candidate page": lambda i: client.get("/api/v1/candidates/c1", headers=ann),
                "email reply": reply_by_email,
            }
            print(f"{'request':<16}{'CPU ms':>8}{'statements':>12}{'pings':>7}{'round trips':>13}")
            for name, request in kinds.items():
                counts.update(statements=0, transactions=0, pings=0)
                started = time.process_time()
                for i in range(n):
                    response = await request(i)
                    if isinstance(response, httpx.Response):
                        response.raise_for_status()
                cpu_ms = (time.process_time() - started) / n * 1000
                trips = counts["statements"] + 2 * counts["transactions"] + 3 * counts["pings"]
                # SQLite runs in the process: no round trips to count.
                trips_each = trips / n if url.startswith("postgresql") else 0.0
                print(
                    f"{name:<16}{cpu_ms:>8.2f}{counts['statements'] / n:>12.1f}"
                    f"{counts['pings'] / n:>7.1f}{trips_each:>13.1f}"
                )
            await measure_resumes(app, client, counts)


def email_reply(app: Any, settings: Settings, thread: int) -> Callable[[int], Awaitable[Any]]:
    """One reply by email, as the receiver handles it after the SMTP dialogue: its RCPT TO
    (the address checked, its user and thread looked up) and its DATA (parsed, stripped of
    the quoted alert, posted, the replier's marker moved). A Gmail-shaped reply of 2 KB."""
    from aiosmtpd.smtp import Envelope

    from server import inbound

    services = app.state.services
    receiver = inbound.receiver(settings, services.db, services.messaging, services.send_limiter)
    addresses = inbound.reply_addresses(settings)
    assert addresses is not None
    quoted = "".join(
        f"> Line {k} of the alert they answer, quoted below the reply.\r\n" for k in range(30)
    )

    async def one(i: int) -> None:
        address = addresses.address(2, thread)  # ann (pk 2), as provisioned
        envelope = Envelope()
        envelope.mail_from = "ann@ag.example"
        status = await receiver.handle_RCPT(None, None, envelope, address, [])  # type: ignore[arg-type]
        envelope.original_content = (
            f"From: Ann <ann@ag.example>\r\nTo: {address}\r\nSubject: Re: New message\r\n"
            f"Message-ID: <bench-{i}-{time.time_ns()}@ag.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Thanks, reply number {i}.\r\n\r\n"
            "On Tue, Dec 1, 2026 at 3:04 PM Agency Messaging <alerts@testserver> wrote:\r\n"
            f"{quoted}"
        ).encode()
        status = await receiver.handle_DATA(None, None, envelope)  # type: ignore[arg-type]
        assert status.startswith("250 2.0.0 Posted"), status

    return one


# --- the resume of one tab ----------------------------------------------------------------


class AsgiSocket:
    """A WebSocket client that drives the app's ASGI interface directly: no network, so
    the process's CPU is the server's (and this small driver's)."""

    def __init__(self, app: Any, token: str) -> None:
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepted = asyncio.Event()
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "http_version": "1.1",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "subprotocols": [],
        }
        self._to_app.put_nowait({"type": "websocket.connect"})
        self._task = asyncio.create_task(app(scope, self._to_app.get, self._from_app))

    async def _from_app(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            self.accepted.set()
        elif message["type"] == "websocket.send":
            self.frames.put_nowait(orjson.loads(message["text"]))

    @classmethod
    async def open(cls, app: Any, token: str) -> AsgiSocket:
        socket = cls(app, token)
        await asyncio.wait_for(socket.accepted.wait(), 10)
        return socket

    def send(self, frame: dict[str, Any]) -> None:
        self._to_app.put_nowait({"type": "websocket.receive", "text": orjson.dumps(frame).decode()})

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        """Reads frames until `done` says the last one completes what was awaited."""
        while not done(await asyncio.wait_for(self.frames.get(), 10)):
            pass

    async def close(self) -> None:
        self._to_app.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self._task, 10)


async def provision_resume(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """RESUME_CANDIDATES candidates that mia and hal (members) and ann follow, each with an
    agency thread: their ids and the messages path of each thread."""
    service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    hal = {"name": "Hal", "email": "hal@acme.example", "kind": "member"}
    response = await client.put("/api/v1/orgs/acme/users/hal", json=hal, headers=service)
    response.raise_for_status()
    ann = {"Authorization": f"Bearer {make_user_token(SECRET, 'acme', 'ann')}"}
    found = []
    for i in range(RESUME_CANDIDATES):
        candidate = f"r{i:02d}"
        body = {"name": candidate, "members": ["mia", "hal"], "agency_users": ["ann"]}
        response = await client.put(
            f"/api/v1/orgs/acme/candidates/{candidate}", json=body, headers=service
        )
        response.raise_for_status()
        opened = await client.post(
            f"/api/v1/candidates/{candidate}/threads", json={"private": False}, headers=ann
        )
        found.append((candidate, f"/api/v1/threads/{opened.json()['id']}/messages"))
    return found


async def resume_once(
    app: Any, candidates: list[str], seen: dict[str, int], batch: bool, counts: dict[str, int]
) -> tuple[float, int, int]:
    """Subscribes a new socket of mia to every candidate after the seq it saw; waits for
    every ack and replayed message. Returns the CPU seconds and SQL statements it took (the
    handshake apart), and how many messages were replayed."""
    socket = await AsgiSocket.open(app, make_user_token(SECRET, "acme", "mia"))
    socket.send({"op": "ping", "ref": "ready"})  # answered once the handshake's work is done
    await socket.until(lambda frame: frame.get("type") == "pong")
    counts.update(statements=0)
    acks, replayed = 0, 0

    def answered(frame: dict[str, Any]) -> bool:
        nonlocal acks, replayed
        if frame.get("type") == "message.created":
            seen[frame["candidate"]] = max(seen[frame["candidate"]], frame["seq"])
            replayed += 1
        elif frame.get("type") == "ack":
            results = frame["candidates"] if batch else [frame]
            for result in results:
                seen[result["candidate"]] = max(seen[result["candidate"]], result["seq"])
            acks += len(results)
        elif frame.get("type") == "error":
            raise RuntimeError(frame)
        return acks == len(candidates) and replayed == len(candidates)

    started = time.process_time()
    if batch:
        wanted = [{"candidate": c, "after": seen[c]} for c in candidates]
        socket.send({"op": "subscribe", "candidates": wanted, "ref": 1})
    else:
        for i, c in enumerate(candidates):
            socket.send({"op": "subscribe", "candidate": c, "after": seen[c], "ref": i})
    await socket.until(answered)
    cpu, statements = time.process_time() - started, counts["statements"]
    await socket.close()
    return cpu, statements, replayed


async def measure_resumes(app: Any, client: httpx.AsyncClient, counts: dict[str, int]) -> None:
    threads = await provision_resume(client)
    candidates = [c for c, _ in threads]
    ann = {"Authorization": f"Bearer {make_user_token(SECRET, 'acme', 'ann')}"}
    seen = dict.fromkeys(candidates, 0)
    print(f"\n{'resume of one tab (per resume)':<32}{'CPU ms':>8}{'statements':>12}")
    for batch in (False, True):
        for warm in (True, False):
            holder = None
            if warm:  # another tab of the process follows the same candidates
                holder = await AsgiSocket.open(app, make_user_token(SECRET, "acme", "hal"))
                wanted = [{"candidate": c} for c in candidates]
                if batch:
                    holder.send({"op": "subscribe", "candidates": wanted, "ref": 1})
                    await holder.until(lambda f: f.get("type") in ("ack", "error"))
                else:
                    for i, c in enumerate(candidates):
                        holder.send({"op": "subscribe", "candidate": c, "ref": i})
                    await holder.until(lambda f: f.get("ref") == len(candidates) - 1)
            cpu, statements = 0.0, 0
            for _ in range(RESUMES):
                for _, messages in threads:  # one message missed in every candidate
                    sent = await client.post(messages, json={"body": "missed"}, headers=ann)
                    sent.raise_for_status()
                await asyncio.sleep(0.01)  # the live events reach the holder's channels
                spent, run, replayed = await resume_once(app, candidates, seen, batch, counts)
                assert replayed == len(candidates), replayed
                cpu += spent
                statements += run
            if holder is not None:
                await holder.close()
            form = "batch" if batch else f"{len(candidates)} frames"
            name = f"resume {len(candidates)}, {form}, {'warm' if warm else 'cold'}"
            print(f"{name:<32}{cpu / RESUMES * 1000:>8.2f}{statements / RESUMES:>12.1f}")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 300
    if "--postgres" not in sys.argv:
        asyncio.run(measure(n, None))
        return
    server = PostgresServer.start()
    try:
        server.create_database("bench")
        asyncio.run(measure(n, server.url("bench")))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
