"""Persistence: SQLAlchemy models, the database handle and Alembic migrations.

Layer rule: the bottom layer; imports nothing of server, channels or mailer.
"""

from storage.database import Database, default_sqlite_url, is_sqlite

__all__ = ["Database", "default_sqlite_url", "is_sqlite"]
