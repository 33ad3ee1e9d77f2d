"""Durable state: task definitions, runs, committed rounds with their metrics,
cohort funnel and privacy, abandoned rounds with theirs, a checkpoint of the global
model at every commit, and the named states of a run's components (the server
optimizer, the rule, the accountant, ...) as of its last commit.

Runs, rounds and checkpoints belong to one task and its model (``Store.scoped`` gives
an engine its ``TaskStore``): two tasks, or one task's two models, each keep their own
round numbers and model versions in one file.

Individual updates are never stored: they are folded into the round's aggregate
as they arrive. Each commit is one transaction, so a crash leaves either the old
round or the new one, never half of it. Old checkpoints are pruned in that same
transaction: the last ``keep_last`` and every ``keep_every``-th model version stay.

The shared secrets (the keys that sign admin sessions, task tokens and resume
credentials) and the signed-out admin sessions live here too, so every member on one
database honours what another issued.

The database is an SQLite file in the data folder (the default; a damaged file stops the
server before anything writes to it, ``CorruptDatabase``) or a PostgreSQL database that
any number of members share (``storage/postgres.py``). One set of queries serves both:
``storage`` holds what differs.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .security import KEY_BYTES
from .storage import Connection, CorruptDatabase, Dialect, PostgresConnection, PostgresURL, SqliteConnection, Statement, check_database

log = logging.getLogger("webfl.store")

__all__ = ["AbandonedRound", "CorruptDatabase", "Fenced", "NewerSchema", "RoundRecord", "Store", "TaskStore", "check_database"]

#: Bumped by every migration in ``Store._migrate`` (SQLite's ``user_version``; PostgreSQL's
#: ``webfl_schema`` table). 3: the shared secrets and the revoked admin sessions.
SCHEMA_VERSION = 3

#: Written once for both databases: ``{id}`` and ``{blob}`` are the dialect's (``storage``);
#: SQLite reads BIGINT and DOUBLE PRECISION as its INTEGER and REAL.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id {id},
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    round BIGINT NOT NULL,
    run_id BIGINT REFERENCES runs(id),
    model_version BIGINT NOT NULL,
    accuracy DOUBLE PRECISION,
    loss DOUBLE PRECISION,
    participants BIGINT NOT NULL,
    bytes_up BIGINT NOT NULL,
    bytes_down BIGINT NOT NULL,
    duration_s DOUBLE PRECISION NOT NULL,
    committed_at DOUBLE PRECISION NOT NULL,
    eval_source TEXT,
    eval_examples BIGINT NOT NULL DEFAULT 0,
    eval_volunteers BIGINT NOT NULL DEFAULT 0,
    funnel TEXT,
    privacy TEXT,
    class_accuracy TEXT,
    PRIMARY KEY (task, model, round)
);
CREATE TABLE IF NOT EXISTS abandoned_rounds (
    id {id},
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    round BIGINT NOT NULL,
    run_id BIGINT REFERENCES runs(id),
    model_version BIGINT NOT NULL,
    why TEXT NOT NULL,
    funnel TEXT,
    duration_s DOUBLE PRECISION NOT NULL,
    abandoned_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version BIGINT NOT NULL,
    params {blob} NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (task, model, model_version)
);
CREATE TABLE IF NOT EXISTS component_state (
    run_id BIGINT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    model_version BIGINT NOT NULL,
    fields TEXT NOT NULL,
    arrays {blob},
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value {blob} NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_sessions (
    id TEXT PRIMARY KEY,
    expires BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS fence (
    name TEXT PRIMARY KEY,
    token BIGINT NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0 CHECK (stale = 0)
);
"""



def _tables(dialect: Dialect) -> dict[str, str]:
    """Each table's CREATE statement in ``dialect``, by name (migrations build new tables from these)."""
    text = _SCHEMA.format(id=dialect.id, blob=dialect.blob)
    return {sql.split()[5]: sql.strip() for sql in text.split(";") if sql.strip()}


#: The tables of schema 1 (0.1 to 0.3): rounds and checkpoints keyed by model version alone.
_V1_ROUND_COLUMNS = "round, run_id, model_version, accuracy, loss, participants, bytes_up, bytes_down, duration_s, committed_at"

#: Schema 1 served only MNIST; its data becomes this task's unless a checkpoint names another.
_V1_TASK = ("mnist", "2nn")


@dataclass(frozen=True)
class RoundRecord:
    round: int
    run_id: int | None
    model_version: int
    #: Of this round's model: on the server's held-out data (``eval_source`` "server"), or
    #: example-weighted over the volunteers' holdouts ("federated"); None until reported.
    accuracy: float | None
    loss: float | None
    participants: int
    bytes_up: int
    bytes_down: int
    duration_s: float
    committed_at: float
    eval_source: str | None = None
    eval_examples: int = 0
    eval_volunteers: int = 0
    #: The round's cohort funnel (``rounds/funnel.py``); ``None`` for rounds older than it.
    funnel: dict | None = None
    #: A dp run's round: ``epsilon`` (the run's, cumulative), ``clip``, ``clipped_fraction``
    #: (``server/privacy/run.py``); ``None`` for a run without dp.
    privacy: dict | None = None
    #: Accuracy per class (tasks of up to 20 classes; null for a class with no example),
    #: from the same data as ``accuracy``; ``None`` until evaluated.
    class_accuracy: list[float | None] | None = None

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


class Fenced(Exception):
    """A commit carried a leader's fencing token older than one the store has seen: refused."""


class NewerSchema(Exception):
    """The database was written by a newer webfl; this one would misread it."""


def _connect(target: Path | PostgresURL) -> Connection:
    return PostgresConnection(target) if isinstance(target, PostgresURL) else SqliteConnection(target)


class Store:
    """The SQLite file at ``target`` (a path), or the PostgreSQL database it names."""

    def __init__(self, target: Path | PostgresURL, keep_last: int = 5, keep_every: int = 50) -> None:
        if keep_last < 1 or keep_every < 0:
            raise ValueError("keep at least the last checkpoint (keep_last >= 1, keep_every >= 0)")
        self.keep_last, self.keep_every = keep_last, keep_every
        self._db = _connect(target)
        self._tables = _tables(self._db.dialect)
        try:
            with self._db.migrating():
                found = self._db.schema_version()
                if found > SCHEMA_VERSION:
                    raise NewerSchema(f"the database is at schema {found}, written by a newer webfl; this one knows schema {SCHEMA_VERSION}")
                self._migrate()
                self._db.tx([(sql, ()) for sql in self._tables.values()])
                self._db.set_schema_version(SCHEMA_VERSION)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def scoped(self, task: str, model: str) -> TaskStore:
        """The runs, rounds and checkpoints of ``task`` trained as ``model``."""
        return TaskStore(self, task, model)

    def tx(self, statements: list[Statement], crash_at: str | None = None, round_: int | None = None) -> list[list[tuple]]:
        """Run ``statements`` as one transaction (``crash_at``: a crash point inside it, for tests); their rows."""
        return self._db.tx(statements, crash_at, round_)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._db.query(sql, args)

    # -- shared secrets and admin sessions ----------------------------------------

    def secret(self, name: str, initial: bytes | None = None) -> bytes:
        """The key called ``name``: drawn from the OS (or ``initial``, a value kept from before)
        by whichever member asks first, then the same for every member on this database."""
        self.tx([
            (
                "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, initial if initial is not None else secrets.token_bytes(KEY_BYTES), time.time()),
            )
        ])
        return bytes(self.query("SELECT value FROM secrets WHERE name = ?", (name,))[0][0])

    def revoke_session(self, session_id: str, expires: int) -> None:
        """An admin session signed out: refused until it would have expired (then forgotten)."""
        self.tx([
            ("DELETE FROM revoked_sessions WHERE expires < ?", (int(time.time()),)),
            ("INSERT INTO revoked_sessions (id, expires) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (session_id, int(expires))),
        ])

    def session_revoked(self, session_id: str) -> bool:
        return bool(self.query("SELECT 1 FROM revoked_sessions WHERE id = ?", (session_id,)))

    # -- the cluster leader's fence ---------------------------------------------

    @staticmethod
    def fence_sql(token: int) -> tuple[str, tuple]:
        """A statement that records ``token`` and fails (the CHECK on ``stale``, so the
        whole transaction rolls back) if a larger one was recorded already."""
        return (
            "INSERT INTO fence (name, token) VALUES ('leader', ?) ON CONFLICT (name) DO UPDATE"
            " SET token = excluded.token, stale = CASE WHEN excluded.token < fence.token THEN 1 ELSE 0 END",
            (token,),
        )

    def fence_token(self) -> int | None:
        rows = self.query("SELECT token FROM fence WHERE name = 'leader'")
        return int(rows[0][0]) if rows else None

    def fenced_tx(self, token: int, statements: list[tuple[str, tuple]], **crash) -> None:
        """``tx`` behind ``fence_sql(token)``: ``Fenced`` (nothing written) if a newer leader wrote first."""
        try:
            self.tx([self.fence_sql(token), *statements], **crash)
        except Exception as exc:
            if (self.fence_token() or 0) > token:
                raise Fenced(f"fencing token {token} is older than {self.fence_token()}: a newer leader took over") from exc
            raise

    # -- task definitions --------------------------------------------------------

    def save_task(self, name: str, definition: dict) -> None:
        """Keep (or replace) a task's definition JSON; a replaced one keeps its place in the order."""
        self.tx([(
            "INSERT INTO tasks (name, definition, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
            (name, json.dumps(definition), time.time()),
        )])

    def task_definitions(self) -> list[dict]:
        """Every stored definition, in the order they were first created."""
        return [json.loads(d) for (d,) in self.query("SELECT definition FROM tasks ORDER BY created_at, name")]

    # -- runs of any task --------------------------------------------------------

    def end_run(self, run_id: int, status: str) -> None:
        self.tx([("UPDATE runs SET ended_at = ?, status = ? WHERE id = ?", (time.time(), status, run_id))])

    def run_config(self, run_id: int) -> dict:
        return json.loads(self.query("SELECT config FROM runs WHERE id = ?", (run_id,))[0][0])

    def rounds_in_run(self, run_id: int) -> int:
        return int(self.query("SELECT COUNT(*) FROM rounds WHERE run_id = ?", (run_id,))[0][0])

    def component_states(self, run_id: int) -> dict[str, tuple[int, dict]]:
        """Each component's ``(model_version, state)`` as of the run's last commit."""
        rows = self.query("SELECT name, model_version, fields, arrays FROM component_state WHERE run_id = ?", (run_id,))
        return {name: (int(version), _unpack(fields, blob)) for name, version, fields, blob in rows}

    # -- migrations --------------------------------------------------------------

    def _migrate(self) -> None:
        """Bring an older database to ``SCHEMA_VERSION``, each step in one transaction.
        Steps look at the tables and columns found, so running them twice changes nothing."""
        tables = self._db.tables()
        # 0.1 to 0.3 wrote only SQLite files: their layouts never reach PostgreSQL.
        if "server_opt_state" in tables:
            self._migrate_server_opt()
        old = [t for t in ("runs", "rounds") if t in tables and "task" not in self._db.columns(t)]
        if old and "checkpoints" in tables:
            # Schema 1's checkpoints name their task but are keyed by version alone: kept,
            # another model's checkpoint would replace this one's of the same version.
            old.append("checkpoints")
        if old:
            self._migrate_by_task(old)
        if "abandoned_rounds" in tables and "task" not in self._db.columns("abandoned_rounds"):
            self.tx([("DROP TABLE abandoned_rounds", ())])  # a development schema's; nothing needs it
        # Rounds from before the cohort funnel, differential privacy and per-class accuracy
        # have none of these columns (NULL: not recorded, not private, not reported).
        columns = self._db.columns("rounds")
        for column in ("funnel", "privacy", "class_accuracy"):
            if columns and column not in columns:
                self.tx([(f"ALTER TABLE rounds ADD COLUMN {column} TEXT", ())])

    def _migrate_server_opt(self) -> None:
        """0.1.0 kept only the server optimizer's state, in a table of its own."""
        rows = self.query("SELECT run_id, model_version, spec, steps, state FROM server_opt_state")
        statements: list[Statement] = [(self._tables["component_state"], ())]  # which this step fills
        for run_id, version, spec, steps, blob in rows:
            state: dict = {"spec": spec, "steps": steps}
            if blob is not None:
                state["vector"] = np.frombuffer(blob, dtype="<f4").copy()
            fields, arrays = _pack(state)
            statements.append((_COMPONENT_UPSERT, (run_id, "server_opt", version, fields, arrays)))
        self.tx([*statements, ("DROP TABLE server_opt_state", ())])

    def _migrate_by_task(self, tables: list[str]) -> None:
        """Schema 1 keyed rounds and checkpoints by model version alone: another model on
        the same folder failed its first commit (``UNIQUE constraint failed: rounds.round``).
        Its runs and rounds become the task and model of its latest checkpoint (MNIST's
        ``2nn`` if it has none); its checkpoints keep the task and model they name."""
        latest = self.query("SELECT task, model FROM checkpoints ORDER BY model_version DESC LIMIT 1") if "checkpoints" in tables else []
        task, model = latest[0] if latest else _V1_TASK
        copies = {
            "runs": ("id, task, model, config, started_at, ended_at, status", "id, ?, ?, config, started_at, ended_at, status", (task, model)),
            "rounds": (f"task, model, {_V1_ROUND_COLUMNS}", f"?, ?, {_V1_ROUND_COLUMNS}", (task, model)),
            "checkpoints": ("task, model, model_version, params, created_at", "task, model, model_version, params, created_at", ()),
        }
        statements: list[Statement] = []
        for table in tables:
            into, select, args = copies[table]
            statements += [
                (f"ALTER TABLE {table} RENAME TO {table}_v1", ()),
                (self._tables[table], ()),
                (f"INSERT INTO {table} ({into}) SELECT {select} FROM {table}_v1", args),
                (f"DROP TABLE {table}_v1", ()),
            ]
        assert isinstance(self._db, SqliteConnection), "schema 1 was only ever an SQLite file"
        with self._db.renaming_tables():
            self.tx(statements)
        log.info("store migrated to schema %d: existing runs and rounds are task %s/%s's", SCHEMA_VERSION, task, model)


#: A run's component state as of its last commit (one row per component).
_COMPONENT_UPSERT = (
    "INSERT INTO component_state (run_id, name, model_version, fields, arrays) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (run_id, name) DO UPDATE SET model_version = excluded.model_version, fields = excluded.fields, arrays = excluded.arrays"
)


class TaskStore:
    """One task's (and model's) runs, rounds and checkpoints in a ``Store``: what an engine writes."""

    def __init__(self, store: Store, task: str, model: str) -> None:
        self.store, self.task, self.model = store, task, model
        self._scope = (task, model)

    # -- runs ------------------------------------------------------------------

    def start_run(self, config: dict) -> int:
        ((row,),) = self.store.tx([
            (
                "INSERT INTO runs (task, model, config, started_at, status) VALUES (?, ?, ?, ?, 'running') RETURNING id",
                (*self._scope, json.dumps(config), time.time()),
            )
        ])
        return int(row[0])

    def end_run(self, run_id: int, status: str) -> None:
        self.store.end_run(run_id, status)

    def interrupted_runs(self) -> list[int]:
        """Runs still marked running: the server stopped under them."""
        return [r[0] for r in self.store.query("SELECT id FROM runs WHERE task = ? AND model = ? AND status = 'running' ORDER BY id", self._scope)]

    def run_config(self, run_id: int) -> dict:
        return self.store.run_config(run_id)

    def runs(self) -> list[dict]:
        """Every run, oldest first: ``id``, ``status`` (running, completed, stopped, failed,
        interrupted), ``started_at``, ``ended_at`` and ``config``."""
        rows = self.store.query("SELECT id, status, started_at, ended_at, config FROM runs WHERE task = ? AND model = ? ORDER BY id", self._scope)
        return [{"id": i, "status": st, "started_at": t0, "ended_at": t1, "config": json.loads(c)} for i, st, t0, t1, c in rows]

    def rounds_in_run(self, run_id: int) -> int:
        return self.store.rounds_in_run(run_id)

    def component_states(self, run_id: int) -> dict[str, tuple[int, dict]]:
        return self.store.component_states(run_id)

    # -- rounds and checkpoints ------------------------------------------------

    def save_checkpoint(self, model_version: int, params: np.ndarray) -> None:
        self.store.tx([self._checkpoint_sql(model_version, params)])

    def commit_round(self, record: RoundRecord, params: np.ndarray, components: dict[str, dict] | None = None, fence: int | None = None) -> None:
        """Record a committed round, its new global model and the run's component states atomically;
        with a cluster leader's ``fence`` token, ``Fenced`` if a newer leader wrote first."""
        row = {"task": self.task, "model": self.model, **asdict(record), "funnel": _json_or_null(record.funnel), "privacy": _json_or_null(record.privacy),
               "class_accuracy": _json_or_null(record.class_accuracy)}
        statements = [
            (f"INSERT INTO rounds ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values())),
            self._checkpoint_sql(record.model_version, params),
            self._prune_sql(record.model_version),
        ]
        if record.run_id is not None:
            for name, state in (components or {}).items():
                fields, blob = _pack(state)
                statements.append((_COMPONENT_UPSERT, (record.run_id, name, record.model_version, fields, blob)))
        if fence is None:
            self.store.tx(statements, crash_at="checkpoint", round_=record.round)
        else:
            self.store.fenced_tx(fence, statements, crash_at="checkpoint", round_=record.round)

    def set_bytes_down(self, round_: int, bytes_down: int) -> None:
        """The bytes actually queued for a committed round (known only after its broadcast)."""
        self.store.tx([("UPDATE rounds SET bytes_down = ? WHERE task = ? AND model = ? AND round = ?", (bytes_down, *self._scope, round_))])

    def abandon_round(self, record: AbandonedRound) -> None:
        self.store.tx([
            (
                "INSERT INTO abandoned_rounds (task, model, round, run_id, model_version, why, funnel, duration_s, abandoned_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*self._scope, record.round, record.run_id, record.model_version, record.why, _json_or_null(record.funnel),
                 record.duration_s, record.abandoned_at),
            )
        ])

    def abandoned_rounds(self) -> list[AbandonedRound]:
        rows = self.store.query(
            "SELECT round, run_id, model_version, why, funnel, duration_s, abandoned_at FROM abandoned_rounds"
            " WHERE task = ? AND model = ? ORDER BY id", self._scope
        )
        return [AbandonedRound(r, run, v, why, _parse_json(funnel), d, t) for r, run, v, why, funnel, d, t in rows]

    def abandoned_counts(self) -> dict[str, int]:
        """Abandoned rounds by why, for ``/metrics``."""
        return dict(self.store.query("SELECT why, COUNT(*) FROM abandoned_rounds WHERE task = ? AND model = ? GROUP BY why", self._scope))

    def save_definition(self, definition: dict) -> None:
        """This task's definition changed (its scaling was fixed): keep the new one."""
        self.store.save_task(self.task, definition)

    def forget_model(self) -> None:
        """Drop this model's checkpoints: its task was redefined before any round committed
        (a model of another shape starts afresh at version 0)."""
        assert not self.history(), "a model with committed rounds keeps its checkpoints"
        self.store.tx([("DELETE FROM checkpoints WHERE task = ? AND model = ?", self._scope)])

    def set_evaluations(self, records: list[RoundRecord]) -> None:
        """Committed rounds' evaluations, as federated reports have brought them, in one transaction."""
        sql = (
            "UPDATE rounds SET accuracy = ?, loss = ?, eval_source = ?, eval_examples = ?, eval_volunteers = ?, class_accuracy = ? "
            "WHERE task = ? AND model = ? AND round = ?"
        )
        self.store.tx([
            (sql, (r.accuracy, r.loss, r.eval_source, r.eval_examples, r.eval_volunteers, _json_or_null(r.class_accuracy), *self._scope, r.round))
            for r in records
        ])

    def _checkpoint_sql(self, model_version: int, params: np.ndarray) -> tuple[str, tuple]:
        return (
            "INSERT INTO checkpoints (task, model, model_version, params, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (task, model, model_version) DO UPDATE SET params = excluded.params, created_at = excluded.created_at",
            (*self._scope, model_version, np.asarray(params, dtype="<f4").tobytes(), time.time()),
        )

    def _prune_sql(self, latest: int) -> tuple[str, tuple]:
        """Drop this task's checkpoints older than the last ``keep_last``, except every ``keep_every``-th."""
        every = self.store.keep_every
        return (
            "DELETE FROM checkpoints WHERE task = ? AND model = ? AND model_version <= ? AND (? = 0 OR model_version % ? != 0)",
            (*self._scope, latest - self.store.keep_last, every, every or 1),
        )

    def latest_checkpoint(self) -> tuple[int, np.ndarray] | None:
        rows = self.store.query(
            "SELECT model_version, params FROM checkpoints WHERE task = ? AND model = ? ORDER BY model_version DESC LIMIT 1", self._scope
        )
        if not rows:
            return None
        version, blob = rows[0]
        return int(version), np.frombuffer(blob, dtype="<f4").copy()

    def history(self) -> list[RoundRecord]:
        fields = ", ".join(RoundRecord.__dataclass_fields__)
        rows = self.store.query(f"SELECT {fields} FROM rounds WHERE task = ? AND model = ? ORDER BY round", self._scope)
        return [RoundRecord(*row[:-3], *map(_parse_json, row[-3:])) for row in rows]


def _json_or_null(value: dict | list | None) -> str | None:
    return None if value is None else json.dumps(value, allow_nan=False)


def _parse_json(text: str | None):
    return None if text is None else json.loads(text)


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
