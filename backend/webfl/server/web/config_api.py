"""``/api/config`` (public): where the page's worker gets Pyodide, NumPy and the core
wheel, with their hashes, and which version this server speaks."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import __version__
from ...build import paths
from .assets import PYODIDE_VERSION, download_size, manifest
from .services import services

__all__ = ["routes"]

#: What the worker fetches of Pyodide itself (``web/static/worker/runtime.js``).
RUNTIME_FILES = ("pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")


def downloads(numpy_file: str | None, core_file: str, served_runtime: bool) -> dict[str, dict[str, int] | None]:
    """Per loading stage, the bytes of each file the worker downloads (gzip where served),
    by URL path: the page's progress bar in bytes. None for a stage served elsewhere
    (``--pyodide-url``: its sizes are not ours to know)."""

    def sizes(files: dict[str, Path]) -> dict[str, int] | None:
        known = {url: download_size(path) for url, path in files.items()}
        return None if None in known.values() else known

    runtime = {f"/pyodide/{PYODIDE_VERSION}/{name}": paths.PYODIDE_DIR / name for name in RUNTIME_FILES}
    return {
        "runtime": sizes(runtime) if served_runtime else None,
        "numpy": sizes({f"/wheels/{numpy_file}": paths.WHEELS_DIR / numpy_file}) if served_runtime and numpy_file else None,
        "core": sizes({f"/wheels/{core_file}": paths.WHEELS_DIR / core_file}),
        "kernel": sizes({"/static/kernels/gemm.wasm": paths.KERNEL_WASM}),
    }


async def client_config(request: Request) -> Response:
    """Where the worker gets its runtime, what version it must be, and its task
    (``?task=NAME``; the default task without one). Public."""
    svc = services(request)
    settings, wanted = svc.settings, request.query_params.get("task")
    if wanted is not None and wanted not in svc.tasks:
        return JSONResponse({"error": f"no task named {wanted[:40]!r}"}, status_code=404)
    engine = svc.engine if wanted is None else svc.tasks.get(wanted)
    try:
        core = json.loads(paths.CORE_WHEEL_INFO.read_text())
    except (OSError, ValueError):
        return JSONResponse({"error": "the learning core wheel is not built; run `make setup` on the server"}, status_code=503)
    numpy_lock = manifest().get("lock_entries", {}).get("numpy", {})
    if settings.pyodide_url:
        # Another index (a full Pyodide distribution or a CDN): NumPy by name, which
        # Pyodide checks against that index's lock file (Subresource Integrity).
        index_url, numpy = settings.pyodide_url.rstrip("/") + "/", {"name": "numpy", "url": None, "sha256": None}
    else:
        # By URL from us; the worker checks the sha256 (Pyodide checks only by-name loads).
        url = f"/wheels/{numpy_lock.get('file_name')}"
        index_url, numpy = f"/pyodide/{PYODIDE_VERSION}/", {"name": "numpy", "url": url, "sha256": numpy_lock.get("sha256")}
    body = {
        "version": __version__,
        "task": engine.task.to_dict(),
        "pyodide": {"version": PYODIDE_VERSION, "index_url": index_url},
        "numpy": numpy,
        "core": {"url": f"/wheels/{core['file']}", "version": core["version"], "sha256": core["sha256"]},
        "ws_path": "/ws",
        "downloads": downloads(numpy_lock.get("file_name"), core["file"], not settings.pyodide_url),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-cache"})


routes = [Route("/api/config", client_config)]
