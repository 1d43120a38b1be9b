"""Persistence: SQLAlchemy models, the database handle and Alembic migrations."""

from storage.database import Database, default_sqlite_url, is_sqlite

__all__ = ["Database", "default_sqlite_url", "is_sqlite"]
