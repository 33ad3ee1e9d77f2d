"""The learning core as a pure-Python wheel for Pyodide: ``webfl/__init__.py`` + ``webfl/core``.

The browser installs only this, so no server or build code goes in. Beside each source is
its bytecode for Pyodide's Python (``__pycache__/*.cpython-312.pyc``, ``bytecode.py``), so
the browser's import compiles nothing. The bytes depend on the sources alone (fixed zip
timestamps, sorted entries, reproducible bytecode), so rebuilding unchanged sources gives
the same file, and the file is only rewritten when they differ.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError
from .files import write_atomic, write_json

NAME = "webfl"
TAG = "py3-none-any"
# The earliest time a zip entry can hold: no build time leaks into the bytes.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
#: Compiles ``{arc name of a .py: source}`` to ``{arc name of its .pyc: bytecode}``.
Bytecode = Callable[[dict[str, bytes]], dict[str, bytes]]
WHEEL_FILE = f"Wheel-Version: 1.0\nGenerator: webfl.build\nRoot-Is-Purelib: true\nTag: {TAG}\n"


@dataclass(frozen=True)
class CoreWheel:
    path: Path
    version: str
    sha256: str
    written: bool


def read_version(package_dir: Path) -> str:
    """``__version__`` of ``package_dir/__init__.py``, read without importing it."""
    init = package_dir / "__init__.py"
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return str(ast.literal_eval(node.value))
    raise BuildError(f"no __version__ = '...' in {init}")


def source_files(package_dir: Path) -> dict[str, Path]:
    """Archive name to source file, sorted: ``webfl/__init__.py`` and ``webfl/core/**.py``."""
    files = {f"{NAME}/__init__.py": package_dir / "__init__.py"}
    for path in (package_dir / "core").rglob("*.py"):
        files[f"{NAME}/{path.relative_to(package_dir).as_posix()}"] = path
    return dict(sorted(files.items()))


def record_hash(data: bytes) -> str:
    """A RECORD hash field: ``sha256=`` + urlsafe base64 without padding (PEP 376/427)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def metadata(version: str) -> str:
    """Core metadata; the core needs nothing but NumPy (Pyodide 0.27.7 ships 2.0.2)."""
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {version}\n"
        "Summary: webfl learning core: the pure-NumPy code volunteers' browsers run in Pyodide.\n"
        "License: MIT\n"
        "Requires-Python: >=3.11\n"
        "Requires-Dist: numpy>=2.0\n"
    )


def wheel_bytes(package_dir: Path, bytecode: Bytecode) -> tuple[str, str, bytes]:
    """Version, file name and deterministic bytes of the core wheel built from ``package_dir``."""
    version = read_version(package_dir)
    dist_info = f"{NAME}-{version}.dist-info"
    sources = {arc: path.read_bytes() for arc, path in source_files(package_dir).items()}
    entries = sorted({**sources, **bytecode(sources)}.items())
    entries += [
        (f"{dist_info}/METADATA", metadata(version).encode()),
        (f"{dist_info}/WHEEL", WHEEL_FILE.encode()),
    ]
    record = "".join(f"{arc},{record_hash(data)},{len(data)}\n" for arc, data in entries)
    entries.append((f"{dist_info}/RECORD", f"{record}{dist_info}/RECORD,,\n".encode()))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc, data in entries:
            info = zipfile.ZipInfo(arc, ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
    return version, f"{NAME}-{version}-{TAG}.whl", buf.getvalue()


def build_core_wheel(
    package_dir: Path, out_dir: Path, info_path: Path, *, bytecode: Bytecode, force: bool = False
) -> CoreWheel:
    """Write the core wheel into ``out_dir`` if its bytes changed, and ``info_path`` beside it.

    Wheels of other versions are removed, so the server never offers a stale one.
    """
    version, name, data = wheel_bytes(package_dir, bytecode)
    path = out_dir / name
    written = force or not path.is_file() or path.read_bytes() != data
    if written:
        write_atomic(path, data)
    for old in out_dir.glob(f"{NAME}-*-{TAG}.whl"):
        if old != path:
            old.unlink()
    sha256 = hashlib.sha256(data).hexdigest()
    write_json(info_path, {"version": version, "file": name, "sha256": sha256})
    return CoreWheel(path, version, sha256, written)
