"""What a store connection offers, whichever database is behind it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Connection", "Dialect", "Statement"]

#: One SQL statement with ``?`` placeholders, and its arguments.
Statement = tuple[str, tuple]


@dataclass(frozen=True)
class Dialect:
    """The column types the schema text leaves open (``{id}``, ``{blob}``)."""

    name: str
    #: An integer primary key the database numbers by itself.
    id: str
    blob: str


class Connection(Protocol):
    dialect: Dialect

    def tx(self, statements: list[Statement], crash_at: str | None = None, round_: int | None = None) -> list[list[tuple]]:
        """Run ``statements`` as one transaction; each one's rows (empty when it returns none).
        ``crash_at``: a crash point between the last statement and the commit, for tests."""
        ...

    def query(self, sql: str, args: tuple = ()) -> list[tuple]: ...

    def tables(self) -> set[str]: ...

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty if there is no such table)."""
        ...

    def schema_version(self) -> int: ...

    def set_schema_version(self, version: int) -> None: ...

    def migrating(self) -> contextlib.AbstractContextManager[None]:
        """Held around creating and migrating the schema: one member at a time."""
        ...

    def close(self) -> None: ...
