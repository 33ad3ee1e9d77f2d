"""The admin page's way in: ``/admin`` (the page, or its sign-in form), the login and
logout forms. Sessions themselves (signing, revoking, the CSRF token) are ``auth.py``'s.

The login form is double-submit protected (a random field that must equal a cookie a
cross-site form cannot set); attempts are throttled per client address, which is the
real peer unless the connection comes from a configured proxy (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import logging
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..logsafe import untrusted
from .bodies import read_form
from .pages import page_headers, render, task_info
from .services import services

__all__ = ["routes"]

log = logging.getLogger("webfl.signin")

LOGIN_CSRF_COOKIE = "webfl_login_csrf"


def _login_form(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    csrf = secrets.token_urlsafe(16)
    response = render("admin_login.html", {"csrf": csrf, "error": error}, status_code=status_code, headers=page_headers())
    # Double-submit: the form field must equal this cookie, which a cross-site form can't set.
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/admin", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def admin_page(request: Request) -> Response:
    session = services(request).admin.read_session(request)
    if session is None:
        return _login_form(request)
    return render("admin.html", {"csrf": session.csrf, "task": task_info(request)}, headers=page_headers())


async def admin_login(request: Request) -> Response:
    svc = services(request)
    form = await read_form(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not cookie or not secrets.compare_digest(cookie.encode(), form.get("csrf", "").encode()):
        return _login_form(request, "The sign-in form expired. Please try again.", status_code=403)
    address = request.client.host if request.client else "?"
    if not svc.limits.login_allowed(address):
        log.warning("admin sign-in throttled for %s", untrusted(address))
        response = _login_form(request, "Too many sign-in attempts. Wait a minute and try again.", status_code=429)
        response.headers["Retry-After"] = "60"
        return response
    if not svc.admin.token_matches(form.get("token", "")):
        log.warning("admin sign-in with a wrong token from %s", untrusted(address))
        return _login_form(request, "That admin token is not right.", status_code=401)
    response = RedirectResponse("/admin", status_code=303)
    svc.admin.start_session(request, response)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    return response


async def admin_logout(request: Request) -> Response:
    auth = services(request).admin
    session = auth.read_session(request)
    form = await read_form(request)
    if session is not None and not auth.csrf_ok(session, form.get("csrf")):
        return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
    response = RedirectResponse("/admin", status_code=303)
    auth.end_session(session, response)
    return response


routes = [
    Route("/admin", admin_page),
    Route("/admin/login", admin_login, methods=["POST"]),
    Route("/admin/logout", admin_logout, methods=["POST"]),
]
