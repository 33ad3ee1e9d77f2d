"""Server settings: command-line flags over ``WEBFL_*`` environment variables over defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..build.paths import DATASETS_DIR

__all__ = ["Settings"]


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in os.environ.get(name, "").split(",") if o.strip())


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    #: Where task files (``mnist.npz``) are; set-up builds them here.
    datasets_dir: Path = DATASETS_DIR
    task: str = "mnist"
    model: str = "2nn"
    seed: int = 0
    #: Set the admin token explicitly; otherwise one is generated and kept in ``data_dir``.
    admin_token: str | None = field(default_factory=lambda: os.environ.get("WEBFL_ADMIN_TOKEN") or None)
    #: Origins (scheme://host[:port]) allowed to embed the widget and open ``/ws`` from a browser.
    embed_origins: tuple[str, ...] = field(default_factory=lambda: _env_list("WEBFL_EMBED_ORIGINS"))
    #: Where the page loads Pyodide from; empty means this server's own copy.
    pyodide_url: str = field(default_factory=lambda: os.environ.get("WEBFL_PYODIDE_URL", ""))
    #: How the demo task's training split is divided among browser volunteers.
    demo_partition: str = "iid"
    demo_shards: int = 10
    max_frame_bytes: int = 16 * 1024 * 1024
    hello_timeout_s: float = 10.0
    #: Frames queued to one volunteer before it counts as too slow and is disconnected.
    send_queue: int = 16
