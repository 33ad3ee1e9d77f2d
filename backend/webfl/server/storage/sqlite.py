"""The embedded default: one SQLite file in the data folder, WAL mode (readers never block
the commit), checked for damage before anything writes to it (``CorruptDatabase``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from ..crashpoints import crashpoint
from .base import Dialect, Statement

__all__ = ["CorruptDatabase", "SqliteConnection", "check_database"]

_SQLITE_MAGIC = b"SQLite format 3\x00"

SQLITE = Dialect("sqlite", id="INTEGER PRIMARY KEY", blob="BLOB")


class CorruptDatabase(Exception):
    """The database file is damaged; the message says how and what the operator can do."""


def _damage(path: Path) -> str | None:
    """What is wrong with an existing database file, or None if it reads as sound."""
    size = path.stat().st_size
    if size == 0:
        return None  # created but never written: an empty database
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return "it does not start with an SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if page_size < 512 or size % page_size or size < pages * page_size:
        return f"it is truncated ({size} bytes; its header describes {pages} pages of {page_size})"
    # Read-only: checking must never change the file. Without a WAL to replay, immutable
    # also keeps SQLite from creating -wal and -shm files beside a damaged database.
    wal = path.with_name(path.name + "-wal")
    flags = "mode=ro" if wal.exists() and wal.stat().st_size else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True)
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it: {exc}"
    if problems != ["ok"]:
        return "SQLite's integrity check failed: " + "; ".join(problems)
    return None


def check_database(path: Path) -> None:
    """Raise ``CorruptDatabase`` if the file at ``path`` exists and is damaged."""
    if not path.exists():
        return
    what = _damage(path)
    if what is not None:
        raise CorruptDatabase(
            f"the database {path} is damaged: {what}. webfl has not changed it and will not start on it. "
            f"Restore it (and any {path.name}-wal file) from a backup, or move it aside "
            f"(mv {path} {path}.damaged; the same for {path.name}-wal and {path.name}-shm if present) "
            "to start with an empty history and a fresh model."
        )


def _open(path: Path) -> sqlite3.Connection:
    """Open (creating, mode 0600) the database; SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_database(path)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    return sqlite3.connect(path, check_same_thread=False, isolation_level=None)


class SqliteConnection:
    """One connection, used by one thread at a time (the engine commits from a worker thread)."""

    dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = _open(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")

    def tx(self, statements: list[Statement], crash_at: str | None = None, round_: int | None = None) -> list[list[tuple]]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursors = [self._db.execute(sql, args) for sql, args in statements]
                rows = [cur.fetchall() if cur.description else [] for cur in cursors]
                if crash_at:
                    crashpoint(crash_at, round_)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return rows

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def tables(self) -> set[str]:
        return {name for (name,) in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.query(f"PRAGMA table_info({table})")}

    def schema_version(self) -> int:
        return int(self.query("PRAGMA user_version")[0][0])

    def set_schema_version(self, version: int) -> None:
        with self._lock:
            self._db.execute(f"PRAGMA user_version = {int(version)}")

    def migrating(self) -> contextlib.AbstractContextManager[None]:
        # One process owns a data folder; nothing else migrates this file at the same time.
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def renaming_tables(self) -> Iterator[None]:
        # Renaming must not rewrite other tables' REFERENCES runs(id) to the old copy.
        with self._lock:
            self._db.execute("PRAGMA legacy_alter_table = ON")
        try:
            yield
        finally:
            with self._lock:
                self._db.execute("PRAGMA legacy_alter_table = OFF")

    def close(self) -> None:
        with self._lock:
            self._db.close()
