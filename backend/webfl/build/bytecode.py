"""The core's bytecode for Pyodide's Python, compiled at set-up, so the browser imports without compiling.

From sources alone, importing ``webfl.core.browser`` in Pyodide takes about 0.25-0.3 s,
most of it compiling (measured under Node: 0.29 s from source, 0.11 s with bytecode). The
bytecode must come from Python 3.12 as Pyodide builds it, and the npm ``pyodide`` package
that set-up installs runs under Node: the very interpreter the browser runs compiles the
sources (``bytecode.mjs``). The ``.pyc`` files are checked-hash (PEP 552): no timestamp in
them, and Python still compares each with its source's hash at import, compiling the
source if they ever disagree. A fixed hash seed makes the bytes the same every run, and
each result is cached under its source's hash, so Node only runs for a changed source.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import BuildError
from .files import write_atomic

SCRIPT = Path(__file__).with_name("bytecode.mjs")
LOCK_FILE = "pyodide-lock.json"


def pyc_name(source: str, cache_tag: str) -> str:
    """Where Python looks for a source's bytecode: ``a/b.py`` -> ``a/__pycache__/b.TAG.pyc``."""
    path = PurePosixPath(source)
    return str(path.parent / "__pycache__" / f"{path.stem}.{cache_tag}.pyc")


def _key(recipe: str, name: str, source: bytes) -> str:
    return hashlib.sha256(b"\0".join([recipe.encode(), name.encode(), source])).hexdigest()


@dataclass(frozen=True)
class PyodideBytecode:
    """Compiles ``{arc name of a .py: its bytes}`` to ``{arc name of its .pyc: bytecode}``."""

    pyodide_dir: Path  # npm pyodide: pyodide.mjs and pyodide-lock.json
    cache_dir: Path

    def _python(self) -> str:
        try:
            return json.loads((self.pyodide_dir / LOCK_FILE).read_text(encoding="utf-8"))["info"]["python"]
        except (OSError, ValueError, KeyError) as error:
            raise BuildError(f"cannot read Pyodide's Python version from {self.pyodide_dir / LOCK_FILE} ({error}); run make setup") from error

    def __call__(self, sources: dict[str, bytes]) -> dict[str, bytes]:
        python = self._python()
        major, minor = python.split(".")[:2]
        tag = f"cpython-{major}{minor}"
        recipe = hashlib.sha256(python.encode() + SCRIPT.read_bytes()).hexdigest()
        cached = {name: self.cache_dir / f"{_key(recipe, name, data)}.pyc" for name, data in sources.items()}
        missing = {name: data for name, data in sources.items() if not cached[name].is_file()}
        if missing:
            for name, pyc in self._compile(missing, tag).items():
                write_atomic(cached[name], pyc)
        return {pyc_name(name, tag): cached[name].read_bytes() for name in sources}

    def _compile(self, sources: dict[str, bytes], tag: str) -> dict[str, bytes]:
        node = shutil.which("node")
        if node is None:
            raise BuildError("node is needed to compile the core's bytecode with Pyodide's Python (make setup installs Node's npm packages)")
        request = {"pyodide": str(self.pyodide_dir.resolve()), "sources": {n: base64.b64encode(d).decode() for n, d in sources.items()}}
        done = subprocess.run([node, str(SCRIPT)], input=json.dumps(request), capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise BuildError(f"compiling the core's bytecode in Pyodide failed:\n{done.stderr.strip()[-2000:]}")
        answer = json.loads(done.stdout)
        if answer["cache_tag"] != tag:
            raise BuildError(f"Pyodide's Python says its cache tag is {answer['cache_tag']}, not {tag} as its lock file implies")
        return {name: base64.b64decode(answer["pyc"][name]) for name in sources}
