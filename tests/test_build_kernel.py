"""The set-up step that compiles the WebAssembly kernel (needs Debian's clang and lld)."""

from __future__ import annotations

import shutil

import pytest

from webfl.build import paths
from webfl.build.errors import BuildError
from webfl.build.wasm import build_kernel

pytestmark = pytest.mark.skipif(not (shutil.which("clang") and shutil.which("wasm-ld")), reason="clang/lld missing")


def test_the_kernel_builds_once_and_is_reused(tmp_path):
    out, stamp = tmp_path / "gemm.wasm", tmp_path / "stamp.json"
    first = build_kernel(paths.KERNEL_SRC, out, stamp)
    assert first.written and out.read_bytes()[:4] == b"\0asm"
    again = build_kernel(paths.KERNEL_SRC, out, stamp)
    assert not again.written and again.sha256 == first.sha256
    out.write_bytes(b"tampered")
    assert build_kernel(paths.KERNEL_SRC, out, stamp).written


def test_a_kernel_that_would_write_to_pyodides_memory_is_refused(tmp_path):
    # A local array indexed at run time lives on the C stack, i.e. at an address of
    # the imported memory that belongs to Pyodide.
    stack = tmp_path / "stack.c"
    stack.write_text("__attribute__((export_name(\"gemm\"))) float gemm(int i) { volatile float t[64]; t[i] = 1; return t[(i * 7) & 63]; }\n")
    with pytest.raises(BuildError, match="C stack"):
        build_kernel(stack, tmp_path / "a.wasm", tmp_path / "a.json")
    data = tmp_path / "data.c"
    data.write_text("float table[4] = {1, 2, 3, 4};\n__attribute__((export_name(\"gemm\"))) float gemm(int i) { return table[i & 3]; }\n")
    with pytest.raises(BuildError, match="static data"):
        build_kernel(data, tmp_path / "b.wasm", tmp_path / "b.json")
