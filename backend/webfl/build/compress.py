"""Gzip copies of the big files the page downloads, made once so the server never compresses.

For each served file NAME worth it, ``out_dir/NAME.gz`` holds its gzip (level 9, mtime 0,
so the bytes are deterministic); the server sends it with ``Content-Encoding: gzip`` to
clients that accept gzip. A copy is kept only when it saves at least ``MIN_SAVING``:
zips (wheels, ``python_stdlib.zip``) are mostly compressed already. ``out_dir/sizes.json``
records, per file name, its size, gzip size, sha256 and whether a ``.gz`` was kept.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .files import read_json, sha256_file, write_atomic, write_json

#: The Pyodide runtime files a page fetches (``pyodide.js`` is the unused UMD twin of ``.mjs``).
PYODIDE_FILES = ("pyodide.asm.wasm", "pyodide.asm.js", "python_stdlib.zip", "pyodide-lock.json", "pyodide.mjs")
MIN_SAVING = 0.10
SIZES = "sizes.json"


@dataclass(frozen=True)
class Compressed:
    files: dict[str, dict]  # file name -> {"size", "gzip_size", "sha256", "gz"}
    recompressed: list[str]

    @property
    def size(self) -> int:
        return sum(e["size"] for e in self.files.values())

    @property
    def served_size(self) -> int:
        """Bytes a gzip-accepting client downloads for all the files."""
        return sum(e["gzip_size"] if e["gz"] else e["size"] for e in self.files.values())


def precompress(
    sources: Iterable[Path],
    out_dir: Path,
    *,
    force: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> Compressed:
    """Write ``out_dir/NAME.gz`` for each source worth compressing; skip unchanged ones.

    A source is unchanged when its sha256 equals the one in ``sizes.json``. ``.gz`` files
    of sources no longer listed (an old wheel version) are removed.
    """
    previous = (read_json(out_dir / SIZES) or {}).get("files", {})
    files: dict[str, dict] = {}
    recompressed = []
    for source in sources:
        sha256 = sha256_file(source)
        entry = previous.get(source.name)
        if (
            not force
            and entry is not None
            and entry.get("sha256") == sha256
            and (entry.get("gz") is None or (out_dir / entry["gz"]).is_file())
        ):
            files[source.name] = entry
            continue
        data = source.read_bytes()
        progress(f"gzip -9 {source.name} ({len(data) / 1e6:.1f} MB) ...")
        packed = gzip.compress(data, compresslevel=9, mtime=0)
        keep = len(packed) <= (1 - MIN_SAVING) * len(data)
        gz_name = f"{source.name}.gz"
        if keep:
            write_atomic(out_dir / gz_name, packed)
        files[source.name] = {
            "size": len(data),
            "gzip_size": len(packed),
            "sha256": sha256,
            "gz": gz_name if keep else None,
        }
        recompressed.append(source.name)

    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {e["gz"] for e in files.values() if e["gz"]}
    for stale in out_dir.glob("*.gz"):
        if stale.name not in wanted:
            stale.unlink()
    write_json(out_dir / SIZES, {"min_saving": MIN_SAVING, "files": files})
    return Compressed(files, recompressed)
