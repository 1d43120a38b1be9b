"""The cost of one REST request inside one process: CPU, SQL statements and database
round trips per send, history page and candidate page, through the whole app (routing,
middleware, rules, storage) but no network. Run from a checkout to measure that checkout:

    .venv/bin/python bench/request_cost.py [N] [--postgres]

On SQLite by default; `--postgres` starts a private PostgreSQL server (harness) and counts
round trips too: statements, each transaction's BEGIN and COMMIT, and each connection
ping (three round trips with asyncpg: BEGIN, ";", ROLLBACK). It prints per-request means
over N requests of each kind, after 20 warm-up sends.
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
    )
    app = create_app(settings, auto_migrate=False)
    async with LifespanManager(app):
        engine = app.state.services.db.engine
        counts = {"statements": 0, "transactions": 0, "pings": 0}

        def count(what: str) -> Callable[..., None]:
            return lambda *args, **kwargs: counts.__setitem__(what, counts[what] + 1)

        event.listen(engine.sync_engine, "before_cursor_execute", count("statements"))
        event.listen(engine.sync_engine, "commit", count("transactions"))
        event.listen(engine.sync_engine, "rollback", count("transactions"))
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
            kinds: dict[str, Callable[[int], Awaitable[httpx.Response]]] = {
                "send": lambda i: client.post(messages, json={"body": f"m {i}"}, headers=ann),
                "history page": lambda i: client.get(f"{messages}?limit=50", headers=ann),
                "candidate page": lambda i: client.get("/api/v1/candidates/c1", headers=ann),
            }
            print(f"{'request':<16}{'CPU ms':>8}{'statements':>12}{'pings':>7}{'round trips':>13}")
            for name, request in kinds.items():
                counts.update(statements=0, transactions=0, pings=0)
                started = time.process_time()
                for i in range(n):
                    response = await request(i)
                    response.raise_for_status()
                cpu_ms = (time.process_time() - started) / n * 1000
                trips = counts["statements"] + 2 * counts["transactions"] + 3 * counts["pings"]
                # SQLite runs in the process: no round trips to count.
                trips_each = trips / n if url.startswith("postgresql") else 0.0
                print(
                    f"{name:<16}{cpu_ms:>8.2f}{counts['statements'] / n:>12.1f}"
                    f"{counts['pings'] / n:>7.1f}{trips_each:>13.1f}"
                )


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
