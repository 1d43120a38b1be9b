"""Schema migrations through Alembic, usable from the CLI and from the app's startup."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from storage.database import Database

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


async def upgrade(db: Database) -> None:
    """Brings the schema to the newest revision, in the caller's event loop."""

    def _upgrade(connection: Connection) -> None:
        config = alembic_config(db.url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def check_up_to_date(db: Database) -> None:
    current, head = await current_revision(db), head_revision(db.url)
    if current != head:
        raise SchemaOutOfDate(
            f"The database schema is at revision {current or 'none'} but this server needs "
            f"{head}. Run `agency-messaging migrate` first."
        )
