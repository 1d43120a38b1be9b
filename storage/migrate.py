"""Schema migrations through Alembic, usable from the CLI and from the app's startup."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from storage.database import Database, create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaOutOfDate(RuntimeError):
    """The database schema is older (or newer) than this version of the server expects."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current_revision)


class ForeignKeysBroken(RuntimeError):
    """A migration left rows that point at missing rows; nothing was committed."""


async def upgrade(db: Database) -> None:
    """Brings the schema to the newest revision, in the caller's event loop."""
    if await current_revision(db) == head_revision(db.url):
        return

    def _upgrade(connection: Connection) -> None:
        config = alembic_config(db.url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    if not db.sqlite:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    # SQLite changes a table by rebuilding it, and only with foreign keys off (the pragma
    # is ignored inside a transaction, hence a connection of its own); the migrations'
    # environment checks them before the commit instead. IMMEDIATE: another process's
    # write between our first read and first write would fail the migration.
    engine = create_engine(db.url, sqlite_foreign_keys=False, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


def check_foreign_keys(connection: Connection) -> None:
    """On SQLite, after migrations ran with foreign keys off."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise ForeignKeysBroken(
            f"The migration left {len(broken)} rows pointing at missing rows "
            f"(tables: {', '.join(tables)}); it was rolled back."
        )


async def check_up_to_date(db: Database) -> None:
    current, head = await current_revision(db), head_revision(db.url)
    if current != head:
        raise SchemaOutOfDate(
            f"The database schema is at revision {current or 'none'} but this server needs "
            f"{head}. Run `agency-messaging migrate` first."
        )
