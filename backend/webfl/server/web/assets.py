"""Files a browser loads: the Pyodide runtime, wheels, the chart library, ``/static``,
the embed snippet and the service worker.

Files whose URL carries a version are cached for a year (``immutable``), the rest
revalidate with an ETag; big files go out pre-gzipped (``NAME.gz`` that set-up made from
this very file) to browsers that accept gzip.
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from ...build import paths

__all__ = ["PYODIDE_VERSION", "UPLOT_VERSION", "AssetFiles", "download_size", "manifest", "routes"]

IMMUTABLE = "public, max-age=31536000, immutable"
# Revalidate every time (cheap: ETag -> 304) for files whose URL does not change with content.
REVALIDATE = "no-cache"


# Set explicitly: Pyodide refuses .wasm that is not application/wasm, and platform
# mime tables differ (some lack .mjs or .wasm).
MEDIA_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}



class AssetFiles(StaticFiles):
    """``StaticFiles`` plus cache policy and precompressed ``NAME.gz`` from ``gz_dir``.

    ``immutable(name)`` says whether a file's URL changes whenever its content does (a
    version in the path or name); those are cached for a year, the rest revalidate.
    """

    def __init__(self, directory: Path, *, immutable=lambda name: False, gz_dir: Path | None = None, suffixes=None) -> None:
        super().__init__(directory=directory, check_dir=False)
        # A directory that set-up has not made yet gives 404s, not a 500 on first request.
        self.config_checked = True
        self.immutable = immutable
        self.gz_dir = gz_dir
        self.suffixes = suffixes

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if self.suffixes and not path.endswith(self.suffixes):
            return "", None
        return super().lookup_path(path)

    def _gzip_copy(self, full_path: Path, stat_result: os.stat_result) -> Path | None:
        if self.gz_dir is None:
            return None
        gz = self.gz_dir / f"{full_path.name}.gz"
        sizes = _gz_sizes(self.gz_dir)
        entry = sizes.get(full_path.name)
        # Only a copy made from this very file: a stale .gz would serve old bytes.
        if entry and entry.get("gz") and entry.get("size") == stat_result.st_size and gz.is_file():
            return gz
        return None

    def file_response(self, full_path, stat_result: os.stat_result, scope: Scope, status_code: int = 200) -> Response:
        full_path = Path(full_path)
        request_headers = Headers(scope=scope)
        media_type = MEDIA_TYPES.get(full_path.suffix) or mimetypes.guess_type(full_path.name)[0] or "application/octet-stream"
        headers = {"Cache-Control": IMMUTABLE if self.immutable(full_path.name) else REVALIDATE}
        gz = self._gzip_copy(full_path, stat_result)
        if gz is not None:
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(request_headers.get("accept-encoding", "")):
                headers["Content-Encoding"] = "gzip"
                full_path, stat_result = gz, gz.stat()
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result, media_type=media_type, headers=headers)
        if self.is_not_modified(response.headers, request_headers):
            return NotModifiedResponse(response.headers)
        return response


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return True
    return False


_gz_cache: dict[Path, tuple[float, dict]] = {}


def _gz_sizes(gz_dir: Path) -> dict:
    """``sizes.json`` of the gzip copies, reread only when set-up rewrites it."""
    path = gz_dir / "sizes.json"
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return {}
    cached = _gz_cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = _gz_cache[path] = (mtime, json.loads(path.read_text()).get("files", {}))
    return cached[1]


def download_size(path: Path, gz_dir: Path | None = paths.GZ_DIR) -> int | None:
    """Bytes a browser that accepts gzip downloads for ``path`` (its gzip copy when one is
    served, see ``AssetFiles._gzip_copy``); None if the file is missing. For the page's
    progress bar, announced by ``/api/config``."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    entry = _gz_sizes(gz_dir).get(path.name) if gz_dir is not None else None
    if entry and entry.get("gz") and entry.get("size") == size and (gz_dir / entry["gz"]).is_file():
        return int(entry["gzip_size"])
    return size


def manifest() -> dict:
    try:
        return json.loads(paths.MANIFEST.read_text())
    except (OSError, ValueError):
        return {}


PYODIDE_VERSION: str = manifest().get("pyodide", {}).get("version", "0.27.7")


def _npm_version(package_dir: Path) -> str:
    try:
        return json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


#: In the URL so the chart library can be cached for good and still change with package.json.
UPLOT_VERSION: str = _npm_version(paths.UPLOT_DIR.parent)


async def service_worker(request: Request) -> Response:
    # From the root, so its default scope is the whole site; no-cache, so a new
    # deployment's worker is seen on the next visit.
    headers = {"Cache-Control": "no-cache", "Service-Worker-Allowed": "/", "X-Content-Type-Options": "nosniff"}
    return FileResponse(paths.WEB_DIR / "static" / "sw.js", media_type="text/javascript", headers=headers)



async def embed_script(request: Request) -> Response:
    # Short cache: host pages keep the URL, so updates must reach them in minutes.
    headers = {"Cache-Control": "public, max-age=300", "Cross-Origin-Resource-Policy": "cross-origin", "X-Content-Type-Options": "nosniff"}
    return FileResponse(paths.WEB_DIR / "static" / "embed.js", media_type="text/javascript", headers=headers)



def _immutable_wheel(name: str) -> bool:
    # Third-party wheels are pinned by version and sha256; ours keeps its name across
    # development rebuilds of one version, so it revalidates (cheap: an ETag, 30 KB).
    return not name.startswith("webfl-")



routes = [
    Route("/embed.js", embed_script),
    Route("/sw.js", service_worker),
    Mount(f"/pyodide/{PYODIDE_VERSION}", AssetFiles(paths.PYODIDE_DIR, immutable=lambda name: True, gz_dir=paths.GZ_DIR)),
    Mount("/wheels", AssetFiles(paths.WHEELS_DIR, immutable=_immutable_wheel, gz_dir=paths.GZ_DIR, suffixes=(".whl",))),
    Mount(f"/vendor/uplot/{UPLOT_VERSION}", AssetFiles(paths.UPLOT_DIR, immutable=lambda name: True)),
    Mount("/static", AssetFiles(paths.WEB_DIR / "static")),
]
