"""Durable state in SQLite: runs, committed rounds with their metrics, and a
checkpoint of the global model at every commit.

Individual updates are never stored: they are folded into the round's aggregate
as they arrive. Each commit is one transaction, so a crash leaves either the old
round or the new one, never half of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .crashpoints import crashpoint

__all__ = ["RoundRecord", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    run_id INTEGER REFERENCES runs(id),
    model_version INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    loss REAL NOT NULL,
    participants INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    committed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    model_version INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    params BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS server_opt_state (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    model_version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    steps INTEGER NOT NULL,
    state BLOB
);
"""


@dataclass(frozen=True)
class RoundRecord:
    round: int
    run_id: int | None
    model_version: int
    accuracy: float
    loss: float
    participants: int
    bytes_up: int
    bytes_down: int
    duration_s: float
    committed_at: float

    def to_dict(self) -> dict:
        return asdict(self)


class Store:
    """One SQLite file in the data folder (WAL mode: readers never block the commit)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, statements: list[tuple[str, tuple]], crash_at: str | None = None, round_: int | None = None) -> list[sqlite3.Cursor]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursors = [self._db.execute(sql, args) for sql, args in statements]
                if crash_at:
                    crashpoint(crash_at, round_)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return cursors

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- meta ------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._tx([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))])

    # -- runs ------------------------------------------------------------------

    def start_run(self, config: dict) -> int:
        (cur,) = self._tx([("INSERT INTO runs (config, started_at, status) VALUES (?, ?, 'running')", (json.dumps(config), time.time()))])
        return int(cur.lastrowid)

    def end_run(self, run_id: int, status: str) -> None:
        self._tx([("UPDATE runs SET ended_at = ?, status = ? WHERE id = ?", (time.time(), status, run_id))])

    def interrupted_runs(self) -> list[int]:
        """Runs still marked running: the server stopped under them."""
        return [r[0] for r in self._query("SELECT id FROM runs WHERE status = 'running' ORDER BY id")]

    def run_config(self, run_id: int) -> dict:
        return json.loads(self._query("SELECT config FROM runs WHERE id = ?", (run_id,))[0][0])

    def runs(self) -> list[dict]:
        """Every run, oldest first: ``id``, ``status`` (running, completed, stopped, failed,
        interrupted), ``started_at``, ``ended_at`` and ``config``."""
        rows = self._query("SELECT id, status, started_at, ended_at, config FROM runs ORDER BY id")
        return [{"id": i, "status": st, "started_at": t0, "ended_at": t1, "config": json.loads(c)} for i, st, t0, t1, c in rows]

    def rounds_in_run(self, run_id: int) -> int:
        return int(self._query("SELECT COUNT(*) FROM rounds WHERE run_id = ?", (run_id,))[0][0])

    def server_opt_state(self, run_id: int) -> tuple[int, str, int, np.ndarray | None] | None:
        """``(model_version, spec, steps, state)`` as of the run's last commit."""
        rows = self._query("SELECT model_version, spec, steps, state FROM server_opt_state WHERE run_id = ?", (run_id,))
        if not rows:
            return None
        version, spec, steps, blob = rows[0]
        return int(version), spec, int(steps), None if blob is None else np.frombuffer(blob, dtype="<f4").copy()

    # -- rounds and checkpoints ------------------------------------------------

    def save_checkpoint(self, model_version: int, task: str, model: str, params: np.ndarray) -> None:
        self._tx([_checkpoint_sql(model_version, task, model, params)])

    def commit_round(
        self,
        record: RoundRecord,
        task: str,
        model: str,
        params: np.ndarray,
        server_opt: tuple[str, int, np.ndarray | None] | None = None,
    ) -> None:
        """Record a committed round, its new global model and the run's server
        optimizer state ``(spec, steps, state)`` atomically."""
        cols = ", ".join(record.to_dict())
        marks = ", ".join("?" for _ in record.to_dict())
        statements = [
            (f"INSERT INTO rounds ({cols}) VALUES ({marks})", tuple(record.to_dict().values())),
            _checkpoint_sql(record.model_version, task, model, params),
        ]
        if server_opt is not None and record.run_id is not None:
            spec, steps, state = server_opt
            blob = None if state is None else np.asarray(state, dtype="<f4").tobytes()
            statements.append(
                (
                    "INSERT OR REPLACE INTO server_opt_state (run_id, model_version, spec, steps, state) VALUES (?, ?, ?, ?, ?)",
                    (record.run_id, record.model_version, spec, steps, blob),
                )
            )
        self._tx(statements, crash_at="checkpoint", round_=record.round)

    def latest_checkpoint(self, task: str, model: str) -> tuple[int, np.ndarray] | None:
        rows = self._query(
            "SELECT model_version, params FROM checkpoints WHERE task = ? AND model = ? ORDER BY model_version DESC LIMIT 1",
            (task, model),
        )
        if not rows:
            return None
        version, blob = rows[0]
        return int(version), np.frombuffer(blob, dtype="<f4").copy()

    def history(self) -> list[RoundRecord]:
        fields = ", ".join(RoundRecord.__dataclass_fields__)
        return [RoundRecord(*row) for row in self._query(f"SELECT {fields} FROM rounds ORDER BY round")]


def _checkpoint_sql(model_version: int, task: str, model: str, params: np.ndarray) -> tuple[str, tuple]:
    return (
        "INSERT OR REPLACE INTO checkpoints (model_version, task, model, params, created_at) VALUES (?, ?, ?, ?, ?)",
        (model_version, task, model, np.asarray(params, dtype="<f4").tobytes(), time.time()),
    )
