"""``python -m webfl.build [--force]``: build and fetch what the browser and the server load.

Steps, one progress line each: check the npm packages, build the core wheel (with its
bytecode, compiled by Pyodide under Node), fetch and
verify the Pyodide NumPy wheel, gzip the big files for serving, compile the WebAssembly
kernel, convert MNIST, extract and convert scikit-learn's breast cancer and digits files. Each step
skips work whose output is up to date; ``--force`` redoes it (the download cache stays).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import paths
from .bytecode import PyodideBytecode
from .compress import PYODIDE_FILES, precompress
from ..core.tasks import BREAST_CANCER_FEATURES
from .datasets import breast_cancer_csv, build_converted, build_mnist, digits_arrays, fetch_sklearn_files, npz_bytes
from .errors import BuildError
from .npm import check_npm_packages
from .pyodide import fetch_pyodide_wheels
from .wasm import build_kernel
from .wheel import build_core_wheel


def say(step: str, message: str) -> None:
    print(f"[webfl build] {step}: {message}", flush=True)


def rel(path: Path) -> str:
    """``path`` relative to the repo root when it is inside it, for short messages."""
    return str(path.relative_to(paths.ROOT)) if path.is_relative_to(paths.ROOT) else str(path)


def build(force: bool) -> None:
    """Run every step in order; a failing step raises ``BuildError``."""
    start = time.monotonic()
    pinned = check_npm_packages(paths.ROOT)
    say("npm packages", " ".join(f"{name}@{version}" for name, version in pinned.items()) + " ok")

    core = build_core_wheel(
        paths.PACKAGE_SRC_DIR, paths.WHEELS_DIR, paths.CORE_WHEEL_INFO, bytecode=PyodideBytecode(paths.PYODIDE_DIR, paths.BYTECODE_CACHE), force=force
    )
    say("core wheel", f"{rel(core.path)} {'built' if core.written else 'unchanged'}, sha256 {core.sha256[:16]}... ok")

    fetched = fetch_pyodide_wheels(
        paths.MANIFEST, paths.PYODIDE_DIR, paths.WHEELS_DIR, paths.CACHE_DIR,
        force=force, progress=lambda message: say("pyodide wheels", message),
    )
    for wheel in fetched:
        action = "extracted, " if wheel.extracted else ""
        say(f"{wheel.name} wheel", f"{rel(wheel.path)} {action}verified sha256 {wheel.sha256[:16]}... ok")

    sources = [paths.PYODIDE_DIR / name for name in PYODIDE_FILES] + [core.path] + [w.path for w in fetched]
    gz = precompress(sources, paths.GZ_DIR, force=force, progress=lambda message: say("gzip", message))
    kept = sum(1 for entry in gz.files.values() if entry["gz"])
    state = f"{len(gz.recompressed)} compressed now" if gz.recompressed else "up to date"
    say("gzip", f"{rel(paths.GZ_DIR)}: {kept} of {len(gz.files)} files worth a .gz, "
        f"{gz.size / 1e6:.1f} MB served as {gz.served_size / 1e6:.1f} MB ({state})")

    kernel = build_kernel(paths.KERNEL_SRC, paths.KERNEL_WASM, paths.KERNEL_STAMP, force=force)
    if kernel.path is None:
        say("wasm kernel", "clang or wasm-ld missing (make system installs them): skipped, the page trains with NumPy only")
    else:
        say("wasm kernel", f"{rel(kernel.path)} {'built' if kernel.written else 'up to date'}, "
            f"{kernel.path.stat().st_size / 1e3:.0f} KB, sha256 {kernel.sha256[:16]}... ok")

    mnist = build_mnist(paths.MNIST_DIGITS_DIR, paths.MNIST_NPZ, force=force)
    say("mnist", f"{rel(mnist.path)} {mnist.n_train} train + {mnist.n_test} test digits "
        f"{'built' if mnist.written else 'up to date'} ok")
    extracted = fetch_sklearn_files(
        paths.SKLEARN_DATA, paths.CACHE_DIR, force=force, progress=lambda message: say("sklearn data", message)
    )
    for name, now in extracted.items():
        say("sklearn data", f"{rel(paths.SKLEARN_DATA / name)} {'extracted, ' if now else ''}verified sha256 ok")
    written = build_converted(
        paths.SKLEARN_DATA / "breast_cancer.csv", paths.BREAST_CANCER_CSV,
        lambda raw: breast_cancer_csv(raw, BREAST_CANCER_FEATURES), force=force,
    )
    say("breast-cancer", f"{rel(paths.BREAST_CANCER_CSV)} {'built' if written else 'up to date'} ok")
    written = build_converted(
        paths.SKLEARN_DATA / "digits.csv.gz", paths.DIGITS_NPZ, lambda raw: npz_bytes(digits_arrays(raw)), force=force
    )
    say("digits", f"{rel(paths.DIGITS_NPZ)} {'built' if written else 'up to date'} ok")
    say("done", f"in {time.monotonic() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webfl.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    args = parser.parse_args(argv)
    try:
        build(args.force)
    except BuildError as e:
        print(f"[webfl build] FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
