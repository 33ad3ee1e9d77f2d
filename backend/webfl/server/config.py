"""Server settings: command-line flags over ``WEBFL_*`` environment variables over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..build.paths import DATASETS_DIR
from ..core.tasks import Task
from .origins import parse_origins
from .storage import PostgresURL

__all__ = ["Settings"]


def _env_num(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def _env_origins(name: str) -> tuple[str, ...]:
    return parse_origins(os.environ.get(name, ""))


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    #: The PostgreSQL database every member shares (``--database``, ``WEBFL_DATABASE``);
    #: None keeps the store in the SQLite file ``data_dir/webfl.sqlite3``.
    database: PostgresURL | None = None
    #: Where task files (``mnist.npz``) are; set-up builds them here.
    datasets_dir: Path = DATASETS_DIR
    #: The default task: a built-in's name; None is the first of ``tasks``, else MNIST.
    task: str | None = None
    #: Tasks from ``--task-file`` (validated there), served and kept in the store.
    tasks: tuple[Task, ...] = ()
    model: str = "2nn"
    seed: int = 0
    #: Set the admin token explicitly; otherwise one is generated and kept in ``data_dir``.
    admin_token: str | None = field(default_factory=lambda: os.environ.get("WEBFL_ADMIN_TOKEN") or None)
    #: Origins (scheme://host[:port]) allowed to embed the widget and open ``/ws`` from a browser.
    embed_origins: tuple[str, ...] = field(default_factory=lambda: _env_origins("WEBFL_EMBED_ORIGINS"))
    #: This server's own origin(s) as browsers see it; ``webfl serve`` defaults it to the
    #: address it listens on (plus loopback aliases). Only these and ``embed_origins`` may
    #: open ``/ws`` from a browser (DNS rebinding sends a matching Host, so Host proves nothing).
    public_origins: tuple[str, ...] = field(default_factory=lambda: _env_origins("WEBFL_PUBLIC_ORIGINS"))
    #: Where the page loads Pyodide from; empty means this server's own copy.
    pyodide_url: str = field(default_factory=lambda: os.environ.get("WEBFL_PYODIDE_URL", ""))
    #: How the demo task's training split is divided among browser volunteers.
    demo_partition: str = "iid"
    demo_shards: int = 10
    max_frame_bytes: int = 16 * 1024 * 1024
    hello_timeout_s: float = 10.0
    #: Frames queued to one volunteer before it counts as too slow and is disconnected.
    send_queue: int = 16
    #: Close a volunteer that sends no complete frame for this long (idle or a slow-loris
    #: partial frame); honest ones reconnect by themselves (close code 1013).
    idle_timeout_s: float = field(default_factory=lambda: _env_num("WEBFL_IDLE_TIMEOUT_S", 600.0))
    #: Open ``/ws`` connections per client address; more are refused (close 1013).
    max_connections_per_ip: int = field(default_factory=lambda: int(_env_num("WEBFL_MAX_CONNECTIONS_PER_IP", 64)))
    #: Token buckets on frames and bytes received, per connection and per address
    #: (rate per second, burst). Over a limit, the connection is closed (1008).
    conn_frames_per_s: float = field(default_factory=lambda: _env_num("WEBFL_CONN_FRAMES_PER_S", 20.0))
    conn_frame_burst: float = 100.0
    conn_bytes_per_s: float = field(default_factory=lambda: _env_num("WEBFL_CONN_BYTES_PER_S", 8 * 2**20))
    conn_byte_burst: float = 48 * 2**20
    ip_frames_per_s: float = field(default_factory=lambda: _env_num("WEBFL_IP_FRAMES_PER_S", 500.0))
    ip_frame_burst: float = 2000.0
    ip_bytes_per_s: float = field(default_factory=lambda: _env_num("WEBFL_IP_BYTES_PER_S", 256 * 2**20))
    ip_byte_burst: float = 1024 * 2**20
    #: Largest HTTP request body (login forms, admin JSON); larger ones get 413 while they
    #: stream, before they are held in memory.
    max_body_bytes: int = field(default_factory=lambda: int(_env_num("WEBFL_MAX_BODY_BYTES", 1024 * 1024)))
    #: A volunteer's socket that accepts no bytes for this long (its send buffer full) is
    #: aborted and its slot freed: a client that never reads cannot hold a connection.
    send_timeout_s: float = field(default_factory=lambda: _env_num("WEBFL_SEND_TIMEOUT_S", 30.0))
    #: Checkpoints kept: the last ``keep_checkpoints`` and every ``checkpoint_every``-th
    #: model version (0 keeps none beyond the last ones).
    keep_checkpoints: int = 5
    checkpoint_every: int = 50
    #: With a port, ``/metrics`` is also served WITHOUT authentication on this address
    #: (for a Prometheus on the same host or a private network).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    #: A cluster's Redis (``redis://HOST:PORT/N``); None: one process, nothing shared.
    redis: str | None = None
    #: This member's id in the cluster (one word, stable across its restarts).
    member_id: str = "webfl"
    #: The leader lease: another member takes over within it when the leader dies.
    lease_s: float = 10.0
    #: Where the other members reach this one's admin API (a follower forwards run control
    #: to the leader there).
    member_url: str = "http://127.0.0.1:8000"
    #: Admin sign-in attempts per address per minute.
    logins_per_minute: float = field(default_factory=lambda: _env_num("WEBFL_LOGINS_PER_MINUTE", 5.0))

    @property
    def store_target(self) -> Path | PostgresURL:
        """Where the store lives: the PostgreSQL database, else the data folder's SQLite file."""
        return self.database or self.data_dir / "webfl.sqlite3"
