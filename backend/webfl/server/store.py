"""Durable state in SQLite: runs, committed rounds with their metrics and cohort funnel,
abandoned rounds with theirs, a checkpoint
of the global model at every commit, and the named states of a run's components (the
server optimizer, the rule, ...) as of its last commit.

Individual updates are never stored: they are folded into the round's aggregate
as they arrive. Each commit is one transaction, so a crash leaves either the old
round or the new one, never half of it. Old checkpoints are pruned in that same
transaction: the last ``keep_last`` and every ``keep_every``-th model version stay.

A damaged file stops the server before anything writes to it (``CorruptDatabase``).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .crashpoints import crashpoint

__all__ = ["AbandonedRound", "CorruptDatabase", "RoundRecord", "Store", "check_database"]

_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
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
    committed_at REAL NOT NULL,
    funnel TEXT,
    privacy TEXT
);
CREATE TABLE IF NOT EXISTS abandoned_rounds (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    run_id INTEGER REFERENCES runs(id),
    model_version INTEGER NOT NULL,
    why TEXT NOT NULL,
    funnel TEXT,
    duration_s REAL NOT NULL,
    abandoned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    model_version INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    params BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS component_state (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    fields TEXT NOT NULL,
    arrays BLOB,
    PRIMARY KEY (run_id, name)
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
    #: The round's cohort funnel (``rounds/funnel.py``); ``None`` for rounds older than it.
    funnel: dict | None = None
    #: A dp run's round: ``epsilon`` (the run's, cumulative), ``clip``, ``clipped_fraction``
    #: (``server/privacy/run.py``); ``None`` for a run without dp.
    privacy: dict | None = None

    def to_dict(self) -> dict:
        # ``epsilon`` at the top too: every entry has it, null without a guarantee.
        return {**asdict(self), "epsilon": None if self.privacy is None else self.privacy["epsilon"]}


@dataclass(frozen=True)
class AbandonedRound:
    """A round closed without a commit (the model unchanged); it is retried under the same number."""

    round: int
    run_id: int | None
    model_version: int  # the model it trained
    why: str  # rounds/funnel.py ABANDON_REASONS
    funnel: dict | None
    duration_s: float
    abandoned_at: float

    def to_dict(self) -> dict:
        return {**asdict(self), "abandoned": True}


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


class Store:
    """One SQLite file in the data folder (WAL mode: readers never block the commit)."""

    def __init__(self, path: Path, keep_last: int = 5, keep_every: int = 50) -> None:
        if keep_last < 1 or keep_every < 0:
            raise ValueError("keep at least the last checkpoint (keep_last >= 1, keep_every >= 0)")
        self._keep_last, self._keep_every = keep_last, keep_every
        self._lock = threading.Lock()
        self._db = _open(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()

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

    def component_states(self, run_id: int) -> dict[str, tuple[int, dict]]:
        """Each component's ``(model_version, state)`` as of the run's last commit."""
        rows = self._query("SELECT name, model_version, fields, arrays FROM component_state WHERE run_id = ?", (run_id,))
        return {name: (int(version), _unpack(fields, blob)) for name, version, fields, blob in rows}

    # -- rounds and checkpoints ------------------------------------------------

    def save_checkpoint(self, model_version: int, task: str, model: str, params: np.ndarray) -> None:
        self._tx([_checkpoint_sql(model_version, task, model, params)])

    def commit_round(self, record: RoundRecord, task: str, model: str, params: np.ndarray, components: dict[str, dict] | None = None) -> None:
        """Record a committed round, its new global model and the run's component states atomically."""
        row = {**asdict(record), "funnel": _json_or_null(record.funnel), "privacy": _json_or_null(record.privacy)}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        statements = [
            (f"INSERT INTO rounds ({cols}) VALUES ({marks})", tuple(row.values())),
            _checkpoint_sql(record.model_version, task, model, params),
            self._prune_sql(record.model_version),
        ]
        if record.run_id is not None:
            for name, state in (components or {}).items():
                fields, blob = _pack(state)
                statements.append(
                    (
                        "INSERT OR REPLACE INTO component_state (run_id, name, model_version, fields, arrays) VALUES (?, ?, ?, ?, ?)",
                        (record.run_id, name, record.model_version, fields, blob),
                    )
                )
        self._tx(statements, crash_at="checkpoint", round_=record.round)

    def set_bytes_down(self, round_: int, bytes_down: int) -> None:
        """The bytes actually queued for a committed round (known only after its broadcast)."""
        self._tx([("UPDATE rounds SET bytes_down = ? WHERE round = ?", (bytes_down, round_))])

    def abandon_round(self, record: AbandonedRound) -> None:
        self._tx([
            (
                "INSERT INTO abandoned_rounds (round, run_id, model_version, why, funnel, duration_s, abandoned_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.round, record.run_id, record.model_version, record.why, _json_or_null(record.funnel), record.duration_s, record.abandoned_at),
            )
        ])

    def abandoned_rounds(self) -> list[AbandonedRound]:
        rows = self._query("SELECT round, run_id, model_version, why, funnel, duration_s, abandoned_at FROM abandoned_rounds ORDER BY id")
        return [AbandonedRound(r, run, v, why, _parse_json(funnel), d, t) for r, run, v, why, funnel, d, t in rows]

    def abandoned_counts(self) -> dict[str, int]:
        """Abandoned rounds by why, for ``/metrics``."""
        return dict(self._query("SELECT why, COUNT(*) FROM abandoned_rounds GROUP BY why"))

    def _migrate(self) -> None:
        """Bring an older database up to this schema."""
        # Before the cohort funnel, rounds had no funnel column (NULL: not recorded).
        columns = {row[1] for row in self._query("PRAGMA table_info(rounds)")}
        if "funnel" not in columns:
            self._tx([("ALTER TABLE rounds ADD COLUMN funnel TEXT", ())])
        # Before differential privacy, rounds had no privacy column (NULL: not private).
        if "privacy" not in columns:
            self._tx([("ALTER TABLE rounds ADD COLUMN privacy TEXT", ())])
        self._migrate_server_opt_state()

    def _migrate_server_opt_state(self) -> None:
        """0.1.0 kept only the server optimizer's state, in a table of its own."""
        if not self._query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'server_opt_state'"):
            return
        rows = self._query("SELECT run_id, model_version, spec, steps, state FROM server_opt_state")
        statements = []
        for run_id, version, spec, steps, blob in rows:
            state: dict = {"spec": spec, "steps": steps}
            if blob is not None:
                state["vector"] = np.frombuffer(blob, dtype="<f4").copy()
            fields, arrays = _pack(state)
            statements.append(
                (
                    "INSERT OR REPLACE INTO component_state (run_id, name, model_version, fields, arrays) VALUES (?, 'server_opt', ?, ?, ?)",
                    (run_id, version, fields, arrays),
                )
            )
        self._tx([*statements, ("DROP TABLE server_opt_state", ())])

    def _prune_sql(self, latest: int) -> tuple[str, tuple]:
        """Drop checkpoints older than the last ``keep_last``, except every ``keep_every``-th."""
        every = self._keep_every
        return (
            "DELETE FROM checkpoints WHERE model_version <= ? AND (? = 0 OR model_version % ? != 0)",
            (latest - self._keep_last, every, every or 1),
        )

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
        rows = self._query(f"SELECT {fields} FROM rounds ORDER BY round")
        return [RoundRecord(*row[:-2], _parse_json(row[-2]), _parse_json(row[-1])) for row in rows]


def _json_or_null(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, allow_nan=False)


def _parse_json(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)


def _checkpoint_sql(model_version: int, task: str, model: str, params: np.ndarray) -> tuple[str, tuple]:
    return (
        "INSERT OR REPLACE INTO checkpoints (model_version, task, model, params, created_at) VALUES (?, ?, ?, ?, ?)",
        (model_version, task, model, np.asarray(params, dtype="<f4").tobytes(), time.time()),
    )


def _pack(state: dict) -> tuple[str, bytes | None]:
    """A component state as JSON fields plus its arrays in one ``.npz`` blob."""
    arrays = {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    fields = json.dumps({k: v for k, v in state.items() if k not in arrays}, allow_nan=False)
    if not arrays:
        return fields, None
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return fields, buf.getvalue()


def _unpack(fields: str, blob: bytes | None) -> dict:
    state = json.loads(fields)
    if blob is not None:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            state.update({k: npz[k] for k in npz.files})
    return state
