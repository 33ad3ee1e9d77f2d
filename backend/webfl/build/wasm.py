"""The WebAssembly SIMD128 matrix-multiply kernel, compiled from ``kernels/gemm.c`` at set-up.

Debian's clang and lld (``make system`` installs them) compile it for ``wasm32`` with no
libc. The module imports its memory: the browser's worker hands it Pyodide's own heap,
so it must own nothing in that memory. The build therefore refuses a module with a data
segment or any use of the C stack (``__stack_pointer``), which would write to addresses
that belong to Pyodide. Without clang the step is skipped and the page trains with NumPy.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError
from .files import read_json, sha256_file, write_atomic, write_json

CFLAGS = ("--target=wasm32", "-O3", "-msimd128", "-nostdlib", "-Wall", "-Wextra", "-Werror")
LDFLAGS = ("-Wl,--no-entry", "-Wl,--import-memory", "-Wl,--export=gemm", "-Wl,--strip-all")
_DATA_SECTION = 11


@dataclass(frozen=True)
class KernelBuild:
    path: Path | None  # None: no compiler here, skipped
    sha256: str = ""
    written: bool = False


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return done.stdout


def _sections(module: bytes) -> list[int]:
    """Section ids of a wasm binary, in order."""
    if module[:8] != b"\0asm\1\0\0\0":
        raise BuildError("the kernel is not a WebAssembly module")
    ids, i = [], 8
    while i < len(module):
        ids.append(module[i])
        size, shift, i = 0, 0, i + 1
        while True:
            byte = module[i]
            size |= (byte & 0x7F) << shift
            shift, i = shift + 7, i + 1
            if byte < 0x80:
                break
        i += size
    return ids


def build_kernel(source: Path, out: Path, stamp: Path, *, force: bool = False) -> KernelBuild:
    """Compile ``source`` to ``out`` unless the same source, flags and compiler made it already."""
    clang = shutil.which("clang")
    if clang is None or shutil.which("wasm-ld") is None:
        return KernelBuild(None)
    recipe = hashlib.sha256(
        "\n".join([sha256_file(source), *CFLAGS, *LDFLAGS, _run([clang, "--version"])]).encode()
    ).hexdigest()
    previous = read_json(stamp) or {}
    if not force and previous.get("recipe") == recipe and out.is_file() and sha256_file(out) == previous.get("sha256"):
        return KernelBuild(out, previous["sha256"])
    with tempfile.TemporaryDirectory() as tmp:
        obj, wasm = Path(tmp) / "gemm.o", Path(tmp) / "gemm.wasm"
        _run([clang, *CFLAGS, "-c", "-o", str(obj), str(source)])
        # The object names every symbol its code references; the stack pointer is one
        # only when some local spilled to the C stack.
        if b"__stack_pointer" in obj.read_bytes():
            raise BuildError(f"{source.name} uses the C stack, which would write into Pyodide's memory; keep locals in registers")
        _run([clang, *CFLAGS, *LDFLAGS, "-o", str(wasm), str(obj)])
        module = wasm.read_bytes()
    if _DATA_SECTION in _sections(module):
        raise BuildError(f"{source.name} has static data, which would overwrite Pyodide's memory")
    write_atomic(out, module)
    digest = hashlib.sha256(module).hexdigest()
    write_json(stamp, {"recipe": recipe, "sha256": digest})
    return KernelBuild(out, digest, True)
