"""Small file helpers shared by the build steps: hashing and atomic, change-aware writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the Pyodide wasm is 10 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary sibling and rename, so a killed build never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> bool:
    """Write ``obj`` as stable JSON; leave the file (and its mtime) alone if unchanged."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    write_atomic(path, data)
    return True


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or ``None`` when it is missing or unreadable (a stale stamp)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
