"""The connections ``Store`` runs its one set of queries on: an SQLite file (the default) or
a PostgreSQL database (``--database``) that any number of members share.

``Connection`` is all the dialects differ in: placeholders, column types, how schema
versions, tables and columns are read, and how two members migrating at once are kept
apart. The queries themselves live once, in ``server/store.py``.
"""

from __future__ import annotations

from .base import Connection, Dialect, Statement
from .postgres import DatabaseUnavailable, PostgresConnection, PostgresURL, parse_database_url
from .sqlite import CorruptDatabase, SqliteConnection, check_database

__all__ = [
    "Connection",
    "CorruptDatabase",
    "DatabaseUnavailable",
    "Dialect",
    "PostgresConnection",
    "PostgresURL",
    "SqliteConnection",
    "Statement",
    "check_database",
    "parse_database_url",
]
