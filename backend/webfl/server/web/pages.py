"""Pages: ``/t/{name}`` a task's volunteer page, ``/`` the list of tasks (or the only
task's page), ``/embed?task=NAME`` the compact twin for other sites' iframes,
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
from ..datasets import DEMO_TASK
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


def task_info(request: Request, name: str | None = None) -> dict | None:
    """The named task (the default one without a name) as the page shows it; None if not served."""
    tasks = services(request).tasks
    if name is None:
        return tasks.default.task.to_dict()
    return tasks.get(name).task.to_dict() if name in tasks else None


async def home(request: Request) -> Response:
    """The only task's page, or the list of tasks to choose from."""
    tasks = services(request).tasks
    if len(tasks) == 1:
        return _volunteer(request, task_info(request))
    listed = [e.task.to_dict() for e in tasks]
    return render("tasks.html", {"tasks": listed}, headers=page_headers())


async def task_page(request: Request) -> Response:
    task = task_info(request, request.path_params["task"])
    if task is None:
        return render("embed_error.html", {"message": "This server has no task of that name."}, status_code=404, headers=page_headers())
    return _volunteer(request, task)


def _volunteer(request: Request, task: dict, mode: str = "page", headers: dict | None = None) -> Response:
    # Demo data exists for MNIST only; every other task trains on the volunteer's own file.
    demo = services(request).demo_shards is not None and task["name"] == DEMO_TASK
    return render("volunteer.html", {"task": task, "mode": mode, "demo": demo}, headers=headers or page_headers())


async def embed_page(request: Request) -> Response:
    headers = page_headers(" ".join(["'self'", *services(request).settings.embed_origins]))
    wanted = request.query_params.get("task")
    task = task_info(request, wanted)
    if task is None:
        # The name is escaped by the template.
        return render("embed_error.html", {"message": f"This server trains no task named {wanted[:40]!r}."}, status_code=404, headers=headers)
    return _volunteer(request, task, "embed", headers)


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
    task = task_info(request, request.query_params.get("task")) or task_info(request)
    return JSONResponse({"allowed": allowed, "origin": origin, "task": task["name"], "title": task["title"]}, headers=headers)


routes = [
    Route("/", home),
    Route("/t/{task}", task_page),
    Route("/embed", embed_page),
    Route("/api/embed/check", embed_check),
]
