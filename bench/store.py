"""The store on PostgreSQL against the SQLite default, in the same run: what a commit, a
history read and an admin request's session check cost on each.

SQLite is the data folder's file as ``webfl serve`` opens it (WAL, ``synchronous=FULL``).
PostgreSQL is a fresh Debian cluster on loopback (``tests/services.py``) with ``fsync`` and
``full_page_writes`` back on (restarted with its defaults), so both make a commit durable before it returns.
Each backend gets ``--commits`` commits of the 2NN (199,210 float32 parameters: the
round record, the checkpoint, pruning and the optimizer's state in one transaction), then
``--reads`` reads of the history and of a session's revocation.

    .venv/bin/python bench/store.py              # about 30 s

Not part of the tests.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from services import Postgres  # noqa: E402

from webfl.server.storage import PostgresURL  # noqa: E402
from webfl.server.store import RoundRecord, Store  # noqa: E402

PARAMS = 199_210


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.95 * (len(ordered) - 1))] * 1e3


def measure(target: Path | PostgresURL, commits: int, reads: int) -> dict[str, tuple[float, float]]:
    store = Store(target)
    scoped = store.scoped("mnist", "2nn")
    run = scoped.start_run({"rounds": commits})
    params = np.random.default_rng(0).normal(size=PARAMS).astype(np.float32)
    opt = {"spec": "fedavgm", "steps": 0, "vector": np.zeros(PARAMS, np.float32)}
    timings: dict[str, list[float]] = {"commit": [], "history": [], "session check": []}
    for version in range(1, commits + 1):
        record = RoundRecord(version, run, version, 0.5, 1.0, 10, 800_000, 8_000_000, 1.0, time.time())
        t0 = time.perf_counter()
        scoped.commit_round(record, params, {"server_opt": {**opt, "steps": version}})
        timings["commit"].append(time.perf_counter() - t0)
    store.revoke_session("signed-out", int(time.time()) + 3600)
    for _ in range(reads):
        t0 = time.perf_counter()
        assert len(scoped.history()) == commits
        timings["history"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.session_revoked("a-session")
        timings["session check"].append(time.perf_counter() - t0)
    store.close()
    return {name: _ms(samples) for name, samples in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    pg = Postgres.start()
    try:
        # The test cluster starts with fsync off (its options override any config file):
        # restart it with PostgreSQL's durable defaults.
        options = f"-p {pg.port} -c listen_addresses=127.0.0.1 -k {pg.root / 'sockets'}"
        pg_ctl, data, log = str(pg.bindir / "pg_ctl"), str(pg.root / "data"), str(pg.root / "postgres.log")
        pg._run(pg_ctl, "stop", "-w", "-m", "fast", "-D", data)
        pg._run(pg_ctl, "start", "-w", "-t", "60", "-D", data, "-l", log, "-o", options)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",) and conn.execute("SHOW full_page_writes").fetchone() == ("on",)
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = measure(Path(tmp) / "webfl.sqlite3", args.commits, args.reads)
        postgres = measure(PostgresURL(pg.url), args.commits, args.reads)
    finally:
        pg.stop()
    print(f"{platform.machine()}, Python {platform.python_version()}, PostgreSQL {pg.bindir.parent.name}; "
          f"{args.commits} commits of the 2NN, {args.reads} reads; median / p95 in ms")
    print()
    print("| operation | SQLite (baseline) | PostgreSQL | ratio (median) |")
    print("|---|---:|---:|---:|")
    for name in sqlite:
        (s50, s95), (p50, p95) = sqlite[name], postgres[name]
        print(f"| {name} | {s50:.2f} / {s95:.2f} | {p50:.2f} / {p95:.2f} | {p50 / s50:.1f}x |")


if __name__ == "__main__":
    main()
