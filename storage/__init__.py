"""Persistence: SQLAlchemy models (`models`), the database handle (`database`), and the
Alembic migrations (`migrate`, `migrations/`).

Layer rule: the bottom layer; imports nothing of server, channels or mailer.
"""
