"""Shared fixtures: databases (SQLite and a real PostgreSQL), the app, and an API helper.

Tests that take the `db_url` fixture (directly or through `app`/`api`) run twice: once on
SQLite and once on the PostgreSQL server that this session starts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from playwright.async_api import Browser, async_playwright
from sqlalchemy import text
from starlette.applications import Starlette

from harness.services import PostgresServer, RedisServer
from server.app import create_app
from server.settings import Settings
from storage.database import Database
from storage.models import Base
from tests.support.browser import Site, launch, served_site
from tests.support.realtime import serve
from tests.support.world import Api, make_settings, migrate_database, populate_world


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> str:
    postgres.create_database("am_test")
    url = postgres.url("am_test")
    asyncio.run(migrate_database(url))
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    asyncio.run(migrate_database(f"sqlite+aiosqlite:///{path}"))
    return path


async def _truncate(url: str) -> None:
    db = Database(url)
    try:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await db.close()


def _fresh_database(request: pytest.FixtureRequest, directory: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = directory / "test.db"
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_template")
    asyncio.run(_truncate(url))
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    return _fresh_database(request, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database of each kind, shared by the tests of one module."""
    return _fresh_database(request, tmp_path_factory.mktemp("module-db"))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings, auto_migrate=False)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client)


@pytest.fixture
async def live(app: Starlette) -> AsyncIterator[str]:
    """The app served over real HTTP and WebSocket by uvicorn; yields its base URL."""
    async with serve(app, lifespan="off") as base_url:
        yield base_url


@pytest.fixture
async def world(api: Api) -> Api:
    """The org of `populate_world`, provisioned through the app's API."""
    return await populate_world(api)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_world(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    """The org of `populate_world`, provisioned once per module (and database kind) for
    tests that only read it or add things of their own. Such a module runs its tests in
    the module's event loop: `pytestmark = pytest.mark.asyncio(loop_scope="module")`."""
    settings = make_settings(module_db_url, tmp_path_factory.mktemp("shared-world"))
    application = create_app(settings, auto_migrate=False)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield await populate_world(Api(client))


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("AM_LOG_LEVEL", "WARNING")


# --- browser tests: Chromium through Playwright, and the demo site it opens ----------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """One Chromium per test module (browser tests run their module on one event loop)."""
    async with async_playwright() as playwright:
        launched = await launch(playwright)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def site(chromium: Browser, sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Site]:
    """The app served in-process on a SQLite file, in demo mode, with org acme provisioned."""
    async with served_site(chromium, sqlite_template, tmp_path) as served:
        yield served
