"""Pages: ``/`` the volunteer page, ``/embed`` its compact twin for other sites' iframes,
``/admin`` the operator's page (or its sign-in form, see ``signin``), and
``/api/embed/check``, which tells ``embed.js`` whether its host page may embed the widget.

Every page carries its own Content-Security-Policy: our own files only, and
``frame-ancestors 'none'`` except on ``/embed``, which the embed allowlist may frame.
No page carries a secret: the admin page gets its session's CSRF token, nothing else.
"""

from __future__ import annotations

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ... import __version__
from ...build import paths
from ..origins import origin_allowed
from .assets import PYODIDE_VERSION, UPLOT_VERSION
from .services import services

__all__ = ["page_headers", "render", "routes"]

templates = Environment(loader=FileSystemLoader(paths.WEB_DIR / "templates"), autoescape=select_autoescape(), auto_reload=True)

#: Names this deployment's runtime cache (see ``web/static/sw.js``): a change drops the old one.
RUNTIME_CACHE_VERSION = f"{__version__}-pyodide-{PYODIDE_VERSION}"


def render(name: str, context: dict, *, status_code: int = 200, headers: dict | None = None) -> HTMLResponse:
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


def page_headers(frame_ancestors: str = "'none'") -> dict:
    return {
        "Content-Security-Policy": _csp(frame_ancestors),
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


def task_info(request: Request) -> dict:
    return services(request).engine.task.to_dict()


async def volunteer_page(request: Request) -> Response:
    return render("volunteer.html", {"task": task_info(request), "mode": "page"}, headers=page_headers())


async def embed_page(request: Request) -> Response:
    task = task_info(request)
    headers = page_headers(" ".join(["'self'", *services(request).settings.embed_origins]))
    wanted = request.query_params.get("task", task["name"])
    if wanted != task["name"]:
        return render("embed_error.html", {"message": f"This server trains {task['title']!r}, not {wanted!r}."}, status_code=404, headers=headers)
    return render("volunteer.html", {"task": task, "mode": "embed"}, headers=headers)


async def embed_check(request: Request) -> Response:
    """May the page that ``embed.js`` runs on embed the widget? Answered to any origin.

    A ``frame-ancestors`` refusal is silent (the host page just shows an empty frame and
    cannot even detect it), so ``embed.js`` asks first and shows a refusal instead. It
    asks with a CORS fetch: the browser sets ``Origin`` to the host page's origin and
    the page's script cannot forge it. The CSP on ``/embed`` stays the real barrier.
    """
    origin = request.headers.get("origin")
    allowed = origin_allowed(origin, services(request).browser_origins)
    headers = {"Vary": "Origin", "Cache-Control": "no-store"}
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
    task = task_info(request)
    return JSONResponse({"allowed": allowed, "origin": origin, "task": task["name"], "title": task["title"]}, headers=headers)


routes = [
    Route("/", volunteer_page),
    Route("/embed", embed_page),
    Route("/api/embed/check", embed_check),
]
