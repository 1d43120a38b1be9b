"""The places that extend a dependency through its internals (the connection guard in
uvicorn's httptools protocol and the websockets handshake state; the inline SQLite
connection in aiosqlite), each pinned in pyproject.toml to the version it was written
against. These tests fail first when an
upgrade changes what they rely on."""

from __future__ import annotations

import inspect
import threading

import aiosqlite
import uvicorn
import websockets
from sqlalchemy import text
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol

from server.edge.guard import GuardedHttpToolsProtocol
from storage.database import Database
from storage.sqlite_inline import InlineConnection


def _minor(version: str) -> tuple[int, int]:
    major, minor, *_ = version.split(".")
    return int(major), int(minor)


def test_the_installed_versions_are_the_pinned_ones() -> None:
    assert _minor(uvicorn.__version__) == (0, 54)
    assert _minor(aiosqlite.__version__) == (0, 22)
    assert _minor(websockets.__version__)[0] == 17


def test_the_attributes_the_guard_reads_are_still_there() -> None:
    # Set by HttpToolsProtocol itself and read by the guard's callbacks.
    source = inspect.getsource(HttpToolsProtocol)
    for attribute in ("self.url", "self.headers", "self.client", "self.transport", "self.loop"):
        assert attribute in source, attribute
    # The refused-handshake flush: uvicorn's sans-I/O WebSocket protocol keeps the
    # websockets ServerProtocol as `conn`, which records a refusal and holds its answer.
    assert "self.conn = ServerProtocol(" in inspect.getsource(WebSocketsSansIOProtocol)
    assert "handshake_exc" in inspect.getsource(ServerProtocol.accept)
    assert callable(ServerProtocol.data_to_send)


def test_the_guard_overrides_only_methods_that_uvicorn_has() -> None:
    ours = {
        name
        for name, value in vars(GuardedHttpToolsProtocol).items()
        if callable(value) and not name.startswith("_")
    }
    assert ours <= set(dir(HttpToolsProtocol)) | {"drop_pending"}
    for name in ours - {"drop_pending"}:
        theirs = inspect.signature(getattr(HttpToolsProtocol, name))
        mine = inspect.signature(getattr(GuardedHttpToolsProtocol, name))
        assert list(theirs.parameters) == list(mine.parameters), name


def test_aiosqlite_still_has_the_methods_the_inline_connection_replaces() -> None:
    for name in ("_connect", "_execute"):
        assert inspect.iscoroutinefunction(getattr(aiosqlite.Connection, name)), name
        assert name in vars(InlineConnection)


async def test_sqlite_statements_run_on_the_event_loop_thread(tmp_path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    seen: list[int] = []
    try:
        async with db.read() as session:
            raw = await session.connection()
            driver = (await raw.get_raw_connection()).driver_connection
            assert isinstance(driver, InlineConnection)
            original = driver._execute

            async def spy(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
                def run(*inner, **named):  # type: ignore[no-untyped-def]
                    seen.append(threading.get_ident())  # where the statement really runs
                    return fn(*inner, **named)

                return await original(run, *args, **kwargs)

            driver._execute = spy  # type: ignore[method-assign]
            assert (await session.execute(text("select 1"))).scalar_one() == 1
    finally:
        await db.close()
    assert seen and set(seen) == {threading.get_ident()}
