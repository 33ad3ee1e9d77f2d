"""What a browser gets: pages, static files, the Pyodide runtime, wheels, the embed widget.

- ``/`` the volunteer page, ``/embed`` its compact twin for other sites' iframes,
  ``/embed.js`` the snippet those sites include, ``/admin`` the operator's page.
- ``/api/config`` tells the page's worker where Pyodide, NumPy and the core wheel are
  and which version the server speaks; ``/api/embed/check`` tells ``embed.js`` whether
  the page that includes it may embed the widget (see ``embed_check``).
- ``/sw.js`` the service worker that caches the runtime for returning volunteers.
- ``/pyodide/<version>/``, ``/wheels/``, ``/static/``, ``/vendor/uplot/``: files, with
  precompressed gzip where set-up made one and cache headers that fit how each is named.

No page carries a secret: the admin page gets its session's CSRF token, nothing else.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from .. import __version__
from ..build import paths
from .auth import clear_session, csrf_ok, read_session, start_session, token_matches
from .origins import origin_allowed

__all__ = ["routes"]

log = logging.getLogger("webfl.pages")

IMMUTABLE = "public, max-age=31536000, immutable"
# Revalidate every time (cheap: ETag -> 304) for files whose URL does not change with content.
REVALIDATE = "no-cache"
LOGIN_CSRF_COOKIE = "webfl_login_csrf"

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


# -- files ------------------------------------------------------------------------------


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


def _manifest() -> dict:
    try:
        return json.loads(paths.MANIFEST.read_text())
    except (OSError, ValueError):
        return {}


PYODIDE_VERSION: str = _manifest().get("pyodide", {}).get("version", "0.27.7")


def _npm_version(package_dir: Path) -> str:
    try:
        return json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


#: In the URL so the chart library can be cached for good and still change with package.json.
UPLOT_VERSION: str = _npm_version(paths.UPLOT_DIR.parent)


# -- pages -------------------------------------------------------------------------------

templates = Environment(loader=FileSystemLoader(paths.WEB_DIR / "templates"), autoescape=select_autoescape(), auto_reload=True)


#: Names this deployment's runtime cache (see ``web/static/sw.js``): a change drops the old one.
RUNTIME_CACHE_VERSION = f"{__version__}-pyodide-{PYODIDE_VERSION}"


def _render(name: str, context: dict, *, status_code: int = 200, headers: dict | None = None) -> HTMLResponse:
    html = templates.get_template(name).render(
        version=__version__, runtime=RUNTIME_CACHE_VERSION, uplot=f"/vendor/uplot/{UPLOT_VERSION}", **context
    )
    return HTMLResponse(html, status_code=status_code, headers=headers)


def _csp(frame_ancestors: str) -> str:
    """The pages' Content-Security-Policy: our own files only; ``frame-ancestors`` decides who may frame.

    Pyodide runs in the worker, whose policy comes from its own (static) response, so the
    pages themselves can forbid inline and foreign scripts altogether.
    """
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        f"frame-ancestors {frame_ancestors}",
    ])


def _page_headers(frame_ancestors: str = "'none'") -> dict:
    return {
        "Content-Security-Policy": _csp(frame_ancestors),
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


def _task(request: Request) -> dict:
    return request.app.state.engine.task.to_dict()


async def volunteer_page(request: Request) -> Response:
    return _render("volunteer.html", {"task": _task(request), "mode": "page"}, headers=_page_headers())


def _embed_ancestors(request: Request) -> str:
    return " ".join(["'self'", *request.app.state.settings.embed_origins])


async def embed_page(request: Request) -> Response:
    task = _task(request)
    headers = _page_headers(_embed_ancestors(request))
    wanted = request.query_params.get("task", task["name"])
    if wanted != task["name"]:
        return _render("embed_error.html", {"message": f"This server trains {task['title']!r}, not {wanted!r}."}, status_code=404, headers=headers)
    return _render("volunteer.html", {"task": task, "mode": "embed"}, headers=headers)


async def embed_script(request: Request) -> Response:
    # Short cache: host pages keep the URL, so updates must reach them in minutes.
    headers = {"Cache-Control": "public, max-age=300", "Cross-Origin-Resource-Policy": "cross-origin", "X-Content-Type-Options": "nosniff"}
    return FileResponse(paths.WEB_DIR / "static" / "embed.js", media_type="text/javascript", headers=headers)


async def embed_check(request: Request) -> Response:
    """May the page that ``embed.js`` runs on embed the widget? Answered to any origin.

    A ``frame-ancestors`` refusal is silent (the host page just shows an empty frame and
    cannot even detect it), so ``embed.js`` asks first and shows a refusal instead. It
    asks with a CORS fetch: the browser sets ``Origin`` to the host page's origin and
    the page's script cannot forge it. The CSP on ``/embed`` stays the real barrier.
    """
    origin = request.headers.get("origin")
    allowed = origin_allowed(request.headers, request.app.state.settings.embed_origins)
    headers = {"Vary": "Origin", "Cache-Control": "no-store"}
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
    task = _task(request)
    return JSONResponse({"allowed": allowed, "origin": origin, "task": task["name"], "title": task["title"]}, headers=headers)


async def service_worker(request: Request) -> Response:
    # From the root, so its default scope is the whole site; no-cache, so a new
    # deployment's worker is seen on the next visit.
    headers = {"Cache-Control": "no-cache", "Service-Worker-Allowed": "/", "X-Content-Type-Options": "nosniff"}
    return FileResponse(paths.WEB_DIR / "static" / "sw.js", media_type="text/javascript", headers=headers)


async def client_config(request: Request) -> Response:
    """Where the worker gets its runtime, and what version it must be (public)."""
    settings = request.app.state.settings
    try:
        core = json.loads(paths.CORE_WHEEL_INFO.read_text())
    except (OSError, ValueError):
        return JSONResponse({"error": "the learning core wheel is not built; run `make setup` on the server"}, status_code=503)
    numpy_lock = _manifest().get("lock_entries", {}).get("numpy", {})
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
        "task": _task(request),
        "pyodide": {"version": PYODIDE_VERSION, "index_url": index_url},
        "numpy": numpy,
        "core": {"url": f"/wheels/{core['file']}", "version": core["version"], "sha256": core["sha256"]},
        "ws_path": "/ws",
    }
    return JSONResponse(body, headers={"Cache-Control": "no-cache"})


# -- admin -----------------------------------------------------------------------------


def _login_form(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    csrf = secrets.token_urlsafe(16)
    response = _render(
        "admin_login.html",
        {"csrf": csrf, "error": error},
        status_code=status_code,
        headers=_page_headers(),
    )
    # Double-submit: the form field must equal this cookie, which a cross-site form can't set.
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/admin", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def admin_page(request: Request) -> Response:
    session = read_session(request)
    if session is None:
        return _login_form(request)
    return _render("admin.html", {"csrf": session.csrf, "task": _task(request)}, headers=_page_headers())


async def _form(request: Request) -> dict[str, str]:
    # Parsed by hand: urlencoded forms need no python-multipart dependency.
    body = (await request.body())[:64 * 1024].decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body).items()}


async def admin_login(request: Request) -> Response:
    form = await _form(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie or not secrets.compare_digest(cookie.encode(), form.get("csrf", "").encode()):
        return _login_form(request, "The sign-in form expired. Please try again.", status_code=403)
    address = request.client.host if request.client else "?"
    if not request.app.state.address_limits.login_allowed(address):
        log.warning("admin sign-in throttled for %s", address)
        response = _login_form(request, "Too many sign-in attempts. Wait a minute and try again.", status_code=429)
        response.headers["Retry-After"] = "60"
        return response
    if not token_matches(request, form.get("token", "")):
        log.warning("admin sign-in with a wrong token from %s", request.client.host if request.client else "?")
        return _login_form(request, "That admin token is not right.", status_code=401)
    response = RedirectResponse("/admin", status_code=303)
    start_session(request, response)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    return response


async def admin_logout(request: Request) -> Response:
    session = read_session(request)
    form = await _form(request)
    if session is not None and not csrf_ok(session, form.get("csrf")):
        return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
    response = RedirectResponse("/admin", status_code=303)
    clear_session(response)
    return response


def _immutable_wheel(name: str) -> bool:
    # Third-party wheels are pinned by version and sha256; ours keeps its name across
    # development rebuilds of one version, so it revalidates (cheap: an ETag, 30 KB).
    return not name.startswith("webfl-")


routes = [
    Route("/", volunteer_page),
    Route("/embed", embed_page),
    Route("/embed.js", embed_script),
    Route("/sw.js", service_worker),
    Route("/api/config", client_config),
    Route("/api/embed/check", embed_check),
    Route("/admin", admin_page),
    Route("/admin/login", admin_login, methods=["POST"]),
    Route("/admin/logout", admin_logout, methods=["POST"]),
    Mount(f"/pyodide/{PYODIDE_VERSION}", AssetFiles(paths.PYODIDE_DIR, immutable=lambda name: True, gz_dir=paths.GZ_DIR)),
    Mount("/wheels", AssetFiles(paths.WHEELS_DIR, immutable=_immutable_wheel, gz_dir=paths.GZ_DIR, suffixes=(".whl",))),
    Mount(f"/vendor/uplot/{UPLOT_VERSION}", AssetFiles(paths.UPLOT_DIR, immutable=lambda name: True)),
    Mount("/static", AssetFiles(paths.WEB_DIR / "static")),
]
